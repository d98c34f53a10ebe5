"""Bounces, scored as Mailman does: a permanent failure counts once a day per subscriber; a
score left without a new bounce for `stale_days` starts over; at `threshold`, delivery to the
subscriber is turned off in the same transaction (still subscribed, no list mail), the owner
is told, and the subscriber gets `warnings` notices `warning_days` apart, each with the
address LIST+enable-TOKEN@D that turns delivery back on. Unanswered, they are removed.

A bounce is read from LIST+bounces-TOKEN@D, TOKEN naming the outbox row it answers
(outbound/verp.py): only the first bounce of that mail counts. Else from the failures its DSN
names (batched mail, and DSNs sent to +owner or the bare list by MTAs that ignore the
envelope), against a mail it can stand for (named()). Only permanent failures count: a
delay, an out-of-office or a challenge counts for nothing. Everything here runs inside the
caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from listbridge.config import BounceSettings, Settings
from listbridge.db import insert_new
from listbridge.lists.context import ListContext, send
from listbridge.lists.subscriptions import unsubscribe
from listbridge.message import Incoming
from listbridge.models import FAILED, SENT, OutboxBounce, OutboxMessage, OutboxRecipient, Subscriber, utcnow
from listbridge.outbound import outbox, verp

log = logging.getLogger(__name__)

# How far back a DSN without a token may name a recipient: past the 4 to 5 days MTAs keep
# retrying (Exim, Postfix and Sendmail) before they send one.
DSN_DAYS = 7
NAMED_MAX = 100  # addresses counted from one DSN: one batched transaction's recipients at most
REFUSED_BATCH = 1000  # refusals counted in one pass


def next_score(score: int, last_bounce_at: dt.datetime | None, now: dt.datetime, rules: BounceSettings) -> int | None:
    """The score after a permanent failure at `now`; None when one was counted that day.

    >>> rules = BounceSettings(threshold=5, stale_days=7, warnings=3, warning_days=7)
    >>> day = dt.datetime(2026, 5, 1, 9)
    >>> next_score(0, None, day, rules), next_score(2, day, day.replace(hour=23), rules)
    (1, None)
    >>> next_score(2, day, day + dt.timedelta(days=1), rules), next_score(4, day, day + dt.timedelta(days=8), rules)
    (3, 1)
    """
    if last_bounce_at is not None:
        if last_bounce_at.date() == now.date():
            return None
        if now - last_bounce_at > dt.timedelta(days=rules.stale_days):
            return 1
    return score + 1


def received(session: Session, ctx: ListContext, incoming: Incoming, token: str, now: dt.datetime | None = None) -> str:
    """A message to LIST+bounces-TOKEN@D, or to LIST+bounces@D (`token` empty): count it when
    it is a permanent failure. What was done, for the log (nothing is ever answered)."""
    failures = incoming.failures
    if failures is None or not failures.permanent:
        kind = "a delay" if failures and failures.temporary else "not a bounce"
        return f"{kind}: not counted"
    if not token:
        return "; ".join(named(session, ctx, incoming, now)) or "names no mail sent without a token: not counted"
    now = now or utcnow()
    row_id = verp.decode(token, outbox.verp_key(session))
    # A plain read: on PostgreSQL the delivery worker may hold the row locked mid-session.
    row = session.get(OutboxRecipient, row_id) if row_id is not None else None
    if row is None:
        return "unknown bounce token: not counted"
    message = session.get(OutboxMessage, row.message_id)
    if message is None or message.list_address != ctx.mlist.address:
        return "bounce token of another list: not counted"
    # Whatever the row's state: the worker may not have recorded its delivery yet.
    if not insert_new(session, OutboxBounce, {"recipient_id": row.id, "bounced_at": now}):
        return f"bounce of {row.address}: that mail's bounce came already, not counted"
    return count(session, ctx, row.address, now)


def named(session: Session, ctx: ListContext, incoming: Incoming, now: dt.datetime | None = None) -> list[str]:
    """Count the permanent failures a DSN without a token names (to LIST+bounces@D, to +owner
    or to the bare list), at most NAMED_MAX, each against a mail the list sent that address
    within DSN_DAYS whose bounce has not come yet: one that left without its token (batched,
    or an outage notice), or one whose Message-ID the DSN quotes. A DSN naming an address and
    nothing else is anyone's say-so: it counts for nothing. What was done."""
    failures = incoming.failures
    if failures is None:
        return []
    now = now or utcnow()
    done = []
    for address in sorted(failures.permanent)[:NAMED_MAX]:
        row_id = _returned(session, ctx, address, failures.message_ids, now - dt.timedelta(days=DSN_DAYS))
        if row_id is not None and insert_new(session, OutboxBounce, {"recipient_id": row_id, "bounced_at": now}):
            done.append(count(session, ctx, address, now))
    return done


def _returned(
    session: Session, ctx: ListContext, address: str, message_ids: frozenset[str], since: dt.datetime
) -> int | None:
    """The last mail to `address` since `since` that a DSN without a token may stand for (see
    named()), its bounce not counted yet."""
    plain: list[ColumnElement[bool]] = [OutboxMessage.verp.is_(False)]  # an outage notice, say
    if not ctx.settings.relay.personalize:
        plain.append(OutboxMessage.fanout.is_(True))  # batched list mail
    if message_ids:
        plain.append(OutboxMessage.header_message_id.in_(sorted(message_ids)))
    last = (
        select(OutboxRecipient.id)
        .join(OutboxMessage, OutboxMessage.id == OutboxRecipient.message_id)
        .outerjoin(OutboxBounce, OutboxBounce.recipient_id == OutboxRecipient.id)
        .where(OutboxRecipient.address == address, OutboxMessage.list_address == ctx.mlist.address)
        .where(OutboxRecipient.state == SENT, OutboxRecipient.done_at >= since, or_(*plain))
        .where(OutboxBounce.recipient_id.is_(None))
        .order_by(OutboxRecipient.done_at.desc())
        .limit(1)
    )
    return session.scalar(last)


def refused(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[str]:
    """Count the mail the relay refused for good at RCPT or DATA (a 5xx, recorded by the
    outbox as failed): a relay that checks its recipients sends no DSN. Each such mail of the
    last DSN_DAYS once, at most REFUSED_BATCH a pass; what was done."""
    now = now or utcnow()
    lists = {mlist.address: mlist for mlist in settings.lists}
    rows = session.execute(
        select(OutboxRecipient.id, OutboxRecipient.address, OutboxMessage.list_address)
        .join(OutboxMessage, OutboxMessage.id == OutboxRecipient.message_id)
        .outerjoin(OutboxBounce, OutboxBounce.recipient_id == OutboxRecipient.id)
        # next_attempt_at is when a failure was recorded: the outbox's own index finds them.
        .where(OutboxRecipient.state == FAILED, OutboxRecipient.next_attempt_at >= now - dt.timedelta(days=DSN_DAYS))
        .where(OutboxRecipient.last_error.like("5%"), OutboxBounce.recipient_id.is_(None))
        .where(OutboxMessage.list_address.in_(lists))
        .order_by(OutboxRecipient.id)
        .limit(REFUSED_BATCH)
    ).all()
    done = []
    for row_id, address, list_address in rows:
        if insert_new(session, OutboxBounce, {"recipient_id": row_id, "bounced_at": now}):
            done.append(count(session, ListContext(settings, lists[list_address]), address, now))
    return done


def count(session: Session, ctx: ListContext, address: str, now: dt.datetime | None = None) -> str:
    """One permanent failure of `address`; at the threshold, its delivery is turned off."""
    now = now or utcnow()
    subscriber = _subscriber(session, ctx, address, lock=True)
    if subscriber is None:
        return f"bounce of {address}, not a subscriber: not counted"
    if subscriber.disabled_at is not None:
        return f"bounce of {address}, delivery already off: not counted"
    rules = ctx.settings.bounces
    score = next_score(subscriber.bounce_score, subscriber.last_bounce_at, now, rules)
    if score is None:
        return f"bounce of {address}: counted already today (score {subscriber.bounce_score})"
    subscriber.bounce_score, subscriber.last_bounce_at = score, now
    if score < rules.threshold:
        return f"bounce of {address}: score {score}"
    subscriber.disabled_at = now
    if ctx.mlist.owner:
        send(
            session,
            ctx,
            "bounce_disabled",
            ctx.mlist.owner,
            auto_submitted="auto-generated",
            to_moderators=True,
            address=address,
            score=score,
            warnings=rules.warnings,
            warning_days=_days(rules.warning_days),
        )
    _warn(session, ctx, subscriber, now)
    return f"bounce of {address}: score {score}, delivery turned off"


def _warn(session: Session, ctx: ListContext, subscriber: Subscriber, now: dt.datetime) -> None:
    rules = ctx.settings.bounces
    if subscriber.warnings_sent >= rules.warnings:
        return
    subscriber.warnings_sent += 1
    subscriber.last_warning_at = now
    enable_address = ctx.address(f"enable-{subscriber.token}")  # its Reply-To too: a reply turns it on
    send(
        session,
        ctx,
        "bounce_warning",
        subscriber.address,
        reply_to=enable_address,
        auto_submitted="auto-generated",
        name=subscriber.display_name,
        address=subscriber.address,
        enable_address=enable_address,
        removal_days=_days(rules.warning_days * (rules.warnings - subscriber.warnings_sent + 1)),
    )


def follow_up(session: Session, settings: Settings, now: dt.datetime | None = None) -> tuple[int, int]:
    """Send the warnings that are due to the subscribers whose delivery is off, and remove
    those who left the last one unanswered (their owner is told). (warned, removed)."""
    now = now or utcnow()
    rules = settings.bounces
    due = now - dt.timedelta(days=rules.warning_days)
    warned = removed = 0
    for mlist in settings.lists:
        ctx = ListContext(settings, mlist)
        rows = session.scalars(
            select(Subscriber)
            .where(Subscriber.list_address == mlist.address, Subscriber.disabled_at.is_not(None))
            .where(or_(Subscriber.last_warning_at <= due, Subscriber.last_warning_at.is_(None)))
            .where(Subscriber.disabled_at <= due)
            .order_by(Subscriber.id)
            .with_for_update(skip_locked=True)
        ).all()
        for subscriber in rows:
            try:
                with session.begin_nested():  # one that fails leaves the others to go on
                    removed_one = _follow_up_one(session, ctx, subscriber, now)
            except Exception:
                log.exception("bounces: the follow-up of %s on %s failed", subscriber.address, mlist.address)
                continue
            if removed_one:
                removed += 1
            else:
                warned += 1
    return warned, removed


def _follow_up_one(session: Session, ctx: ListContext, subscriber: Subscriber, now: dt.datetime) -> bool:
    """Warn `subscriber` once more, or remove them when warned enough; True when removed."""
    if subscriber.warnings_sent < ctx.settings.bounces.warnings:
        _warn(session, ctx, subscriber, now)
        return False
    unsubscribe(session, ctx, subscriber.address)
    if ctx.mlist.owner:
        send(
            session,
            ctx,
            "bounce_removed",
            ctx.mlist.owner,
            auto_submitted="auto-generated",
            to_moderators=True,
            address=subscriber.address,
            warnings=subscriber.warnings_sent,
        )
    return True


def enable_with_token(session: Session, ctx: ListContext, token: str) -> str:
    """LIST+enable-TOKEN@D: turn the subscriber's delivery back on, and tell them so."""
    subscriber = session.scalars(
        select(Subscriber).where(Subscriber.token == token, Subscriber.list_address == ctx.mlist.address)
    ).first()
    if subscriber is None:
        return "unknown enable token: nothing done"
    return enable(session, ctx, subscriber)


def enable(session: Session, ctx: ListContext, subscriber: Subscriber) -> str:
    """Deliver list mail to `subscriber` again, their score cleared."""
    if subscriber.disabled_at is None:
        return f"{subscriber.address}: delivery was on already"
    subscriber.disabled_at = subscriber.last_bounce_at = subscriber.last_warning_at = None
    subscriber.bounce_score = subscriber.warnings_sent = 0
    send(session, ctx, "bounce_enabled", subscriber.address, name=subscriber.display_name, address=subscriber.address)
    return f"{subscriber.address}: delivery on again"


def _subscriber(session: Session, ctx: ListContext, address: str, lock: bool = False) -> Subscriber | None:
    """The subscriber; with `lock`, its row locked (PostgreSQL) so that two nodes reading the
    same bounce score count it once."""
    address = address.strip().lower()  # as subscriptions.normalise keeps it
    query = select(Subscriber).where(Subscriber.list_address == ctx.mlist.address, Subscriber.address == address)
    return session.scalars(query.with_for_update() if lock else query).first()


def _days(days: float) -> str:
    return f"{days:g}"
