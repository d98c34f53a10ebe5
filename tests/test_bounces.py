"""Bounces over real SMTP to a real `serve`, the sink as relay: every mail to one recipient
leaves from a bounce address of its own; permanent failures sent back to it count, once a day;
at the threshold delivery stops, the owner is told, the subscriber is warned and can turn it
back on by mail; delays, out-of-office replies and forged tokens count for nothing."""

from __future__ import annotations

import datetime as dt
import doctest
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from listbridge.config import Settings
from listbridge.inbound.parse import parse
from listbridge.lists import bounces, context
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import SENT, Comment, OutboxMessage, OutboxRecipient, Subscriber, utcnow
from listbridge.outbound import outbox, verp
from listbridge.service import Service

from helpers import PG_URL, Received, Sink, db_count, send, site_repo, wait_for

LIST = "bla@bla.example.org"
OWNER = "owner@example.org"
READER = "reader@example.net"
OTHER = "other@example.org"
VERP = re.compile(r"bla\+bounces-([a-z2-7]+)@bla\.example\.org")


@pytest.fixture
def running(make_settings, tmp_path: Path) -> Iterator[tuple[Settings, Service]]:
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    settings = make_settings(
        site={"repo": str(site), "base_url": "gemini://bla.example.org"},
        lists=[{"address": LIST, "title": "bla", "owner": OWNER, "language": "en", "moderation": "none"}],
    )
    svc = Service(settings)
    svc.start()
    with svc.db.transaction() as session:
        ctx = ListContext(settings, settings.lists[0])
        subscribe(session, ctx, READER, name="Reader")
        subscribe(session, ctx, OTHER)
    yield settings, svc
    svc.stop()


def dsn(recipient: str, action: str = "failed", status: str = "5.1.1", message_id: str = "") -> bytes:
    """An RFC 3464 delivery report, as Postfix words it; quoting the returned mail's
    `message_id`, if given, in its headers."""
    quoted = f"Message-ID: {message_id}\r\n" if message_id else ""
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {LIST}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        f"\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n{quoted}Subject: [bla] Un billet\r\n\r\n--B--\r\n"
    ).encode()


def bounce(settings: Settings, to: str, data: bytes) -> dict[str, tuple[int, bytes]]:
    """Send `data` from the null sender, as an MTA sends a DSN."""
    with smtplib.SMTP("127.0.0.1", settings.smtp.port, timeout=10) as client:
        return client.sendmail("", [to], data)


def to_reader(sink: Sink, subject: str = "") -> list[Received]:
    return [r for r in sink.handler.to(READER) if subject in r.message["Subject"]]


def broadcast(settings: Settings, sink: Sink, body: str = "Merci.\n") -> None:
    """A comment approved on arrival, and its broadcast delivered to OTHER."""
    before = len([r for r in sink.handler.to(OTHER) if "Un billet" in r.message["Subject"]])
    send(settings.smtp.port, LIST, subject="Re: Un billet", body=body)
    wait_for(lambda: len([r for r in sink.handler.to(OTHER) if "Un billet" in r.message["Subject"]]) > before)


def subscriber(svc: Service, address: str = READER) -> Subscriber:
    with svc.db.transaction() as session:
        found = session.scalars(select(Subscriber).where(Subscriber.address == address)).one()
        session.expunge(found)
        return found


def yesterday(svc: Service) -> None:
    """Move READER's last bounce one day back, as if the last DSN came the day before."""
    with svc.db.transaction() as session:
        session.execute(
            update(Subscriber)
            .where(Subscriber.address == READER)
            .values(last_bounce_at=utcnow() - dt.timedelta(days=1, minutes=1))
        )


def test_each_mail_to_one_recipient_leaves_from_its_own_bounce_address(running, sink: Sink):
    settings, svc = running
    broadcast(settings, sink)
    send(settings.smtp.port, "bla+help@bla.example.org", sender=READER)
    wait_for(lambda: to_reader(sink, "bla"))
    wait_for(lambda: len(sink.handler.to(READER)) == 2)
    senders = [r.mail_from for r in sink.handler.to(READER)] + [r.mail_from for r in sink.handler.to(OTHER)]
    tokens = [VERP.fullmatch(s) for s in senders]
    assert all(tokens), senders
    assert len({t.group(1) for t in tokens if t}) == 3  # one per recipient and message


def latest_mail_from(sink: Sink, count: int) -> str:
    """The envelope sender of READER's `count`-th list mail, once it came."""
    mails = wait_for(lambda: to_reader(sink, "Un billet")[count - 1 :])
    return mails[0].mail_from


def test_five_days_of_failures_turn_delivery_off_and_enable_turns_it_on(running, sink: Sink):
    settings, svc = running
    broadcast(settings, sink)
    address = latest_mail_from(sink, 1)
    assert bounce(settings, address, dsn(READER)) == {}
    wait_for(lambda: subscriber(svc).bounce_score == 1)
    assert bounce(settings, address, dsn(READER)) == {}  # the same day: not counted again
    assert subscriber(svc).bounce_score == 1  # a 250 comes once the work is committed
    yesterday(svc)
    assert bounce(settings, address, dsn(READER)) == {}  # that mail's bounce came already
    assert subscriber(svc).bounce_score == 1
    for day in range(2, 5):
        broadcast(settings, sink, f"Comment {day}.\n")
        address = latest_mail_from(sink, day)
        bounce(settings, address, dsn(READER))
        assert subscriber(svc).bounce_score == day
        yesterday(svc)
    queued = db_count(svc.db, OutboxMessage)
    assert subscriber(svc).disabled_at is None  # nobody told yet
    broadcast(settings, sink, "Comment 5.\n")
    returned = to_reader(sink, "Un billet")[4].message["Message-ID"]
    wait_for(lambda: sent_to(svc, READER) == 5)
    # The fifth from a DSN to the bare list (an MTA that ignored the envelope), quoting the
    # returned mail's Message-ID.
    queued = db_count(svc.db, OutboxMessage)
    bounce(settings, LIST, dsn(READER, message_id=returned))
    off = subscriber(svc)
    assert off.bounce_score == 5 and off.disabled_at is not None and off.warnings_sent == 1
    assert db_count(svc.db, OutboxMessage) == queued + 3  # the DSN forwarded, the owner told, READER warned
    with svc.db.transaction() as session:
        lines = [m for m in outbox.summary(session, include_done=True) if m["kind"] == "comment"]
    assert [(m["sent"], m["bounced"]) for m in lines] == [(2, 1)] * 5  # READER and OTHER each

    wait_for(lambda: [r for r in sink.handler.to(OWNER) if "turned off" in r.message["Subject"]])
    (warning,) = wait_for(lambda: to_reader(sink, "on hold"))
    enable = re.search(r"bla\+enable-[a-z2-7]+@bla\.example\.org", warning.message.get_content())
    assert enable, warning.message.get_content()

    broadcast(settings, sink, "Second comment.\n")  # OTHER gets it, READER does not
    assert len(to_reader(sink, "Un billet")) == 5

    send(settings.smtp.port, enable.group(0), sender=READER, body="yes\n")
    wait_for(lambda: to_reader(sink, "again"))
    back = subscriber(svc)
    assert (back.disabled_at, back.bounce_score, back.warnings_sent) == (None, 0, 0)
    broadcast(settings, sink, "Third comment.\n")
    wait_for(lambda: len(to_reader(sink, "Un billet")) == 6)


def test_delays_autoreplies_and_forged_tokens_count_for_nothing(running, sink: Sink):
    settings, svc = running
    broadcast(settings, sink)
    address = to_reader(sink, "Un billet")[0].mail_from
    queued = db_count(svc.db, OutboxMessage)
    away = (
        f"From: {READER}\r\nTo: {address}\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\n"
        "I am away until Monday.\r\n"
    ).encode()
    token = VERP.fullmatch(address)
    assert token
    forged = address.replace(token.group(1), verp.encode(1, b"guess" * 8))
    assert bounce(settings, address, dsn(READER, "delayed", "4.4.1")) == {}
    assert bounce(settings, address, away) == {}
    assert bounce(settings, forged, dsn(READER)) == {}
    assert bounce(settings, address, b"\r\n\r\nno header at all\r\n") == {}  # unreadable, yet taken
    assert subscriber(svc).bounce_score == 0
    assert db_count(svc.db, OutboxMessage) == queued  # nothing answered, nothing forwarded


def sent_to(svc: Service, address: str) -> int:
    """Deliveries to `address` recorded as sent."""
    return db_count(svc.db, OutboxRecipient, OutboxRecipient.address == address, OutboxRecipient.state == SENT)


def test_a_dsn_to_the_owner_address_counts_and_still_reaches_the_owner(running, sink: Sink):
    settings, svc = running
    owner_dsns = lambda: [r for r in sink.handler.to(OWNER) if "Undelivered" in r.message["Subject"]]  # noqa: E731
    broadcast(settings, sink)
    (mail,) = wait_for(lambda: to_reader(sink, "Un billet"))
    wait_for(lambda: sent_to(svc, READER) == 1)
    # Naming READER and nothing else: anyone could say so, it counts for nothing.
    assert bounce(settings, "bla+owner@bla.example.org", dsn(READER)) == {}
    wait_for(lambda: len(owner_dsns()) == 1)
    assert subscriber(svc).bounce_score == 0
    # Quoting the returned mail's Message-ID, as most MTAs do: counted, once.
    returned = dsn(READER, message_id=mail.message["Message-ID"])
    assert bounce(settings, "bla+owner@bla.example.org", returned) == {}
    assert subscriber(svc).bounce_score == 1
    wait_for(lambda: len(owner_dsns()) == 2)
    yesterday(svc)
    assert bounce(settings, "bla+owner@bla.example.org", returned) == {}  # sent again: not counted
    assert subscriber(svc).bounce_score == 1
    # To the bare list (an MTA that ignored the envelope): counted too, and not a comment.
    (other,) = [r for r in sink.handler.to(OTHER) if "Un billet" in r.message["Subject"]]
    assert bounce(settings, LIST, dsn(OTHER, message_id=other.message["Message-ID"])) == {}
    assert subscriber(svc, OTHER).bounce_score == 1
    wait_for(lambda: len(owner_dsns()) == 4)
    assert db_count(svc.db, Comment) == 1  # the broadcast comment alone


def test_a_forged_dsn_without_a_token_counts_for_nothing(make_settings, sink: Sink, tmp_path: Path):
    """Someone writes to +help as READER, so that the list mails READER, then sends DSNs that
    name READER to the token-less bounce address and the owner: READER keeps their delivery."""
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    settings = make_settings(
        site={"repo": str(site)}, lists=[{"address": LIST, "owner": OWNER}], bounces={"threshold": 1}
    )
    svc = Service(settings)
    svc.start()
    try:
        with svc.db.transaction() as session:
            subscribe(session, ListContext(settings, settings.lists[0]), READER)
        send(settings.smtp.port, "bla+help@bla.example.org", sender=READER)
        (help_mail,) = wait_for(lambda: sink.handler.to(READER))
        wait_for(lambda: sent_to(svc, READER) == 1)
        for to in ("bla+bounces@bla.example.org", "bla+owner@bla.example.org", LIST):
            assert bounce(settings, to, dsn(READER)) == {}
        assert (subscriber(svc).bounce_score, subscriber(svc).disabled_at) == (0, None)
        assert bounce(settings, help_mail.mail_from, dsn(READER)) == {}  # its own bounce address
        assert subscriber(svc).disabled_at is not None
    finally:
        svc.stop()


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL's workers hold their rows locked while they send")
def test_a_bounce_that_beats_the_record_of_its_delivery_counts(make_settings, db):
    """The relay bounces before the worker has recorded the delivery (its row still queued and
    locked): the bounce counts, without waiting for that worker's SMTP session."""
    settings = make_settings(bounces={"threshold": 1})
    ctx = ListContext(settings, settings.lists[0])
    with db.transaction() as session:
        subscribe(session, ctx, READER)
        context.send(session, ctx, "help", READER)
    worker = db.sessions()
    with worker.begin():
        (row,) = outbox.lock_due(worker, 10)  # the delivery worker, mid-session
        with db.transaction() as intake:
            intake.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting on the worker would fail
            token = verp.encode(row.id, outbox.verp_key(intake))
            said = bounces.received(intake, ctx, parse(dsn(READER), "", True), token)
        outbox.record(worker, [outbox.Outcome(row, 250)], {row.message_id: utcnow() + dt.timedelta(days=1)})
    worker.close()
    assert "delivery turned off" in said, said
    with db.transaction() as session:
        assert session.scalars(select(Subscriber)).one().disabled_at is not None


def test_batched_mail_shares_one_bounce_address_read_from_the_dsn(make_settings, sink: Sink, tmp_path: Path):
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    settings = make_settings(
        site={"repo": str(site)},
        relay={"host": "127.0.0.1", "port": sink.port, "personalize": False},
        lists=[{"address": LIST, "title": "bla", "owner": OWNER, "moderation": "none"}],
    )
    svc = Service(settings)
    svc.start()
    try:
        with svc.db.transaction() as session:  # one domain: one transaction
            for address in (READER, "second@example.net"):
                subscribe(session, ListContext(settings, settings.lists[0]), address)
        broadcast_to = "bla+bounces@bla.example.org"
        send(settings.smtp.port, LIST, subject="Re: Un billet", body="Merci.\n")
        (mail,) = wait_for(lambda: to_reader(sink, "Un billet"))
        assert mail.mail_from == broadcast_to and mail.rcpt_tos == [READER, "second@example.net"]
        wait_for(lambda: sent_to(svc, READER) == 1)  # a DSN comes once the relay has the mail
        assert bounce(settings, broadcast_to, dsn(READER)) == {}
        assert subscriber(svc).bounce_score == 1
    finally:
        svc.stop()


def test_warnings_then_removal(make_settings, db):
    settings = make_settings(bounces={"warnings": 2, "warning_days": 7})
    ctx = ListContext(settings, settings.lists[0])
    day = dt.datetime(2026, 5, 1, 12, 0)
    with db.transaction() as session:
        subscribe(session, ctx, READER)
        for n in range(settings.bounces.threshold):
            bounces.count(session, ctx, READER, day + dt.timedelta(days=n))
    off = day + dt.timedelta(days=settings.bounces.threshold - 1)

    def kinds() -> list[str]:
        with db.transaction() as session:
            return list(session.scalars(select(OutboxMessage.kind).order_by(OutboxMessage.id)))

    assert kinds() == ["bounce_disabled", "bounce_warning"]
    with db.transaction() as session:
        assert bounces.follow_up(session, settings, off + dt.timedelta(days=6)) == (0, 0)
        assert bounces.follow_up(session, settings, off + dt.timedelta(days=7)) == (1, 0)
        assert bounces.follow_up(session, settings, off + dt.timedelta(days=13)) == (0, 0)
        assert bounces.follow_up(session, settings, off + dt.timedelta(days=14)) == (0, 1)
    assert kinds() == ["bounce_disabled", "bounce_warning", "bounce_warning", "bounce_removed"]
    with db.transaction() as session:
        assert session.scalar(select(Subscriber.id)) is None


def test_a_score_left_alone_starts_over(make_settings, db):
    settings = make_settings()
    ctx = ListContext(settings, settings.lists[0])
    day = dt.datetime(2026, 5, 1, 12, 0)
    with db.transaction() as session:
        subscribe(session, ctx, READER)
        for n in range(4):
            bounces.count(session, ctx, READER, day + dt.timedelta(days=n))
        bounces.count(session, ctx, READER, day + dt.timedelta(days=12))
        found = session.scalars(select(Subscriber)).one()
        assert (found.bounce_score, found.disabled_at) == (1, None)


def test_doctests_of_the_modules_pass():
    for module in (bounces, verp):
        result = doctest.testmod(module)
        assert result.attempted and not result.failed, module


def test_a_refusal_at_rcpt_by_the_relay_counts(make_settings, sink: Sink, tmp_path: Path, monkeypatch):
    """A relay that checks its recipients refuses a dead one at RCPT and sends no DSN: the
    refusal counts, once, as a bounce would; a temporary refusal does not."""
    monkeypatch.setattr("listbridge.service.JANITOR_EVERY", 0.2)
    sink.handler.rcpt_reply = lambda a: {READER: "550 5.1.1 No such user", OTHER: "450 4.2.0 Try later"}.get(a)
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    settings = make_settings(site={"repo": str(site)}, lists=[{"address": LIST, "owner": OWNER, "moderation": "none"}])
    svc = Service(settings)
    svc.start()
    try:
        with svc.db.transaction() as session:
            ctx = ListContext(settings, settings.lists[0])
            subscribe(session, ctx, READER)
            subscribe(session, ctx, OTHER)
        send(settings.smtp.port, LIST, subject="Re: Un billet", body="Merci.\n")
        wait_for(lambda: subscriber(svc).bounce_score == 1)
        with svc.db.transaction() as session:
            (line,) = [m for m in outbox.summary(session, include_done=True) if m["kind"] == "comment"]
        assert (line["failed"], line["bounced"]) == (1, 1)
        time.sleep(1)  # more janitor passes: counted once
        assert (subscriber(svc).bounce_score, subscriber(svc, OTHER).bounce_score) == (1, 0)
    finally:
        svc.stop()
