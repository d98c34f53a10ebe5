"""Database.begin_early: on PostgreSQL the store process sends the next transaction's BEGIN while
it waits for the batch, and rolls it back when no batch comes."""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import time

import pytest
from sqlalchemy import create_engine, func, select, text

from listbridge import dispatch
from listbridge.models import Comment
from listbridge.store import Database

from conftest import send

LIST = "bla@bla.example.org"


@pytest.fixture
def pinned(db: Database) -> Database:
    if not db.url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite has no round trip to save")
    db.pin_connection()
    return db


def backend_state(db: Database, pid: int) -> str | None:
    """pg_stat_activity's state of backend `pid`, seen from another connection."""
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as other:
            return other.scalar(text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
    finally:
        engine.dispose()


def backend_pid(db: Database) -> int:
    assert db._pinned is not None
    return int(db._pinned.connection.dbapi_connection.info.backend_pid)


def test_the_next_transaction_runs_in_the_one_begun_early(pinned: Database) -> None:
    assert pinned.begin_early()
    time.sleep(0.2)
    with pinned.transaction() as session:
        began, now = session.execute(text("SELECT now(), statement_timestamp()")).one()
        session.add(Comment(list_address=LIST, sender="a@example.net", raw=b"x"))
    # now() is the transaction's start: the early BEGIN, not a BEGIN sent with this statement
    assert now - began >= dt.timedelta(seconds=0.15)
    assert backend_state(pinned, backend_pid(pinned)) == "idle"  # committed, not left open
    with pinned.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == 1


def test_an_unused_early_transaction_is_rolled_back(pinned: Database) -> None:
    pid = backend_pid(pinned)
    assert pinned.begin_early()
    assert backend_state(pinned, pid) == "idle in transaction"
    assert pinned.begin_early()  # still open and unused: the same one, no second BEGIN
    pinned.end_early()
    assert backend_state(pinned, pid) == "idle"
    with pinned.transaction() as session:  # and the next transaction begins as usual
        began, now = session.execute(text("SELECT now(), statement_timestamp()")).one()
    assert now - began < dt.timedelta(seconds=0.1)


def test_a_transaction_in_use_is_left_alone(pinned: Database) -> None:
    with pinned.transaction() as session:
        session.add(Comment(list_address=LIST, sender="a@example.net", raw=b"x"))
        session.flush()
        assert not pinned.begin_early()
        pinned.end_early()  # must not roll back the work under way
    with pinned.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == 1


def test_an_isolation_level_is_honoured_not_replaced_by_a_plain_begin(pinned: Database) -> None:
    assert pinned._pinned is not None
    pinned._pinned.execution_options(isolation_level="SERIALIZABLE")
    assert not pinned.begin_early()
    with pinned.transaction() as session:
        assert session.scalar(text("SHOW transaction_isolation")) == "serializable"


def test_elsewhere_nothing_is_begun_early(db: Database) -> None:
    assert not db.begin_early()  # not pinned (and on SQLite, never)
    db.end_early()
    if db.url.startswith("sqlite"):
        db.pin_connection()
        assert not db.begin_early()


def terminate(db: Database) -> int:
    """End the pinned connection's backend from another connection, as a server restart would."""
    victim = backend_pid(db)
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as other:
        assert other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
    engine.dispose()
    time.sleep(0.2)
    return victim


def test_a_dropped_connection_is_replaced_and_the_batch_stored(pinned: Database, settings, caplog) -> None:
    def store(n: int) -> list[int]:
        raw = f"From: A <a@example.net>\r\nTo: {LIST}\r\nSubject: {n}\r\nMessage-ID: <{n}@example.net>\r\n\r\nHi.\r\n"
        accepted = dispatch.accept_many(pinned, settings, [dispatch.Received(raw.encode(), "a@example.net", (LIST,))])
        return [reply.code for reply in accepted.replies[0]]

    # dropped while a transaction begun early waits: its ROLLBACK fails quietly
    assert pinned.begin_early()
    victim = terminate(pinned)
    pinned.end_early()
    assert store(1) == [250]
    assert backend_pid(pinned) != victim
    # dropped while idle: the early BEGIN fails quietly and flags the connection, so that the
    # batch starts on a new one without spending its one retry
    victim = terminate(pinned)
    assert not pinned.begin_early()
    assert pinned._pinned is not None and pinned._pinned.invalidated
    with caplog.at_level(logging.WARNING, logger="listbridge.dispatch"):
        assert store(2) == [250]
    assert "connection lost" not in caplog.text
    assert backend_pid(pinned) != victim
    with pinned.transaction() as session:
        assert sorted(session.scalars(select(Comment.subject))) == ["1", "2"]


@pytest.mark.parametrize("batch", ["stored", "refused unparsed"])
def test_the_store_process_holds_no_transaction_open_once_idle(settings, service, batch) -> None:
    if not settings.database.url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    if batch == "refused unparsed":  # no transaction of its own: the early one stays unused
        with smtplib.SMTP("127.0.0.1", settings.smtp.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.net", [LIST], b"no header at all\r\n")
        assert refused.value.smtp_code == 554
    else:
        assert send(settings.smtp.port, LIST, subject="one") == {}
    engine = create_engine(settings.database.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as other:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND state = 'idle in transaction'")
            deadline = time.monotonic() + 5
            while other.scalar(query) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert other.scalar(query) == 0
    finally:
        engine.dispose()
    with service.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == (batch == "stored")
