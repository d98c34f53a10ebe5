"""Outbox workers: claim a batch, send it through the relay, record each recipient's outcome.

Each worker thread owns one relay connection. Personalised list mail gets one transaction per
recipient with its own List-Unsubscribe; batched mode groups up to 100 recipients of one domain.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import groupby
from typing import Callable, Iterable, Iterator

from sqlalchemy import select

from . import outbox
from .addresses import subaddress
from .compose import personal_headers
from .config import Settings
from .models import OutboxMessage
from .relay import RelayClient, RelayError, prepare
from .store import Database

log = logging.getLogger(__name__)

CLAIM_BATCH = 100  # also the most that a crash can send twice, per worker
BATCH_RECIPIENTS = 100  # recipients per transaction in batched mode


@dataclass(frozen=True)
class Prepared:
    """A stored message, ready to send (line ends fixed, dot-stuffed)."""

    list_address: str
    envelope_from: str
    fanout: bool
    give_up_at: dt.datetime
    data: bytes


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
        self._cache: OrderedDict[int, Prepared] = OrderedDict()

    def run_once(self) -> int:
        """Claim and deliver one batch; the number of recipients handled (0: nothing due)."""
        with self.db.transaction() as session:
            claimed = outbox.claim(session, self.owner, CLAIM_BATCH)
        if not claimed:
            return 0
        messages = self._messages({c.message_id for c in claimed})
        outcomes: list[outbox.Outcome] = []
        down = ""
        for rows in transactions(claimed, messages, self.settings.relay.personalize):
            if not down:
                try:
                    outcomes += self._send(rows, messages[rows[0].message_id])
                    continue
                except RelayError as exc:
                    log.warning("%s", exc)
                    down = str(exc)  # the rest of the batch waits for the next attempt
            outcomes += [outbox.Outcome(r, 421, down) for r in rows]
        with self.db.transaction() as session:
            outbox.record(session, outcomes, {mid: m.give_up_at for mid, m in messages.items()})
        return len(claimed)

    def _send(self, rows: list[outbox.Claimed], message: Prepared) -> list[outbox.Outcome]:
        data = message.data
        if message.fanout:
            separator = self.settings.smtp.separator
            if len(rows) == 1 and rows[0].token and self.settings.relay.personalize:
                unsubscribe = subaddress(message.list_address, f"unsubscribe-{rows[0].token}", separator)
                data = personal_headers(rows[0].address, unsubscribe) + data
            else:
                data = personal_headers(message.list_address, subaddress(message.list_address, "unsubscribe", separator)) + data
        replies = self.relay.send(message.envelope_from, [r.address for r in rows], data)
        return [outbox.Outcome(r, code, text) for r, (code, text) in zip(rows, replies)]

    def _messages(self, ids: set[int]) -> dict[int, Prepared]:
        missing = [i for i in ids if i not in self._cache]
        if missing:
            with self.db.transaction() as session:
                for m in session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(missing))):
                    self._cache[m.id] = Prepared(m.list_address, m.envelope_from, m.fanout, m.give_up_at, prepare(m.body))
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return {i: self._cache[i] for i in ids}

    def close(self) -> None:
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

    def loop(worker: Worker) -> None:
        try:
            while not stop.is_set():
                try:
                    done = worker.run_once()
                except Exception:  # a worker must survive a database hiccup; the rows stay claimed
                    log.exception("delivery batch failed; it will be retried after the claim lease")
                    done = 0
                    if until_idle:
                        return
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
        outbox.release_stale(session, dt.timedelta(minutes=10))
        outbox.make_all_due(session)
    stop, wakeup = threading.Event(), threading.Event()
    for thread in run_workers(db, settings, stop, wakeup, until_idle=True, progress=progress):
        thread.join()
