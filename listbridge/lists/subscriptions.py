"""Subscription rules: double opt-in, confirmation tokens, one-step unsubscribe, admin changes.

Everything here works inside the caller's transaction; mail is only enqueued in the outbox.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from listbridge import addresses
from listbridge.addresses import new_token
from listbridge.config import ListSettings, Settings
from listbridge.db import insert_new, rowcount
from listbridge.lists.context import ListContext, Rejected, send, within_reply_limit
from listbridge.models import QUEUED, Confirmation, OutboxRecipient, SpentToken, Subscriber, utcnow
from listbridge.outbound import compose, outbox


def normalise(address: str) -> str:
    """Addresses compare with the domain folded to lower case; the local part is kept as given
    except for case, which real-world mailboxes ignore."""
    local, domain = addresses.split_address(address)
    return f"{local.lower()}@{domain}"


def find_subscriber(session: Session, list_address: str, address: str) -> Subscriber | None:
    return session.scalars(
        select(Subscriber).where(Subscriber.list_address == list_address, Subscriber.address == address)
    ).first()


def request(session: Session, ctx: ListContext, action: str, address: str, name: str) -> str:
    """`+subscribe` / `+unsubscribe`: ask the sender to confirm by replying. Returns what was done."""
    address = normalise(address)
    subscribed = find_subscriber(session, ctx.mlist.address, address) is not None
    if action == addresses.SUBSCRIBE and subscribed:
        template = "already_subscribed"
    elif action == addresses.UNSUBSCRIBE and not subscribed:
        template = "not_subscribed"
    else:
        template = f"confirm_{action}"
    if not within_reply_limit(session, ctx, address, template):
        return f"{template} not sent: reply limit reached for {address}"
    if not template.startswith("confirm_"):
        send(session, ctx, template, address, name=name, address=address)
        return f"{template} sent to {address}"
    token = new_token()
    now = utcnow()
    session.add(
        Confirmation(
            token=token,
            list_address=ctx.mlist.address,
            address=address,
            display_name=name,
            action=action,
            created_at=now,
            expires_at=now + dt.timedelta(days=ctx.settings.subscriptions.confirm_days),
        )
    )
    confirm_address = ctx.address(f"confirm-{token}")
    send(
        session,
        ctx,
        template,
        address,
        sender=confirm_address,
        reply_to=confirm_address,
        name=name,
        address=address,
        confirm_address=confirm_address,
        days=int(ctx.settings.subscriptions.confirm_days),
    )
    return f"confirmation of {action} sent to {address}"


def confirm(session: Session, ctx: ListContext, token: str) -> str:
    """A reply to `+confirm-TOKEN`: carry out the pending request (single use, expiring)."""
    now = utcnow()
    pending = session.scalars(
        select(Confirmation)
        .where(Confirmation.token == token, Confirmation.list_address == ctx.mlist.address)
        .with_for_update()
    ).first()
    if pending is None or pending.used_at is not None or pending.expires_at < now:
        raise Rejected("550 5.7.1 This confirmation is unknown, already used or expired; ask again.")
    pending.used_at = now
    if pending.action == addresses.SUBSCRIBE:
        subscribe(session, ctx, pending.address, pending.display_name, welcome=True)
        return f"{pending.address} subscribed"
    if unsubscribe(session, ctx, pending.address, goodbye=True):
        return f"{pending.address} unsubscribed"
    return f"{pending.address} was not subscribed"


def unsubscribe_with_token(session: Session, ctx: ListContext, token: str, goodbye: bool) -> str:
    """`+unsubscribe-TOKEN`: one step, with the subscriber's own token."""
    subscriber = session.scalars(
        select(Subscriber).where(Subscriber.token == token, Subscriber.list_address == ctx.mlist.address)
    ).first()
    if subscriber is None:
        raise Rejected("550 5.1.1 This unsubscribe address is unknown: you are probably unsubscribed already.")
    unsubscribe(session, ctx, subscriber.address, goodbye=goodbye)
    return f"{subscriber.address} unsubscribed"


def subscribe(session: Session, ctx: ListContext, address: str, name: str = "", welcome: bool = False) -> bool:
    """Add a confirmed subscriber. False when already subscribed."""
    address = normalise(address)
    if find_subscriber(session, ctx.mlist.address, address) is not None:
        return False
    subscriber = Subscriber(
        list_address=ctx.mlist.address,
        address=address,
        domain=address.rpartition("@")[2],
        display_name=name,
        token=new_token(),
        subscribed_at=utcnow(),
    )
    session.add(subscriber)
    session.flush()
    if welcome:
        send(
            session,
            ctx,
            "welcome",
            address,
            name=name,
            address=address,
            unsubscribe_address=ctx.address(f"unsubscribe-{subscriber.token}"),
        )
    return True


def unsubscribe(session: Session, ctx: ListContext, address: str, goodbye: bool = False) -> bool:
    """Remove a subscriber. False when the address was not subscribed."""
    address = normalise(address)
    subscriber = find_subscriber(session, ctx.mlist.address, address)
    if subscriber is None:
        return False
    name = subscriber.display_name
    if not _remove(session, subscriber):
        return False  # removed meanwhile by another transaction (two clicks at once)
    if goodbye:
        send(session, ctx, "goodbye", address, name=name, address=address)
    return True


def _remove(session: Session, subscriber: Subscriber) -> bool:
    """Delete `subscriber`'s row and keep its token's digest (a one-click link used again says
    it is done); False when another transaction removed the row first."""
    if rowcount(session.execute(delete(Subscriber).where(Subscriber.id == subscriber.id))) == 0:
        return False
    spent = {"digest": token_digest(subscriber.token), "list_address": subscriber.list_address, "spent_at": utcnow()}
    insert_new(session, SpentToken, spent)
    return True


def token_digest(token: str) -> str:
    """What is kept of a spent unsubscribe token."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Link:
    """What an unsubscribe link's token stands for: a subscriber of `mlist` (SUBSCRIBED), one
    who left (LEFT), or nothing known (mlist None)."""

    state: str
    mlist: ListSettings | None = None


SUBSCRIBED, LEFT, UNKNOWN = "subscribed", "left", "unknown"


def link(session: Session, settings: Settings, token: str) -> Link:
    """The state of unsubscribe token `token`, changing nothing (a link scanner's GET)."""
    subscriber = session.scalars(select(Subscriber).where(Subscriber.token == token)).first()
    if subscriber is not None:
        mlist = settings.list_for(subscriber.list_address)
        return Link(SUBSCRIBED, mlist) if mlist else Link(UNKNOWN)
    spent = session.get(SpentToken, token_digest(token))
    mlist = settings.list_for(spent.list_address) if spent else None
    return Link(LEFT, mlist) if mlist else Link(UNKNOWN)


def unsubscribe_by_link(session: Session, settings: Settings, token: str) -> Link:
    """RFC 8058 one-click: remove the subscriber of `token` at once, with the goodbye mail.
    The link's state before (SUBSCRIBED when this removed them)."""
    found = link(session, settings, token)
    if found.state == SUBSCRIBED and found.mlist is not None:
        ctx = ListContext(settings, found.mlist)
        subscriber = session.scalars(select(Subscriber).where(Subscriber.token == token).with_for_update()).first()
        if subscriber is None or not unsubscribe(session, ctx, subscriber.address, goodbye=True):
            return Link(LEFT, found.mlist)  # another request was quicker
    return found


def forward_unsubscribe(session: Session, settings: Settings, token: str) -> Link:
    """The watcher's one-click, while home is dark: the subscriber leaves its roster now (no
    more outage notices; its digest keeps the next roster import from bringing them back),
    and home is sent LIST+unsubscribe-TOKEN@D through the external relay, which holds it
    until home answers. Home stays the one source of truth, and sends the goodbye."""
    found = link(session, settings, token)
    if found.state != SUBSCRIBED or found.mlist is None:
        return found
    ctx = ListContext(settings, found.mlist)
    # Locked, then deleted: a roster import may have replaced the row meanwhile (PostgreSQL),
    # in which case the new one, with the same token, is the one to take off.
    for _ in range(3):
        subscriber = session.scalars(select(Subscriber).where(Subscriber.token == token).with_for_update()).first()
        if subscriber is None:
            return Link(LEFT, found.mlist)  # another request was quicker
        if _remove(session, subscriber):
            break
    else:
        raise RuntimeError("the roster kept changing under the one-click unsubscribe")
    # No notice still queued for them goes out either.
    session.execute(delete(OutboxRecipient).where(OutboxRecipient.token == token, OutboxRecipient.state == QUEUED))
    home = ctx.address(f"unsubscribe-{token}")
    outbox.enqueue(
        session,
        list_address=ctx.mlist.address,
        kind="unsubscribe-home",
        envelope_from=ctx.address("owner"),
        # Not marked automatic, and no X-Loop: home answers it with the goodbye.
        body=compose.request_mail(ctx.mlist, ctx.address("owner"), home, "unsubscribe"),
        recipients=[home],
        retry_days=settings.relay.retry_days,
    )
    return found
