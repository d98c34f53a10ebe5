"""Outbox workers: claim a batch, send it through the relay, record each recipient's outcome.

Each worker thread owns one relay connection. Personalised list mail gets one transaction per
recipient with its own List-Unsubscribe; batched mode groups up to 100 recipients of one domain.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

from sqlalchemy import select

from listbridge.addresses import subaddress
from listbridge.config import Settings
from listbridge.db import Database
from listbridge.failurelog import FailureLog
from listbridge.models import OutboxMessage
from listbridge.outbound import outbox, verp
from listbridge.outbound.compose import personal_headers, token_slots, with_token
from listbridge.outbound.relay import RelayClient, RelayError, prepare

log = logging.getLogger(__name__)

CLAIM_BATCH = 100  # also the most that a crash can send twice, per worker
BATCHED_CLAIM_BATCH = 1000  # batched mode: ten full transactions per claim
BATCH_RECIPIENTS = 100  # recipients per transaction in batched mode

_sqlite_locks: dict[str, threading.Lock] = {}
_sqlite_locks_guard = threading.Lock()


def claim_batch(personalize: bool) -> int:
    """Rows claimed at once by a worker (also the most a crash can send twice)."""
    return CLAIM_BATCH if personalize else BATCHED_CLAIM_BATCH


def _writer_lock(db: Database) -> threading.Lock:
    """SQLite has one writer at a time: workers of one process queue on a lock rather than in
    SQLite's busy handler, whose sleeps (up to 100 ms) would idle them. PostgreSQL workers
    never take it: they hold row locks instead (Worker.holds_locks)."""
    with _sqlite_locks_guard:
        return _sqlite_locks.setdefault(db.url, threading.Lock())


@dataclass(frozen=True)
class Prepared:
    """A stored message, ready to send (line ends fixed, dot-stuffed)."""

    list_address: str
    envelope_from: str
    fanout: bool
    verp: bool
    give_up_at: dt.datetime
    data: bytes
    token_slots: tuple[tuple[int, int], ...] = ()  # where each recipient's token goes (compose.py)


def transactions(
    claimed: Iterable[outbox.Claimed], messages: dict[int, Prepared], personalize: bool
) -> Iterator[list[outbox.Claimed]]:
    """Group claimed rows into SMTP transactions. Pure, so the rules are easy to test:
    personalised list mail is one recipient per transaction; otherwise rows of the same
    message and domain share a transaction, up to BATCH_RECIPIENTS."""

    def key(row: outbox.Claimed) -> tuple[int, str, int]:
        if personalize and messages[row.message_id].fanout:
            return (row.message_id, row.domain, row.id)
        return (row.message_id, row.domain, 0)

    for _, group in groupby(claimed, key=key):
        rows = list(group)
        for start in range(0, len(rows), BATCH_RECIPIENTS):
            yield rows[start : start + BATCH_RECIPIENTS]


class Worker:
    """One delivery thread's state: its relay session and a cache of prepared messages."""

    def __init__(self, db: Database, settings: Settings, name: str) -> None:
        self.db = db
        self.settings = settings
        self.owner = f"{outbox.worker_id()}:{name}"
        self.relay = RelayClient(settings.relay)
        self.writer = _writer_lock(db)
        self.holds_locks = not db.url.startswith("sqlite")
        self._cache: OrderedDict[int, Prepared] = OrderedDict()
        self._unrecorded: tuple[list[outbox.Outcome], dict[int, dt.datetime]] | None = None
        self._verp_key: bytes | None = None

    def run_once(self, defer_record: bool = False) -> int:
        """Claim and deliver one batch; the number of recipients handled (0: nothing due).

        PostgreSQL: the batch's rows stay locked in one transaction while they are sent, and
        their outcomes are written before its commit (outbox.lock_due).
        SQLite, which has one writer: rows are marked 'sending' in a short transaction, sent,
        then recorded. With `defer_record`, the outcomes are recorded in the transaction of the
        next claim (or by flush_outcomes()): one commit per batch instead of two. Either way the
        rows stay 'sending' until recorded, so a crash in between resends at most this batch.
        """
        limit = claim_batch(self.settings.relay.personalize)
        if self.holds_locks:
            with self.db.transaction() as session:
                claimed = outbox.lock_due(session, limit)
                if claimed:
                    outbox.record(session, *self._send(claimed))
            return len(claimed)
        if not self._unrecorded:
            # An idle worker must not take the write lock just to find nothing due.
            with self.db.transaction() as session:
                if not outbox.any_due(session):
                    return 0
        with self.writer, self.db.transaction() as session:
            if self._unrecorded:
                outbox.record(session, *self._unrecorded)
            claimed = outbox.claim(session, self.owner, limit)
        self._unrecorded = None
        if not claimed:
            return 0
        self._unrecorded = self._send(claimed)
        if not defer_record:
            self.flush_outcomes()
        return len(claimed)

    def _send(self, claimed: list[outbox.Claimed]) -> tuple[list[outbox.Outcome], dict[int, dt.datetime]]:
        """Send claimed rows through the relay: each row's outcome, and each message's give-up time."""
        messages = self._messages({c.message_id for c in claimed})
        groups = list(transactions(claimed, messages, self.settings.relay.personalize))
        outcomes: list[outbox.Outcome] = []
        done = 0
        try:
            for replies in self.relay.send_many(self._envelope(rows, messages[rows[0].message_id]) for rows in groups):
                outcomes += map(outbox.Outcome, groups[done], *zip(*replies, strict=True))
                done += 1
        except RelayError as exc:
            log.warning("%s", exc)
            failure = str(exc)
        except Exception:  # a bug: the rest waits for its backoff rather than being retried at once
            log.exception("unexpected error while sending a batch")
            self.relay.close()  # the session may be mid-transaction
            failure = "internal error while sending"
        else:
            failure = ""
        if failure:
            # The rest of the batch (fate unknown if already written) waits for the next attempt.
            outcomes += [outbox.Outcome(r, 421, failure) for rows in groups[done:] for r in rows]
        return outcomes, {mid: m.give_up_at for mid, m in messages.items()}

    def flush_outcomes(self) -> None:
        """Record the outcomes of the last batch if run_once() deferred them."""
        if self._unrecorded:
            with self.writer, self.db.transaction() as session:
                outbox.record(session, *self._unrecorded)
            self._unrecorded = None

    def _envelope(self, rows: list[outbox.Claimed], message: Prepared) -> tuple[str, list[str], bytes]:
        """The SMTP transaction for rows of one message: personalised headers when a list mail,
        and the recipient's own bounce address when VERP applies (one recipient)."""
        data = message.data
        separator = self.settings.smtp.separator
        sender = message.envelope_from
        if message.verp:
            assert self._verp_key is not None  # loaded with the message
            name = f"bounces-{verp.encode(rows[0].id, self._verp_key)}" if len(rows) == 1 else "bounces"
            sender = subaddress(message.list_address, name, separator)
        if message.fanout:
            if len(rows) == 1 and rows[0].token and self.settings.relay.personalize:
                token = rows[0].token
                unsubscribe = subaddress(message.list_address, f"unsubscribe-{token}", separator)
                if message.token_slots:
                    data = with_token(data, message.token_slots, token)
                url = self.settings.web.unsubscribe_url(token)
                data = personal_headers(rows[0].address, unsubscribe, url) + data
            else:
                data = (
                    personal_headers(message.list_address, subaddress(message.list_address, "unsubscribe", separator))
                    + data
                )
        return sender, [r.address for r in rows], data

    def _messages(self, ids: set[int]) -> dict[int, Prepared]:
        missing = [i for i in ids if i not in self._cache]
        if missing:
            with self.db.transaction() as session:
                for m in session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(missing))):
                    data = prepare(m.body)
                    slots = token_slots(data, m.token_placeholder) if m.fanout else ()
                    self._cache[m.id] = Prepared(
                        m.list_address, m.envelope_from, m.fanout, m.verp, m.give_up_at, data, slots
                    )
                if self._verp_key is None and any(p.verp for i in missing if (p := self._cache.get(i))):
                    self._verp_key = outbox.verp_key(session)
        wanted = {i: self._cache[i] for i in ids}
        while len(self._cache) > 32:
            self._cache.popitem(last=False)
        return wanted

    def close(self) -> None:
        """Record what is still unrecorded, then leave the relay."""
        try:
            self.flush_outcomes()
        except Exception:  # the rows stay claimed: queued again after the lease, as after a crash
            log.exception("could not record the last delivered batch")
        finally:
            self.relay.close()


def run_workers(
    db: Database,
    settings: Settings,
    stop: threading.Event,
    wakeup: threading.Event,
    until_idle: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[threading.Thread]:
    """Start `[relay] connections` worker threads. With `until_idle`, each exits once nothing is due."""

    failures = FailureLog(
        log, "delivery batch failed; it will be retried after the claim lease", "delivery works again"
    )

    def loop(worker: Worker) -> None:
        try:
            while not stop.is_set():
                try:
                    done = worker.run_once(defer_record=True)
                except Exception as exc:  # a worker must survive a database hiccup; the rows stay claimed
                    failures.failed(exc)
                    done = 0
                    if until_idle:
                        return
                else:
                    failures.succeeded()
                if done and progress:
                    progress(done)
                if not done:
                    if until_idle:
                        return
                    wakeup.wait(1.0)
                    wakeup.clear()
        finally:
            worker.close()

    threads = []
    for n in range(settings.relay.connections):
        thread = threading.Thread(target=loop, args=(Worker(db, settings, f"w{n}"),), name=f"outbox-{n}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def flush(db: Database, settings: Settings, progress: Callable[[int], None] | None = None) -> None:
    """Deliver everything queued now, ignoring backoff, then return (`queue flush`)."""
    with db.transaction() as session:
        outbox.release_stale(session, outbox.CLAIM_LEASE)
        outbox.make_all_due(session)
    _until_idle(db, settings, progress)


def deliver_due(db: Database, settings: Settings) -> None:
    """Deliver what is due now, backoff kept, then return (`watch --once` run by cron: a relay
    that refuses is tried again at the next run that finds the row due)."""
    with db.transaction() as session:
        outbox.release_stale(session, outbox.CLAIM_LEASE)
    _until_idle(db, settings, None)


def _until_idle(db: Database, settings: Settings, progress: Callable[[int], None] | None) -> None:
    stop, wakeup = threading.Event(), threading.Event()
    for thread in run_workers(db, settings, stop, wakeup, until_idle=True, progress=progress):
        thread.join()
