"""What every list action runs with: the list's settings (ListContext), and the two things
all of them may do, answer by mail (`send`, through the outbox) or refuse (`Rejected`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listbridge import addresses
from listbridge.config import ListSettings, Settings
from listbridge.models import AutoReply, Subscriber, utcnow
from listbridge.outbound import compose, outbox
from listbridge.render import render_mail


class Rejected(Exception):
    """A permanent refusal for one recipient; `reply` is the SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class ListContext:
    """The settings one action needs: the list, the address separator, retry and token rules."""

    settings: Settings
    mlist: ListSettings

    def address(self, name: str) -> str:
        return addresses.subaddress(self.mlist.address, name, self.settings.smtp.separator)

    def common(self) -> dict[str, object]:
        return {
            "subscribe_address": self.address("subscribe"),
            "unsubscribe_address": self.address("unsubscribe"),
            "help_address": self.address("help"),
            "owner_address": self.address("owner"),
            "unsubscribe_url": "",  # a subscriber's one-click link, where the mail has one
        }


@dataclass(frozen=True)
class Mail:
    """A mail rendered for the outbox (`kind`: its template's name)."""

    kind: str
    to: str
    data: bytes


def render(
    ctx: ListContext,
    template: str,
    to: str,
    *,
    sender: str | None = None,
    reply_to: str | None = None,
    auto_replied: bool = True,
    auto_submitted: str = "auto-replied",
    to_moderators: bool = False,
    unsubscribe_token: str | None = None,
    **context: object,
) -> Mail:
    """A mail template rendered for `to`, marked `Auto-Submitted` (as `auto_submitted`) unless
    `auto_replied` is false. No I/O: what renders outside a transaction stays out of its locks."""
    own = _own_unsubscribe(ctx, unsubscribe_token)
    subject, body = render_mail(ctx.mlist, template, **{**ctx.common(), **own, **context})
    extra = {"Auto-Submitted": auto_submitted} if auto_replied else {}
    data = compose.build(
        ctx.mlist,
        ctx.settings.smtp.separator,
        subject=subject,
        body=body,
        sender=sender or ctx.address("owner"),
        to=to,
        reply_to=reply_to,
        extra=extra,
        to_moderators=to_moderators,
        unsubscribe=(own["unsubscribe_address"], own["unsubscribe_url"]) if own else None,
    )
    return Mail(template, to, data)


def _own_unsubscribe(ctx: ListContext, token: str | None) -> dict[str, str]:
    """A subscriber's one-step unsubscribe address and one-click URL ("" without [web]
    base_url), for the headers and the texts; nothing without a token."""
    if not token:
        return {}
    return {
        "unsubscribe_address": ctx.address(f"unsubscribe-{token}"),
        "unsubscribe_url": ctx.settings.web.unsubscribe_url(token),
    }


def queue(session: Session, ctx: ListContext, mail: Mail) -> None:
    """Put `mail` in the outbox, leaving from its own bounce address."""
    outbox.enqueue(
        session,
        list_address=ctx.mlist.address,
        kind=mail.kind,
        envelope_from=ctx.address("owner"),
        body=mail.data,
        recipients=[mail.to],
        retry_days=ctx.settings.relay.retry_days,
        verp=True,
    )


def send(session: Session, ctx: ListContext, template: str, to: str, **options: Any) -> None:
    """Render a mail template (options as render() takes them) and put it in the outbox; to a
    subscriber of the list, with their own one-step unsubscribe headers."""
    if not options.get("to_moderators"):
        options.setdefault("unsubscribe_token", _token_of(session, ctx, to))
    queue(session, ctx, render(ctx, template, to, **options))


def _token_of(session: Session, ctx: ListContext, address: str) -> str | None:
    address = address.strip().lower()  # as subscriptions.normalise keeps it
    found = select(Subscriber.token).where(Subscriber.list_address == ctx.mlist.address, Subscriber.address == address)
    return session.scalar(found)


def within_reply_limit(session: Session, ctx: ListContext, address: str, kind: str) -> bool:
    """Record one request reply to `address`; False when its 24-hour quota is spent."""
    since = utcnow() - dt.timedelta(hours=24)
    used = session.scalar(
        select(func.count()).select_from(AutoReply).where(AutoReply.address == address, AutoReply.sent_at >= since)
    )
    if (used or 0) >= ctx.settings.subscriptions.confirm_limit:
        return False
    session.add(AutoReply(list_address=ctx.mlist.address, address=address, kind=kind))
    return True
