"""The durable outbox: every outgoing mail is stored here before anything is sent.

A message is stored once; each recipient is one small row with its own state
(queued -> sending -> sent | failed). Workers claim rows in batches with
`FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite serialises writers anyway), so several
processes never deliver the same row twice. A claim that outlives its lease, or whose
process died, is queued again: delivery is at-least-once, bounded by one batch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import BigInteger, any_, bindparam, case, func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql import ColumnElement, Select

from listbridge.db import MAIL_QUEUED, note_effect, rowcount
from listbridge.models import (
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    OutboxBounce,
    OutboxMessage,
    OutboxRecipient,
    Secret,
    Subscriber,
    utcnow,
)

# A fan-out this large refreshes PostgreSQL's statistics on the recipients table (see enqueue_fanout).
ANALYZE_AFTER = 1000
# Backoff for temporary failures: 1 min, 2, 4 … capped at 4 h, until the message's give-up time.
# A claim older than this is taken to belong to a process that died or hangs (release_stale).
CLAIM_LEASE = dt.timedelta(minutes=10)
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
    verp: bool = False,
) -> OutboxMessage:
    """Store one complete message for a few recipients (confirmations, notices, forwards);
    with `verp`, each is sent from its own bounce address (outbound/verp.py)."""
    message = _message(session, list_address, kind, envelope_from, body, retry_days, fanout=False, verp=verp)
    session.execute(
        insert(OutboxRecipient),
        [{"message_id": message.id, "address": a, "domain": a.rpartition("@")[2].lower()} for a in recipients],
    )
    return message


def enqueue_fanout(
    session: Session,
    *,
    list_address: str,
    kind: str,
    envelope_from: str,
    body: bytes,
    retry_days: float,
    verp: bool = False,
    skip_domains: Collection[str] = (),
) -> tuple[OutboxMessage, int]:
    """Store a list mail for every subscriber of the list whose delivery is on (not disabled
    by bounces) and whose domain is not in `skip_domains`, in one INSERT … SELECT.

    The roster never passes through Python, so 100,000 recipients cost 100,000 small rows
    and no memory. Rows are inserted in domain order, so batching by domain is a scan by id.
    """
    message = _message(session, list_address, kind, envelope_from, body, retry_days, fanout=True, verp=verp)
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
        .where(Subscriber.list_address == list_address, Subscriber.disabled_at.is_(None))
        .order_by(Subscriber.domain, Subscriber.id)
    )
    if skip_domains:
        roster = roster.where(Subscriber.domain.not_in(sorted(skip_domains)))
    columns = ["message_id", "address", "domain", "token", "state", "attempts", "next_attempt_at", "last_error"]
    session.execute(insert(OutboxRecipient).from_select(columns, roster))
    # rowcount of INSERT … SELECT is not reported by every driver (psycopg gives -1): count.
    count = session.scalar(
        select(func.count()).select_from(OutboxRecipient).where(OutboxRecipient.message_id == message.id)
    )
    if (count or 0) >= ANALYZE_AFTER and session.get_bind().dialect.name == "postgresql":
        # PostgreSQL plans from statistics that autovacuum refreshes a minute or more later.
        # Until then it takes a fresh fan-out for a dozen rows, and each claim reads and sorts
        # every due row instead of walking the due index.
        # ANALYZE counts this transaction's own new rows; the claim's two columns are enough.
        session.execute(text("ANALYZE outbox_recipients (state, next_attempt_at)"))
    return message, count or 0


def _message(
    session: Session,
    list_address: str,
    kind: str,
    envelope_from: str,
    body: bytes,
    retry_days: float,
    fanout: bool,
    verp: bool,
) -> OutboxMessage:
    now = utcnow()
    note_effect(session, MAIL_QUEUED)
    message = OutboxMessage(
        list_address=list_address,
        kind=kind,
        envelope_from=envelope_from,
        fanout=fanout,
        verp=verp,
        body=body,
        created_at=now,
        give_up_at=now + dt.timedelta(days=retry_days),
    )
    session.add(message)
    session.flush()
    return message


class Claimed(NamedTuple):
    """One claimed recipient row (a tuple: claims of thousands of rows stay cheap)."""

    id: int
    message_id: int
    address: str
    domain: str
    token: str | None
    attempts: int


_R = OutboxRecipient
_CLAIMED_COLUMNS = (_R.id, _R.message_id, _R.address, _R.domain, _R.token, _R.attempts)


# Statements are built once, with bind parameters: a claim costs no SQL construction.
_IS_DUE = (_R.state == QUEUED, _R.next_attempt_at <= bindparam("now"))


def _first_due(
    *columns: QueryableAttribute[object], order: tuple[QueryableAttribute[object], ...]
) -> Select[*tuple[object, ...]]:
    """The first :limit due rows in `order`, locked for this transaction, skipping rows another
    transaction holds (SQLite, which has one writer, has no row locks and ignores this)."""
    return select(*columns).where(*_IS_DUE).order_by(*order).limit(bindparam("limit")).with_for_update(skip_locked=True)


# The order of ix_outbox_recipients_due, so no claim sorts the whole queue; a fan-out's rows
# (one next_attempt_at) then come in insertion order, which is domain order. SQLite's index
# ends with the rowid (the id); PostgreSQL's ends with the row's place in the heap (insertion
# order for a fresh fan-out), and ordering by id too would sort every due row at each claim.
_MARK_SENDING = (
    update(_R)
    .where(_R.id.in_(_first_due(_R.id, order=(_R.next_attempt_at, _R.id)).scalar_subquery()))
    .values(state=SENDING, claimed_by=bindparam("owner"), claimed_at=bindparam("now"))
)
_LOCK_DUE = _first_due(*_CLAIMED_COLUMNS, order=(_R.next_attempt_at,))

# pysqlite releases the GIL around every row it steps through, while the other workers wait
# for the database: on SQLite the claimed rows come back as one JSON value, found through the
# due index (state 'sending', this owner, this claim's time).
_SQLITE_CLAIMED = select(func.json_group_array(func.json_array(*_CLAIMED_COLUMNS))).where(
    _R.state == SENDING, _R.claimed_by == bindparam("owner"), _R.claimed_at == bindparam("now")
)
_MARK_SENT_VALUES: dict[str, object] = {
    "state": SENT,
    "done_at": bindparam("now"),
    "claimed_by": None,
    "claimed_at": None,
    "last_error": "",
}
# A batch of ids as one parameter: a JSON array on SQLite, an array on PostgreSQL.
_SQLITE_MARK_SENT = (
    update(_R)
    .where(_R.id.in_(select(func.json_each(bindparam("ids")).table_valued("value").c.value)))
    .values(_MARK_SENT_VALUES)
)
_MARK_SENT = update(_R).where(_R.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))).values(_MARK_SENT_VALUES)


_ANY_DUE = select(_R.id).where(*_IS_DUE).limit(1)


def any_due(session: Session, now: dt.datetime | None = None) -> bool:
    """Whether a claim would find anything: a read, which on SQLite blocks no writer."""
    return session.connection().execute(_ANY_DUE, {"now": now or utcnow()}).first() is not None


def claim(session: Session, owner: str, limit: int, now: dt.datetime | None = None) -> list[Claimed]:
    """SQLite: mark up to `limit` due rows (the longest due first) as being sent by `owner` and
    return them, in id order. One owner never claims twice at the same `now` (a worker records
    a batch before claiming the next; time moves on between its claims). PostgreSQL workers
    hold their rows locked instead (lock_due)."""
    params = {"now": now or utcnow(), "owner": owner, "limit": limit}
    connection = session.connection()  # Core, not ORM: thousands of plain tuples
    connection.execute(_MARK_SENDING, params)
    rows: Iterable[Sequence[object]] = json.loads(connection.execute(_SQLITE_CLAIMED, params).scalar_one())
    return sorted(map(Claimed._make, rows))


def lock_due(session: Session, limit: int, now: dt.datetime | None = None) -> list[Claimed]:
    """PostgreSQL: lock up to `limit` due rows for this transaction, in id order, without
    writing them. Other workers skip locked rows; record() then writes each row once, with its
    outcome, before the commit. If the process dies, the transaction is rolled back and the
    rows are simply due again: no lease to wait for, and one update per row instead of two."""
    rows = session.connection().execute(_LOCK_DUE, {"now": now or utcnow(), "limit": limit}).all()
    return sorted(map(Claimed._make, rows))


class Outcome(NamedTuple):
    """What the relay said for one recipient: code 250-ish, 4xx (retry) or 5xx (permanent)."""

    recipient: Claimed
    code: int
    text: str = ""


def record(session: Session, outcomes: Sequence[Outcome], give_up_at: dict[int, dt.datetime]) -> None:
    """Store the outcome of one delivered batch: sent, failed, or queued again with backoff."""
    now = utcnow()
    sent = [o.recipient.id for o in outcomes if 200 <= o.code < 300]
    if sent:
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            connection.execute(_SQLITE_MARK_SENT, {"ids": json.dumps(sent), "now": now})
        else:
            connection.execute(_MARK_SENT, {"ids": sent, "now": now})
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
    stale = rowcount(
        session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.state == SENDING, OutboxRecipient.claimed_at < now - lease)
            .values(state=QUEUED, claimed_by=None, claimed_at=None)
            .execution_options(synchronize_session=False)
        )
    )
    host = socket.gethostname()
    owners = session.scalars(
        select(OutboxRecipient.claimed_by)
        .where(OutboxRecipient.state == SENDING, OutboxRecipient.claimed_by.like(f"{host}:%"))
        .distinct()
    ).all()
    dead = [o for o in owners if o and not _alive(_pid(o))]
    if dead:
        stale += rowcount(
            session.execute(
                update(OutboxRecipient)
                .where(OutboxRecipient.state == SENDING, OutboxRecipient.claimed_by.in_(dead))
                .values(state=QUEUED, claimed_by=None, claimed_at=None)
                .execution_options(synchronize_session=False)
            )
        )
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
    """`queue flush`: retry now whatever is waiting for its backoff (rows already due are left
    alone: a fresh fan-out of 100,000 rows needs no rewrite)."""
    now = utcnow()
    return rowcount(
        session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.state == QUEUED, OutboxRecipient.next_attempt_at > now)
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
    )


def pending_count(session: Session) -> int:
    """Rows not yet sent or failed."""
    return (
        session.scalar(
            select(func.count()).select_from(OutboxRecipient).where(OutboxRecipient.state.in_([QUEUED, SENDING]))
        )
        or 0
    )


def summary(session: Session, include_done: bool = False) -> list[dict[str, object]]:
    """One line per message: counts by state, next attempt, last error (for `queue list`)."""
    r = OutboxRecipient

    def count(state: str) -> ColumnElement[int]:
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
            func.count(OutboxBounce.recipient_id),
            func.min(case((r.state == QUEUED, r.next_attempt_at))),
            func.max(r.last_error),
        )
        .join(r, r.message_id == OutboxMessage.id)
        .outerjoin(OutboxBounce, OutboxBounce.recipient_id == r.id)
        .group_by(OutboxMessage.id)
        .order_by(OutboxMessage.id)
    )
    lines = []
    for row in session.execute(query):
        mid, kind, list_address, created, queued, sending, sent, failed, bounced, next_at, error = row
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
                "bounced": int(bounced or 0),
                "next_attempt": next_at.isoformat(timespec="seconds") if next_at else None,
                "last_error": error or "",
            }
        )
    return lines


def verp_key(session: Session) -> bytes:
    """The database's key for VERP tokens (made by its migration)."""
    key = session.get(Secret, "verp")
    if key is None:
        raise LookupError("the database has no VERP key: run listbridge db upgrade")
    return key.value
