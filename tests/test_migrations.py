"""The alembic migrations: every step goes down and up again, and head matches the models."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select

from listbridge.db import Database, alembic_config
from listbridge.models import Base, Subscriber


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(None))
    assert len(script.get_heads()) == 1, "the migrations have several heads: merge them"
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", "heads")))]


def current(db: Database) -> set[str]:
    with db.engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def tables(db: Database) -> set[str]:
    inspector = inspect(db.engine)
    return set(inspector.get_table_names()) - {"alembic_version"}


def drift(db: Database) -> list:
    """What `alembic revision --autogenerate` would write: the models against the database."""
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": _different_default}
        )
        return compare_metadata(context, Base.metadata)


def _different_default(
    context, inspected_column, metadata_column, inspected, metadata_default, rendered
) -> bool | None:
    """SQLite reflects DEFAULT '' as "''" where the model renders "''" wrapped differently:
    compare the bare values, and let alembic decide everything else."""
    if inspected is None or rendered is None:
        return None

    def bare(value: object) -> str:
        text = re.sub(r"::[a-z ]+(\(\d+\))?$", "", str(value).strip("()"))  # PostgreSQL's ''::text
        return text.strip("'\"")

    return bare(inspected) != bare(rendered)


@pytest.fixture
def empty(db_url: str):
    database = Database(db_url)
    yield database
    database.dispose()


def test_there_are_migrations():
    assert revisions_oldest_first(), "no migration found"


def test_walk_every_migration_up_and_down(empty: Database):
    revisions = revisions_oldest_first()
    # Up one step at a time, down one step at a time, then up again in one go.
    for revision in revisions:
        empty.upgrade(revision)
        assert current(empty) == {revision}
    assert empty.is_current()
    assert tables(empty) == set(Base.metadata.tables)
    for revision, below in zip(reversed(revisions), list(reversed(revisions))[1:] + [None], strict=True):
        assert current(empty) == {revision}
        empty.downgrade(below or "base")
        assert current(empty) == ({below} if below else set())
    assert tables(empty) == set()
    assert not empty.is_current()
    empty.upgrade()
    assert empty.is_current()
    assert tables(empty) == set(Base.metadata.tables)


def test_down_and_up_again_from_head_keeps_working(empty: Database):
    empty.upgrade()
    empty.downgrade("base")
    empty.upgrade()
    now = dt.datetime(2026, 1, 1)
    with empty.transaction() as session:
        session.add(
            Subscriber(list_address="bla@x.org", address="a@b.org", domain="b.org", token="t", subscribed_at=now)
        )
    with empty.transaction() as session:
        assert session.scalars(select(Subscriber.address)).all() == ["a@b.org"]


def test_models_match_the_migrations(db: Database):
    """Like a `db check`: after upgrade head, autogenerate finds nothing to add."""
    assert drift(db) == []


def test_drift_would_be_noticed(db: Database):
    """The comparison above can fail: a column the migrations lack is reported."""
    from sqlalchemy import Column, MetaData, String, Table

    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    Table("subscribers", metadata, Column("nickname", String(40)), extend_existing=True)
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert [(d[0], d[3].name) for d in diff if d[0] == "add_column"] == [("add_column", "nickname")]


def test_the_moderation_tokens_migration_goes_down_and_up(empty: Database):
    """0005 adds the tables a restart keeps the notices' tokens in; down drops them, up again
    makes them usable."""
    from listbridge.models import Comment, ModerationToken

    empty.upgrade("0005")
    empty.downgrade("0004")
    assert {"moderation_tokens", "moderation_mails"}.isdisjoint(tables(empty))
    assert "comments" in tables(empty)
    empty.upgrade("0005")
    with empty.transaction() as session:
        comment = Comment(list_address="bla@x.org", sender="c@x.org", raw=b"")
        session.add(comment)
        session.flush()
        session.add(ModerationToken(comment_id=comment.id, list_address="bla@x.org", token="abc"))
    with empty.transaction() as session:
        assert session.scalars(select(ModerationToken.token)).all() == ["abc"]
