"""The outbox and its workers against a real aiosmtpd relay sink."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import func, insert, select, update

from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import FAILED, QUEUED, SENDING, SENT, OutboxMessage, OutboxRecipient, utcnow
from listbridge.outbound import compose, delivery, outbox


def add_subscribers(db, settings, addresses):
    ctx = ListContext(settings, settings.lists[0])
    with db.transaction() as session:
        for address in addresses:
            subscribe(session, ctx, address, name=address.split("@")[0])


def list_mail(db, settings, subject="A post") -> int:
    mlist = settings.lists[0]
    body = compose.build(mlist, "+", subject=subject, body="Body of the post.\n", sender=mlist.address)
    with db.transaction() as session:
        message, count = outbox.enqueue_fanout(
            session,
            list_address=mlist.address,
            kind="post",
            envelope_from="bla+owner@bla.example.org",
            body=body,
            retry_days=5,
        )
    return count


def states(db) -> Counter:
    with db.transaction() as session:
        return Counter(
            dict(session.execute(select(OutboxRecipient.state, func.count()).group_by(OutboxRecipient.state)).all())
        )


def tokens(db, settings) -> dict[str, str]:
    from listbridge.models import Subscriber

    with db.transaction() as session:
        return dict(session.execute(select(Subscriber.address, Subscriber.token)).all())


def test_fanout_stores_the_body_once(db, settings):
    add_subscribers(db, settings, [f"r{i}@d{i % 3}.example" for i in range(30)])
    assert list_mail(db, settings) == 30
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 1
        rows = session.execute(select(OutboxRecipient.domain).order_by(OutboxRecipient.id)).scalars().all()
    assert len(rows) == 30
    assert rows == sorted(rows)  # inserted in domain order, so batching by domain is a scan by id


def test_personalised_delivery_gives_each_recipient_its_own_unsubscribe(db, make_settings, sink):
    settings = make_settings()
    addresses = [f"r{i}@d{i % 4}.example" for i in range(12)]
    add_subscribers(db, settings, addresses)
    list_mail(db, settings)
    delivery.flush(db, settings)
    assert states(db) == Counter({SENT: 12})
    assert len(sink.handler.received) == 12
    own = tokens(db, settings)
    for received in sink.handler.received:
        (rcpt,) = received.rcpt_tos
        msg = received.message
        assert msg["To"] == rcpt
        assert msg["List-Unsubscribe"] == f"<mailto:bla+unsubscribe-{own[rcpt]}@bla.example.org>"
        assert msg["List-Id"] == "bla <bla.bla.example.org>"
        assert msg["List-Post"] == "<mailto:bla@bla.example.org>"
        assert msg["List-Help"] == "<mailto:bla+help@bla.example.org>"
        assert msg["List-Subscribe"] == "<mailto:bla+subscribe@bla.example.org>"
        assert msg["Precedence"] == "list"
        assert msg["X-Loop"] == "bla@bla.example.org"
        assert msg["Message-ID"].endswith("@bla.example.org>")
        assert received.mail_from == "bla+owner@bla.example.org"
    assert sorted(r.rcpt_tos[0] for r in sink.handler.received) == sorted(addresses)


def test_batched_delivery_groups_by_domain(db, make_settings, sink):
    settings = make_settings(relay={"personalize": False})
    addresses = [f"a{i}@big.example" for i in range(230)] + [f"b{i}@small.example" for i in range(7)]
    add_subscribers(db, settings, addresses)
    list_mail(db, settings)
    delivery.flush(db, settings)
    assert states(db) == Counter({SENT: 237})
    batches = sink.handler.received
    assert all(len(b.rcpt_tos) <= delivery.BATCH_RECIPIENTS for b in batches)
    assert all(len({a.rpartition("@")[2] for a in b.rcpt_tos}) == 1 for b in batches)
    delivered = Counter(a for b in batches for a in b.rcpt_tos)
    assert set(delivered) == set(addresses) and set(delivered.values()) == {1}
    assert len(batches) <= 3 + 2 + 2  # a claim batch may split a domain, never more
    msg = batches[0].message
    assert msg["List-Unsubscribe"] == "<mailto:bla+unsubscribe@bla.example.org>"


def test_permanent_refusal_is_recorded_and_others_delivered(db, make_settings, sink):
    settings = make_settings()
    sink.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("gone") else None
    add_subscribers(db, settings, ["gone@x.example", "here@x.example"])
    list_mail(db, settings)
    delivery.flush(db, settings)
    with db.transaction() as session:
        rows = dict(session.execute(select(OutboxRecipient.address, OutboxRecipient.state)).all())
        error = session.scalar(select(OutboxRecipient.last_error).where(OutboxRecipient.address == "gone@x.example"))
    assert rows == {"gone@x.example": FAILED, "here@x.example": SENT}
    assert error.startswith("550")


def test_temporary_refusal_is_retried_with_backoff(db, make_settings, sink):
    settings = make_settings()
    sink.handler.reply = "451 4.3.0 try later"
    add_subscribers(db, settings, ["a@x.example"])
    list_mail(db, settings)
    before = utcnow()
    delivery.flush(db, settings)
    with db.transaction() as session:
        row = session.scalars(select(OutboxRecipient)).one()
    assert row.state == QUEUED and row.attempts == 1
    assert row.next_attempt_at >= before + outbox.FIRST_RETRY - dt.timedelta(seconds=1)
    assert row.last_error.startswith("451")
    sink.handler.reply = None
    delivery.flush(db, settings)  # flush ignores the backoff
    assert states(db) == Counter({SENT: 1})
    assert len(sink.handler.received) == 1


def test_relay_down_then_back_delivers_everything_once(db, make_settings, sink):
    settings = make_settings()
    addresses = [f"r{i}@d{i % 5}.example" for i in range(40)]
    add_subscribers(db, settings, addresses)
    list_mail(db, settings)
    sink.stop()
    delivery.flush(db, settings)
    assert states(db) == Counter({QUEUED: 40})
    with db.transaction() as session:
        assert session.scalar(select(func.min(OutboxRecipient.attempts))) == 1
    sink.start()
    delivery.flush(db, settings)
    assert states(db) == Counter({SENT: 40})
    delivered = Counter(r.rcpt_tos[0] for r in sink.handler.received)
    assert sorted(delivered) == sorted(addresses) and set(delivered.values()) == {1}


def test_give_up_after_the_retry_period(db, make_settings, sink):
    settings = make_settings()
    sink.handler.reply = "421 4.3.2 shutting down"
    add_subscribers(db, settings, ["a@x.example"])
    list_mail(db, settings)
    with db.transaction() as session:
        session.execute(update(OutboxMessage).values(give_up_at=utcnow()))
    delivery.flush(db, settings)
    assert states(db) == Counter({FAILED: 1})


def taken_by_four_workers(take: Callable[[str], list[int]]) -> dict[str, list[int]]:
    """Four threads, started together, each calling take(its name) until it returns no row:
    the ids each one took."""
    taken: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        barrier.wait()
        got: list[int] = []
        while batch := take(name):
            got += batch
        taken[name] = got

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return taken


def test_concurrent_claims_never_overlap(db, settings):
    """SQLite workers claim their batch ('sending') before sending it: no row goes to two of them."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("claims: SQLite only (PostgreSQL workers hold their rows locked, tested below)")
    add_subscribers(db, settings, [f"r{i}@x.example" for i in range(400)])
    list_mail(db, settings)

    def claim(name: str) -> list[int]:
        with db.transaction() as session:
            return [c.id for c in outbox.claim(session, name, 25)]

    claimed = taken_by_four_workers(claim)
    ids = [i for got in claimed.values() for i in got]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert states(db) == Counter({SENDING: 400})


def test_concurrent_locked_batches_never_overlap(db, settings):
    """PostgreSQL workers hold their batch locked while sending: no row goes to two of them."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks held while sending: PostgreSQL only (SQLite workers claim)")
    add_subscribers(db, settings, [f"r{i}@x.example" for i in range(400)])
    list_mail(db, settings)

    def send(name: str) -> list[int]:
        with db.transaction() as session:
            batch = outbox.lock_due(session, 25)
            if batch:
                time.sleep(0.01)  # "sending", locks held
                outbox.record(session, [outbox.Outcome(row, 250) for row in batch], {})
        return [row.id for row in batch]

    sent = taken_by_four_workers(send)
    ids = [i for got in sent.values() for i in got]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert sum(1 for got in sent.values() if got) > 1  # the work was shared, not serialised
    assert states(db) == Counter({SENT: 400})


def test_a_large_fanout_is_claimed_through_the_due_index_at_once(db, settings):
    """PostgreSQL: right after a fan-out, before autovacuum has looked at the table, a claim
    walks the due index and stops at its limit; it does not read and sort every due row."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite plans without statistics")
    from listbridge.addresses import new_token
    from listbridge.models import Subscriber

    n = 30_000  # below some 20,000 rows, PostgreSQL walks the index even without statistics
    with db.transaction() as session:
        session.execute(
            insert(Subscriber),
            [
                {
                    "list_address": settings.lists[0].address,
                    "address": f"r{i}@d{i % 7}.example",
                    "domain": f"d{i % 7}.example",
                    "display_name": "",
                    "token": new_token(),
                    "subscribed_at": utcnow(),
                }
                for i in range(n)
            ],
        )
    assert list_mail(db, settings) == n
    with db.engine.connect() as conn:
        query = outbox._LOCK_DUE.compile(dialect=conn.dialect)
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql("EXPLAIN " + query.string, {**query.params, "now": utcnow(), "limit": 100})
        )
    assert "ix_outbox_recipients_due" in plan and "Sort" not in plan, plan


def test_stale_claims_are_queued_again(db, settings):
    add_subscribers(db, settings, ["a@x.example", "b@x.example", "c@x.example"])
    list_mail(db, settings)
    import socket

    with db.transaction() as session:
        rows = session.scalars(select(OutboxRecipient).order_by(OutboxRecipient.id)).all()
        host = socket.gethostname()
        # a: claimed long ago elsewhere; b: claimed now by a dead local process; c: alive (us).
        session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.id == rows[0].id)
            .values(state=SENDING, claimed_by="elsewhere:1:w0", claimed_at=utcnow() - dt.timedelta(hours=1))
        )
        session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.id == rows[1].id)
            .values(state=SENDING, claimed_by=f"{host}:{2**22 + 12345}:w0", claimed_at=utcnow())
        )
        session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.id == rows[2].id)
            .values(state=SENDING, claimed_by=outbox.worker_id() + ":w0", claimed_at=utcnow())
        )
    with db.transaction() as session:
        assert outbox.release_stale(session, dt.timedelta(minutes=10)) == 2
        left = dict(session.execute(select(OutboxRecipient.address, OutboxRecipient.state)).all())
    assert left == {"a@x.example": QUEUED, "b@x.example": QUEUED, "c@x.example": SENDING}


def test_transactions_grouping_rules():
    prepared = {
        1: delivery.Prepared("bla@d", "o@d", True, False, utcnow(), b""),
        2: delivery.Prepared("bla@d", "o@d", False, False, utcnow(), b""),
    }
    rows = [outbox.Claimed(i, 1, f"r{i}@a", "a", "t", 0) for i in range(3)]
    rows += [outbox.Claimed(10 + i, 2, f"s{i}@b", "b", None, 0) for i in range(2)]
    personal = list(delivery.transactions(rows, prepared, personalize=True))
    assert [len(t) for t in personal] == [1, 1, 1, 2]  # a single mail to several still goes once
    batched = list(delivery.transactions(rows, prepared, personalize=False))
    assert [len(t) for t in batched] == [3, 2]


def test_a_bug_while_sending_backs_the_batch_off_and_keeps_the_worker(db, make_settings, sink, monkeypatch):
    """An unexpected error in the middle of a batch (here: the third envelope cannot be built)
    records what was sent, queues the rest with backoff instead of retrying it in a loop, and
    the next attempt delivers it, once."""
    settings = make_settings(relay={"connections": 1})
    add_subscribers(db, settings, [f"r{i}@d{i}.example" for i in range(5)])
    list_mail(db, settings)
    built = delivery.Worker._envelope
    calls = []

    def breaks_on_the_third(
        self: delivery.Worker, rows: list[outbox.Claimed], message: delivery.Prepared
    ) -> tuple[str, list[str], bytes]:
        calls.append(rows)
        if len(calls) == 3:
            raise RuntimeError("a bug")
        return built(self, rows, message)

    monkeypatch.setattr(delivery.Worker, "_envelope", breaks_on_the_third)
    worker = delivery.Worker(db, settings, "w0")
    try:
        assert worker.run_once() == 5
    finally:
        worker.close()
    assert states(db) == Counter({SENT: 2, QUEUED: 3})
    with db.transaction() as session:
        waiting = session.execute(
            select(OutboxRecipient.attempts, OutboxRecipient.last_error, OutboxRecipient.next_attempt_at).where(
                OutboxRecipient.state == QUEUED
            )
        ).all()
    assert {(a, e) for a, e, _ in waiting} == {(1, "421 internal error while sending")}
    assert all(at > utcnow() for _, _, at in waiting)
    monkeypatch.setattr(delivery.Worker, "_envelope", built)
    delivery.flush(db, settings)
    assert states(db) == Counter({SENT: 5})
    assert sorted(r for m in sink.handler.received for r in m.rcpt_tos) == [f"r{i}@d{i}.example" for i in range(5)]
