"""What dispatch logs is what it committed: a transaction that fails at COMMIT logs no "sent"."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select, text

from listbridge.inbound import dispatch
from listbridge.models import Comment, Confirmation

from helpers import PG_URL

LIST = "bla@bla.example.org"


def _raw(to: str, extra: str = "") -> bytes:
    return (
        f"From: Carole <carole@example.net>\r\nTo: {to}\r\nSubject: hi\r\nMessage-ID: <1@example.net>\r\n"
        f"{extra}\r\nHello.\r\n"
    ).encode()


def _fail_commits_after_a_confirmation(db) -> None:
    """Make every COMMIT of a transaction that stored a confirmation fail, as a full disk would:
    a deferred constraint, checked only at COMMIT."""
    with db.engine.begin() as conn:
        if PG_URL:
            conn.execute(
                text(
                    "CREATE FUNCTION doom() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'could not extend file: No space left on device'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER doomed AFTER INSERT ON confirmations "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION doom()"
                )
            )
        else:
            conn.execute(text("CREATE TABLE anchor (id INTEGER PRIMARY KEY)"))
            conn.execute(text("CREATE TABLE doomed (ref INTEGER REFERENCES anchor(id) DEFERRABLE INITIALLY DEFERRED)"))
            conn.execute(
                text("CREATE TRIGGER doom AFTER INSERT ON confirmations BEGIN INSERT INTO doomed VALUES (-1); END")
            )


def test_a_failed_commit_logs_nothing_as_done(db, settings, caplog):
    _fail_commits_after_a_confirmation(db)
    caplog.set_level(logging.INFO, logger="listbridge")
    replies = dispatch.accept(
        db,
        settings,
        _raw("bla+subscribe@bla.example.org"),
        "carole@example.net",
        ["bla+subscribe@bla.example.org"],
        posts=dict,
    )
    assert replies[0].code == 451
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Confirmation)) == 0
    logged = [r.getMessage() for r in caplog.records]
    assert any("deferred" in line for line in logged), logged
    assert not any("sent to" in line for line in logged), logged


def test_the_lists_own_mail_coming_back_is_dropped_not_held(db, settings, caplog):
    caplog.set_level(logging.INFO, logger="listbridge")
    replies = dispatch.accept(db, settings, _raw(LIST, f"X-Loop: {LIST}\r\n"), "carole@example.net", [LIST], posts=dict)
    assert replies == [dispatch.OK]  # accepted, so that no bounce goes round again
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == 0
    assert any("own X-Loop" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("loop", ["other@bla.example.org", ""])
def test_a_comment_without_our_loop_marker_is_stored(db, settings, loop):
    extra = f"X-Loop: {loop}\r\n" if loop else ""
    assert dispatch.accept(db, settings, _raw(LIST, extra), "carole@example.net", [LIST], posts=dict) == [dispatch.OK]
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == 1
