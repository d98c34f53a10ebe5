"""The durable outbox: every outgoing mail is stored here before anything is sent.

A message is stored once; each recipient is one small row with its own state
(queued -> sending -> sent | failed). Workers claim rows in batches with
`FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite serialises writers anyway), so several
processes never deliver the same row twice. A claim that outlives its lease, or whose
process died, is queued again: delivery is at-least-once, bounded by one batch.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import case, func, insert, literal, select, update
from sqlalchemy.orm import Session

from .models import FAILED, QUEUED, SENDING, SENT, OutboxMessage, OutboxRecipient, Subscriber, utcnow

# Backoff for temporary failures: 1 min, 2, 4 … capped at 4 h, until the message's give-up time.
FIRST_RETRY = dt.timedelta(minutes=1)
MAX_RETRY = dt.timedelta(hours=4)


def worker_id() -> str:
    """host:pid, recorded on every claimed row."""
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue(
    session: Session,
    *,
    list_address: str,
    kind: str,
    envelope_from: str,
    body: bytes,
    recipients: Iterable[str],
    retry_days: float,
) -> OutboxMessage:
    """Store one complete message for a few recipients (confirmations, notices, forwards)."""
    message = _message(session, list_address, kind, envelope_from, body, retry_days, fanout=False)
    session.execute(
        insert(OutboxRecipient),
        [{"message_id": message.id, "address": a, "domain": a.rpartition("@")[2].lower()} for a in recipients],
    )
    return message


def enqueue_fanout(
    session: Session, *, list_address: str, kind: str, envelope_from: str, body: bytes, retry_days: float
) -> tuple[OutboxMessage, int]:
    """Store a list mail for every subscriber of the list, in one INSERT … SELECT.

    The roster never passes through Python, so 100,000 recipients cost 100,000 small rows
    and no memory. Rows are inserted in domain order, so batching by domain is a scan by id.
    """
    message = _message(session, list_address, kind, envelope_from, body, retry_days, fanout=True)
    now = utcnow()
    roster = (
        select(
            literal(message.id),
            Subscriber.address,
            Subscriber.domain,
            Subscriber.token,
            literal(QUEUED),
            literal(0),
            literal(now),
            literal(""),
        )
        .where(Subscriber.list_address == list_address)
        .order_by(Subscriber.domain, Subscriber.id)
    )
    columns = ["message_id", "address", "domain", "token", "state", "attempts", "next_attempt_at", "last_error"]
    session.execute(insert(OutboxRecipient).from_select(columns, roster))
    # rowcount of INSERT … SELECT is not reported by every driver (psycopg gives -1): count.
    count = session.scalar(select(func.count()).select_from(OutboxRecipient).where(OutboxRecipient.message_id == message.id))
    return message, count or 0


def _message(
    session: Session, list_address: str, kind: str, envelope_from: str, body: bytes, retry_days: float, fanout: bool
) -> OutboxMessage:
    now = utcnow()
    message = OutboxMessage(
        list_address=list_address,
        kind=kind,
        envelope_from=envelope_from,
        fanout=fanout,
        body=body,
        created_at=now,
        give_up_at=now + dt.timedelta(days=retry_days),
    )
    session.add(message)
    session.flush()
    return message


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: int
    address: str
    domain: str
    token: str | None
    attempts: int


def claim(session: Session, owner: str, limit: int, now: dt.datetime | None = None) -> list[Claimed]:
    """Mark up to `limit` due rows as being sent by `owner` and return them, in id order."""
    now = now or utcnow()
    due = (
        select(OutboxRecipient.id)
        .where(OutboxRecipient.state == QUEUED, OutboxRecipient.next_attempt_at <= now)
        .order_by(OutboxRecipient.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(OutboxRecipient)
        .where(OutboxRecipient.id.in_(due.scalar_subquery()))
        .values(state=SENDING, claimed_by=owner, claimed_at=now)
        .returning(
            OutboxRecipient.id,
            OutboxRecipient.message_id,
            OutboxRecipient.address,
            OutboxRecipient.domain,
            OutboxRecipient.token,
            OutboxRecipient.attempts,
        )
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)


@dataclass(frozen=True)
class Outcome:
    """What the relay said for one recipient: code 250-ish, 4xx (retry) or 5xx (permanent)."""

    recipient: Claimed
    code: int
    text: str = ""


def record(session: Session, outcomes: Sequence[Outcome], give_up_at: dict[int, dt.datetime]) -> None:
    """Store the outcome of one delivered batch: sent, failed, or queued again with backoff."""
    now = utcnow()
    sent = [o.recipient.id for o in outcomes if 200 <= o.code < 300]
    if sent:
        session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.id.in_(sent))
            .values(state=SENT, done_at=now, claimed_by=None, claimed_at=None, last_error="")
            .execution_options(synchronize_session=False)
        )
    others = []
    for outcome in outcomes:
        if 200 <= outcome.code < 300:
            continue
        attempts = outcome.recipient.attempts + 1
        retry_at = now + min(FIRST_RETRY * (2 ** (attempts - 1)), MAX_RETRY)
        permanent = outcome.code >= 500 or retry_at > give_up_at[outcome.recipient.message_id]
        others.append(
            {
                "id": outcome.recipient.id,
                "state": FAILED if permanent else QUEUED,
                "attempts": attempts,
                "next_attempt_at": now if permanent else retry_at,
                "done_at": now if permanent else None,
                "claimed_by": None,
                "claimed_at": None,
                "last_error": f"{outcome.code} {outcome.text}"[:1000],
            }
        )
    if others:
        session.execute(update(OutboxRecipient), others)


def release_stale(session: Session, lease: dt.timedelta, now: dt.datetime | None = None) -> int:
    """Queue again rows whose claim is older than `lease` or whose local process is gone."""
    now = now or utcnow()
    stale = session.execute(
        update(OutboxRecipient)
        .where(OutboxRecipient.state == SENDING, OutboxRecipient.claimed_at < now - lease)
        .values(state=QUEUED, claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    host = socket.gethostname()
    owners = session.scalars(
        select(OutboxRecipient.claimed_by)
        .where(OutboxRecipient.state == SENDING, OutboxRecipient.claimed_by.like(f"{host}:%"))
        .distinct()
    ).all()
    dead = [o for o in owners if o and not _alive(_pid(o))]
    if dead:
        stale += session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.state == SENDING, OutboxRecipient.claimed_by.in_(dead))
            .values(state=QUEUED, claimed_by=None, claimed_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount
    return stale


def _pid(owner: str) -> int:
    """The pid in a claim owner "host:pid[:worker]"."""
    try:
        return int(owner.split(":")[1])
    except (IndexError, ValueError):
        return os.getpid()  # unknown shape: leave it to the lease


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_all_due(session: Session) -> int:
    """`queue flush`: retry now whatever is waiting for its backoff."""
    return session.execute(
        update(OutboxRecipient)
        .where(OutboxRecipient.state == QUEUED)
        .values(next_attempt_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount


def pending_count(session: Session) -> int:
    """Rows not yet sent or failed."""
    return session.scalar(
        select(func.count()).select_from(OutboxRecipient).where(OutboxRecipient.state.in_([QUEUED, SENDING]))
    ) or 0


def summary(session: Session, include_done: bool = False) -> list[dict[str, object]]:
    """One line per message: counts by state, next attempt, last error (for `queue list`)."""
    r = OutboxRecipient

    def count(state: str):  # type: ignore[no-untyped-def]
        return func.sum(case((r.state == state, 1), else_=0))

    query = (
        select(
            OutboxMessage.id,
            OutboxMessage.kind,
            OutboxMessage.list_address,
            OutboxMessage.created_at,
            count(QUEUED),
            count(SENDING),
            count(SENT),
            count(FAILED),
            func.min(case((r.state == QUEUED, r.next_attempt_at))),
            func.max(r.last_error),
        )
        .join(r, r.message_id == OutboxMessage.id)
        .group_by(OutboxMessage.id)
        .order_by(OutboxMessage.id)
    )
    lines = []
    for row in session.execute(query):
        mid, kind, list_address, created, queued, sending, sent, failed, next_at, error = row
        if not include_done and not (queued or sending):
            continue
        lines.append(
            {
                "id": mid,
                "kind": kind,
                "list": list_address,
                "created": created.isoformat(timespec="seconds"),
                "queued": int(queued or 0),
                "sending": int(sending or 0),
                "sent": int(sent or 0),
                "failed": int(failed or 0),
                "next_attempt": next_at.isoformat(timespec="seconds") if next_at else None,
                "last_error": error or "",
            }
        )
    return lines
