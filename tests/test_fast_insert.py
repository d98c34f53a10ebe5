"""store.FastInsert: the comment insert on the DB-API cursor must store exactly what
SQLAlchemy's own insert stores, fail the way SQLAlchemy does, and write staged rows in the
same transaction as the rest of its work."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from listbridge.db import Database, FastInsert
from listbridge.models import Comment, Subscriber

COLUMNS = (
    "list_address",
    "sender",
    "display_name",
    "subject",
    "message_id",
    "in_reply_to",
    "auto_submitted",
    "received_at",
    "status",
    "reason",
    "post_slug",
    "post_title",
    "post_path",
    "text",
    "attachments",
    "published",
    "raw",
    "decided_by",
    "notice_due",
)


def values(**changes: object) -> dict[str, object]:
    row: dict[str, object] = dict(
        list_address="bla@example.org",
        sender="renée@example.net",
        display_name="Renée «Ré» O'Brien",
        subject="Re: l'été; DROP TABLE comments; --",
        message_id="<a.b@example.net>",
        in_reply_to="",
        auto_submitted=True,
        received_at=dt.datetime(2026, 11, 26, 15, 4, 5, 123456),
        status="held",
        reason="first post",
        post_slug=None,
        post_title="",
        post_path="",
        text="Merci\n\n> cité\n\t«?»",
        attachments=2,
        published=False,
        raw=b"From: x\r\n\r\n\x00\xff\xfe body",
        decided_by="",
        notice_due=True,
    )
    row.update(changes)
    return row


def as_stored(db: Database, comment_id: int) -> dict[str, object]:
    with db.transaction() as session:
        comment = session.get(Comment, comment_id)
        assert comment is not None
        return {name: getattr(comment, name) for name in COLUMNS}


def as_written(db: Database, comment_id: int) -> tuple[object, ...]:
    """The row as the database holds it, without SQLAlchemy's type processing on the way back
    (SQLite's datetime text, booleans as integers)."""
    with db.engine.connect() as connection:
        cast = "typeof" if connection.dialect.name == "sqlite" else "pg_typeof"
        columns = ", ".join(f"{c}, {cast}({c})" for c in COLUMNS)
        return tuple(connection.exec_driver_sql(f"SELECT {columns} FROM comments WHERE id = {int(comment_id)}").one())


def test_a_row_stored_on_the_cursor_is_sqlalchemys_own(db: Database) -> None:
    fast = FastInsert(Comment.__table__, COLUMNS)
    for changes in (
        {},
        {
            "post_slug": "un-billet",
            "auto_submitted": False,
            "published": True,
            "text": "",
            "received_at": dt.datetime(2026, 1, 1),
        },
    ):  # a whole second: .000000 on SQLite
        row = values(**changes)
        with db.transaction() as session:
            ours = fast.insert(session, row)
            theirs = session.execute(insert(Comment).returning(Comment.id), row).scalar_one()
        assert as_stored(db, ours) == row
        assert as_written(db, ours) == as_written(db, theirs)


def test_one_insert_serves_every_database_it_meets(db: Database, tmp_path) -> None:
    """Compiled per dialect: one FastInsert used on SQLite and on the test database."""
    fast = FastInsert(Comment.__table__, COLUMNS)
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other.upgrade()
    try:
        for database in (db, other):
            with database.transaction() as session:
                comment_id = fast.insert(session, values())
            assert as_stored(database, comment_id) == values()
    finally:
        other.dispose()


def test_a_refused_row_raises_sqlalchemys_error_and_leaves_nothing(db: Database) -> None:
    fast = FastInsert(Comment.__table__, COLUMNS)
    with pytest.raises(IntegrityError) as caught, db.transaction() as session:
        fast.insert(session, values(message_id="<kept@example.net>"))
        fast.insert(session, values(sender=None))  # NOT NULL
    assert isinstance(caught.value, DBAPIError) and not caught.value.connection_invalidated
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == 0
        assert fast.insert(session, values()) > 0  # the connection is still good


def test_a_connection_known_closed_is_flagged_lost_as_sqlalchemy_would(db: Database) -> None:
    fast = FastInsert(Comment.__table__, COLUMNS)
    db.pin_connection()
    assert db._pinned is not None
    session = db.sessions()
    session.begin()
    dbapi_connection = session.connection().connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.close()  # as a dropped connection ends up
    with pytest.raises(DBAPIError) as caught:  # not the driver's own error
        fast.insert(session, values())
    assert caught.value.connection_invalidated
    session.close()
    with db.transaction() as session:  # and the next transaction runs on a new connection
        assert fast.insert(session, values()) > 0


def stored(db: Database) -> list[dict[str, object]]:
    with db.transaction() as session:
        ids = session.scalars(select(Comment.id).order_by(Comment.id)).all()
    return [as_stored(db, i) for i in ids]


def test_staged_rows_are_written_as_the_transaction_commits(db: Database) -> None:
    fast = FastInsert(Comment.__table__, COLUMNS)
    rows = [values(message_id=f"<{n}@example.net>", published=n % 2 == 0) for n in range(FastInsert.MAX_ROWS + 6)]
    with db.transaction() as session:
        for row in rows:
            fast.stage(session, row)
        assert session.scalar(select(func.count()).select_from(Comment)) == 0  # not yet
    assert stored(db) == rows  # in order, over two statements


def test_staged_rows_and_the_orm_commit_together_or_not_at_all(db: Database) -> None:
    fast = FastInsert(Comment.__table__, COLUMNS)
    with pytest.raises(IntegrityError), db.transaction() as session:
        fast.stage(session, values())
        session.add(Subscriber(list_address="bla@example.org", address=None))  # NOT NULL, at the flush
    with pytest.raises(IntegrityError), db.transaction() as session:
        fast.stage(session, values())
        fast.stage(session, values(sender=None))
    with pytest.raises(RuntimeError), db.transaction() as session:
        fast.stage(session, values())
        raise RuntimeError("rolled back")
    assert stored(db) == []


def test_staged_rows_go_with_the_transaction_that_staged_them(db: Database) -> None:
    fast = FastInsert(Comment.__table__, COLUMNS)
    session = db.sessions()
    fast.stage(session, values(message_id="<rolled-back@example.net>"))
    session.rollback()
    fast.stage(session, values(message_id="<closed@example.net>"))
    session.close()
    with session.begin():  # the same session, used again
        fast.stage(session, values(message_id="<outer@example.net>"))
        savepoint = session.begin_nested()
        savepoint.rollback()  # leaves the outer transaction's rows alone
    session.close()
    assert [row["message_id"] for row in stored(db)] == ["<outer@example.net>"]
