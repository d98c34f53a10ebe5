"""The SMTP/LMTP edge, against a real in-process `serve` and real smtplib: what is refused, what
is accepted, and that a 250 (and only a 250) means the work was committed."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
from contextlib import suppress

import pytest
from sqlalchemy import select, text

from listbridge.models import AutoReply, Comment, Confirmation, OutboxMessage, OutboxRecipient

from helpers import (
    data_transaction,
    database_write_lock,
    db_count,
    ensure_live,
    raw_message,
    running,
    send,
    transaction,
    wait_for,
)

LIST = "bla@bla.example.org"
SUBSCRIBE = "bla+subscribe@bla.example.org"
HELP = "bla+help@bla.example.org"
OWNER = "bla+owner@bla.example.org"


# --- RCPT: never an open relay -------------------------------------------------------------


@pytest.mark.parametrize(
    "rcpt",
    [
        "someone@elsewhere.example.com",
        "bla@example.org",
        "nolist@bla.example.org",
        "bla+nope@bla.example.org",
        "bla+confirm-NOT_A_TOKEN!@bla.example.org",
        "bla+confirm-@bla.example.org",
        "<>",
    ],
)
def test_rcpt_not_ours_is_refused(service, rcpt):
    replies, data = transaction(service.settings.smtp.port, [rcpt], raw_message())
    assert replies[0][0] == 550, replies
    assert data is None
    assert db_count(service.db, Comment) == 0


def test_several_recipients_in_one_smtp_transaction(service, sink):
    port = service.settings.smtp.port
    replies, data = transaction(port, [LIST, "nolist@bla.example.org", SUBSCRIBE, HELP], raw_message(subject="many"))
    assert [c for c, _ in replies] == [250, 550, 250, 250]
    assert data is not None and data[0] == 250
    assert db_count(service.db, Comment, Comment.subject == "many") == 1
    assert db_count(service.db, Confirmation, Confirmation.address == "carole@example.net") == 1
    got = wait_for(lambda: len(sink.handler.to("carole@example.net")) >= 2 and sink.handler.to("carole@example.net"))
    assert sorted("Help" in r.message["Subject"] for r in got) == [False, True]


# --- size, lines, headers, garbage -----------------------------------------------------------


def test_message_over_size_limit_gets_552(make_settings):
    with running(make_settings(smtp={"max_message_size": 20_000})) as svc:
        port = svc.settings.smtp.port
        big = raw_message(body="x" * 70 + "\r\n") + b"y" * 70 * 400 + b"\r\n"
        # smtplib announces SIZE=, refused at MAIL FROM …
        with pytest.raises(smtplib.SMTPSenderRefused) as info, smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("carole@example.net", [LIST], big)
        assert info.value.smtp_code == 552
        # … and a client that does not announce it is refused after DATA.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            client.mail("carole@example.net")
            client.rcpt(LIST)
            code, _ = client.data(big)
        assert code == 552
        assert db_count(svc.db, Comment) == 0
        ensure_live(port)


@pytest.mark.parametrize(
    "garbage", [b"just a line of text without any header\r\n", b"\r\n\r\n", b"\x00\xff\xfe\x80 \x01\r\n"]
)
def test_unparseable_message_is_refused_with_a_reason(service, garbage):
    port = service.settings.smtp.port
    _, (code, msg) = data_transaction(port, [LIST], garbage)
    assert 550 <= code < 600, (code, msg)
    assert not msg.startswith("Error: ("), msg  # not aiosmtpd's generic text
    assert len(msg) > 10
    assert db_count(service.db, Comment) == 0
    ensure_live(port)
    send(port, LIST, subject="after garbage")
    assert db_count(service.db, Comment, Comment.subject == "after garbage") == 1


def test_long_line_is_accepted(service):
    body = "word " * 2000 + "\r\n"  # a 10 KB line, well past RFC 5321's 1000 octets
    _, (code, msg) = data_transaction(service.settings.smtp.port, [LIST], raw_message(subject="long", body=body))
    assert code == 250, msg
    with service.db.transaction() as session:
        held = session.scalars(select(Comment).where(Comment.subject == "long")).one()
        assert body.encode() in held.raw


def test_huge_headers_are_accepted(service):
    refs = "\r\n".join(f" <{n}.{'r' * 40}@example.net>" for n in range(3000))  # ~150 KB folded header
    many = "".join(f"X-Trace-{n}: {'t' * 60}\r\n" for n in range(2000))
    one_line = "X-Long: " + "z" * 20_000 + "\r\n"
    extra = f"References:{refs}\r\n{many}{one_line}"
    _, (code, msg) = data_transaction(
        service.settings.smtp.port, [LIST], raw_message(subject="big headers", extra=extra)
    )
    assert code == 250, msg
    assert db_count(service.db, Comment, Comment.subject == "big headers") == 1


# --- 451 on a database failure, nothing half-written -------------------------------------------


def test_database_error_gives_451_and_writes_nothing(service):
    port = service.settings.smtp.port
    with service.db.engine.begin() as conn:
        # CASCADE on PostgreSQL: moderation_tokens refers to it.
        conn.execute(text("DROP TABLE comments" + (" CASCADE" if conn.dialect.name == "postgresql" else "")))
    # +subscribe is acted on first (confirmation, reply, outbox), then the post fails.
    replies, (code, msg) = data_transaction(port, [SUBSCRIBE, LIST], raw_message(subject="db down"))
    assert [c for c, _ in replies] == [250, 250]
    assert code == 451, msg
    for model in (Confirmation, AutoReply, OutboxMessage, OutboxRecipient):
        assert db_count(service.db, model) == 0, model
    ensure_live(port)


# --- the store process: parsing and SQL in a child that may die without taking the server --------


def test_a_store_process_killed_between_batches_is_replaced(service):
    port = service.settings.smtp.port
    first = service.store.pid
    assert first is not None and first != os.getpid()
    assert data_transaction(port, [LIST], raw_message(subject="before"))[1][0] == 250
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: service.store.pid is None, timeout=10)
    assert data_transaction(port, [LIST], raw_message(subject="after"))[1][0] == 250
    assert service.store.pid not in (None, first)
    assert db_count(service.db, Comment) == 2


def test_a_store_process_stopped_after_batches_exits_at_once(service):
    """The event loop's transport holds the socket: stop() must still end the child's wait."""
    assert data_transaction(service.settings.smtp.port, [LIST], raw_message(subject="one"))[1][0] == 250
    child = service.store.pid
    assert child is not None
    started = time.monotonic()
    assert service.store.stop() == 0  # it left on EOF, not killed after the 30 s grace
    assert time.monotonic() - started < 10
    assert service.store.pid is None
    assert data_transaction(service.settings.smtp.port, [LIST], raw_message(subject="two"))[1][0] == 250
    assert service.store.pid not in (None, child)
    assert db_count(service.db, Comment) == 2


@pytest.mark.parametrize("path", ["<a@", '<"', "<@"])
def test_a_path_the_address_parser_trips_over_is_a_syntax_error(service, path):
    """aiosmtpd's parser raises on these; the client must hear "553 5.1.3 malformed address",
    not a 451 that tells it to try again."""
    with smtplib.SMTP("127.0.0.1", service.settings.smtp.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.docmd("MAIL", f"FROM:{path}")[0] == 553
        assert smtp.docmd("MAIL", "FROM:<reader@example.net>")[0] == 250
        assert smtp.docmd("RCPT", f"TO:{path}")[0] == 553
    ensure_live(service.settings.smtp.port)


def test_a_dropped_database_connection_is_replaced_without_a_refusal(service):
    """The store process keeps one connection open. When the database drops it (a restart, an
    idle timeout), the batch that finds out is retried on a new connection, not refused."""
    if service.db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite connections are not dropped by a server")
    port = service.settings.smtp.port
    assert data_transaction(port, [LIST], raw_message(subject="before"))[1][0] == 250
    with service.db.engine.connect() as conn:
        dropped = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert dropped >= 1  # the store process's connection at least
    assert data_transaction(port, [LIST], raw_message(subject="after"))[1][0] == 250
    assert db_count(service.db, Comment) == 2


def test_a_store_process_killed_mid_batch_gets_451_and_writes_nothing(service):
    port = service.settings.smtp.port
    victim = service.store.pid
    reply: list[tuple[int, str] | None] = []
    with database_write_lock(service.db):
        client = threading.Thread(target=lambda: reply.append(transaction(port, [LIST], raw_message())[1]))
        client.start()
        time.sleep(1.0)  # the child is now waiting for the lock, inside its transaction
        assert not reply
        os.kill(victim, signal.SIGKILL)
        client.join(timeout=20)
    assert reply and reply[0] is not None and reply[0][0] == 451, reply
    assert db_count(service.db, Comment) == 0
    assert data_transaction(port, [LIST], raw_message(subject="next"))[1][0] == 250  # a new child
    assert db_count(service.db, Comment) == 1


def test_a_wedged_store_process_is_killed_and_its_batch_gets_451(service, monkeypatch):
    from listbridge.inbound import worker

    monkeypatch.setattr(worker, "REPLY_TIMEOUT", 1.0)
    port = service.settings.smtp.port
    wedged = service.store.pid
    os.kill(wedged, signal.SIGSTOP)  # alive, but never answers
    try:
        assert data_transaction(port, [LIST], raw_message(subject="lost in a wedged child"))[1][0] == 451
    finally:
        with suppress(ProcessLookupError):  # killed and reaped by now, normally
            os.kill(wedged, signal.SIGCONT)
    assert data_transaction(port, [LIST], raw_message(subject="next"))[1][0] == 250
    assert service.store.pid not in (None, wedged)
    with service.db.transaction() as session:
        assert list(session.scalars(select(Comment.subject))) == ["next"]


# --- LMTP: one reply per recipient --------------------------------------------------------------


def test_lmtp_replies_once_per_recipient(make_settings, sink):
    with running(make_settings(smtp={"lmtp": True})) as svc:
        client = smtplib.LMTP("127.0.0.1", svc.settings.smtp.port, timeout=10)
        try:
            assert client.ehlo()[0] == 250  # sends LHLO
            client.mail("carole@example.net")
            assert client.rcpt(LIST)[0] == 250
            assert client.rcpt("bla+confirm-aaaaaaaaaaaaaaaaaaaaaaaaaa@bla.example.org")[0] == 250
            first = client.data(raw_message(subject="lmtp"))
            second = client.getreply()
            assert first[0] == 250, first
            assert second[0] == 550, second
            assert client.noop()[0] == 250  # the session is still in step
        finally:
            client.quit()
        assert db_count(svc.db, Comment, Comment.subject == "lmtp") == 1


# --- the workers are woken only when a batch left them work ---------------------------------------


def test_a_batch_reports_the_work_it_left_for_the_workers(make_settings, db):
    """A held comment leaves its notice to send; a subscription request queues mail; an approved
    comment queues its broadcast and changes the site. The receiver wakes the workers on these."""
    from listbridge.archive.posts import Post
    from listbridge.db import COMMENT_HELD, MAIL_QUEUED, SITE_CHANGED
    from listbridge.inbound import dispatch

    held = make_settings()
    open_list = make_settings(lists=[{"address": LIST, "language": "en", "moderation": "none"}])
    post = Post("hello", "Hello", "log/hello.gmi", "2026-11-01")

    def accepted(settings, rcpt: str, subject: str) -> dispatch.Accepted:
        raw = raw_message(to=rcpt, subject=subject)
        return dispatch.accept_many(
            db, settings, [dispatch.Received(raw, "carole@example.net", (rcpt,))], lambda: {post.slug: post}
        )

    comment = accepted(held, LIST, "Re: hello")
    assert [r.code for r in comment.replies[0]] == [250] and comment.effects == {COMMENT_HELD}
    assert accepted(held, SUBSCRIBE, "subscribe").effects == {MAIL_QUEUED}
    assert accepted(open_list, LIST, "Re: hello").effects == {MAIL_QUEUED, SITE_CHANGED}
    with db.transaction() as session:
        assert sorted(session.scalars(select(Comment.status))) == ["approved", "held"]


def test_the_receiver_runs_on_uvloop_when_installed_and_on_asyncio_without(service, monkeypatch):
    import asyncio
    import sys

    import uvloop

    from listbridge.inbound.server import new_event_loop

    assert isinstance(service.controller.loop, uvloop.Loop)  # the whole suite runs on it
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    loop = new_event_loop()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
