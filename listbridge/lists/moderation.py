"""Moderation by mail: the notice a held comment brings its moderators (the list's owner and
`moderators`), the summary past the hourly limit, the daily reminder, and what a reply to
LIST+approve-TOKEN@D or LIST+reject-TOKEN@D does.

`serve` makes the notices after intake (service.py): a held comment's row is only written as
its intake transaction commits (comments.receive), and the intake stays a parse and a store.
Everything here runs inside the caller's transaction; mail goes through the outbox.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from listbridge import addresses
from listbridge.config import ListSettings, Settings
from listbridge.db import insert_new, rowcount
from listbridge.lists import comments, commenttext
from listbridge.lists.context import ListContext, Mail, queue, render, send
from listbridge.message import Incoming
from listbridge.models import HELD, Comment, ModerationMail, ModerationToken, utcnow
from listbridge.sanitize import one_line

NOTICES_PER_HOUR = 10  # per list; past it, one summary that hour instead
REMIND_AFTER = dt.timedelta(hours=24)  # a comment held this long is in the daily reminder
REMIND_EVERY = dt.timedelta(hours=24)
REMINDER_ITEMS = 50  # comments listed in one reminder; the rest are counted
SUMMARY, REMINDER = "summary", "reminder"
REASON_CHARS = 500


def notify_held(
    session: Session, settings: Settings, now: dt.datetime | None = None, limit: int = NOTICES_PER_HOUR
) -> int:
    """Send every moderator the notice of each comment held since the last pass, oldest first;
    past `limit` notices for its list in the last hour, one summary instead. How many comments
    got a notice.

    The intake marks such comments `notice_due` (a decision clears it). Each list's notices
    are read and rendered first, then one UPDATE claims its comments: SQLite's write lock,
    which the intake needs, is held only for the writes, and of two serve nodes only one sends
    a comment's notice. Lists with nobody to tell (a removed list, an owner not set yet) keep
    theirs due, to be told once someone is."""
    now = now or utcnow()
    noticed = 0
    for mlist in settings.lists:
        if mlist.moderating:
            noticed += _notify_list(session, ListContext(settings, mlist), now, limit)
    return noticed


def _notify_list(session: Session, ctx: ListContext, now: dt.datetime, limit: int) -> int:
    address = ctx.mlist.address
    room = max(0, limit - _notices_since(session, ctx.mlist, now - dt.timedelta(hours=1)))
    due = (Comment.list_address == address, Comment.notice_due)
    held = list(
        session.scalars(select(Comment).where(*due, Comment.status == HELD).order_by(Comment.id).limit(room + 1))
    )
    if not held:
        return 0
    notices = {comment.id: _notice(ctx, comment, now) for comment in held[:room]}
    paused = len(held) > room
    # The writes, from here on. Past the limit every comment due is claimed (the summary
    # stands for them); else only those read, and one held meanwhile waits for the next pass.
    claim = update(Comment).where(*due)
    if not paused:
        claim = claim.where(Comment.id <= held[-1].id)
    claimed = session.execute(
        claim.values(notice_due=False).returning(Comment.id).execution_options(synchronize_session=False)
    ).scalars()
    noticed = 0
    for comment_id in claimed:
        if comment_id in notices:  # else another node's, or past the limit
            token, mails = notices[comment_id]
            session.add(token)
            for mail in mails:
                queue(session, ctx, mail)
            noticed += 1
    if paused:
        _summary(session, ctx, now, limit)
    return noticed


def _new_token(comment: Comment, now: dt.datetime, notified: bool) -> ModerationToken:
    """A new token for `comment`'s approve and reject addresses, not yet added."""
    return ModerationToken(
        comment_id=comment.id,
        list_address=comment.list_address,
        token=addresses.new_token(),
        created_at=now,
        notified=notified,
    )


def _token(session: Session, comment: Comment, now: dt.datetime, notified: bool) -> str:
    """A new token for `comment`'s approve and reject addresses, added to the session."""
    row = _new_token(comment, now, notified)
    session.add(row)
    return row.token


def _notices_since(session: Session, mlist: ListSettings, since: dt.datetime) -> int:
    query = select(func.count()).where(
        ModerationToken.list_address == mlist.address, ModerationToken.notified, ModerationToken.created_at >= since
    )
    return session.scalar(query) or 0


def _notice(ctx: ListContext, comment: Comment, now: dt.datetime) -> tuple[ModerationToken, list[Mail]]:
    """The notice of `comment` to each of its list's moderators, with its new token."""
    token = _new_token(comment, now, notified=True)
    approve, reject = ctx.address(f"approve-{token.token}"), ctx.address(f"reject-{token.token}")
    return token, [
        render(
            ctx,
            "held",
            to,
            reply_to=approve,
            auto_submitted="auto-generated",
            to_moderators=True,
            comment_id=comment.id,
            reason=comment.reason,
            post_title=comment.post_title or comment.post_slug or "",
            author=comment.display_name,
            address=comment.sender,
            subject=comment.subject,
            text=comment.text,
            attachments=comment.attachments,
            approve_address=approve,
            reject_address=reject,
        )
        for to in ctx.mlist.moderating
    ]


def _summary(session: Session, ctx: ListContext, now: dt.datetime, limit: int) -> None:
    """Tell the moderators once an hour that notices are paused, and how many comments wait."""
    if not _due(session, ctx.mlist, SUMMARY, now, dt.timedelta(hours=1)):
        return
    waiting = session.scalar(
        select(func.count()).where(Comment.list_address == ctx.mlist.address, Comment.status == HELD)
    )
    for to in ctx.mlist.moderating:
        send(
            session,
            ctx,
            "held_summary",
            to,
            auto_submitted="auto-generated",
            to_moderators=True,
            limit=limit,
            waiting=waiting or 0,
        )


def _due(session: Session, mlist: ListSettings, kind: str, now: dt.datetime, every: dt.timedelta) -> bool:
    """True, and recorded as sent at `now`, when the list's last `kind` mail is older than
    `every`. A conditional INSERT, then UPDATE: of two serve nodes at the same time, one wins."""
    if insert_new(session, ModerationMail, {"list_address": mlist.address, "kind": kind, "sent_at": now}):
        return True
    claimed = session.execute(
        update(ModerationMail)
        .where(
            ModerationMail.list_address == mlist.address,
            ModerationMail.kind == kind,
            ModerationMail.sent_at <= now - every,
        )
        .values(sent_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(claimed) == 1


def remind(session: Session, settings: Settings, now: dt.datetime | None = None) -> int:
    """Send each list's moderators the comments held for more than REMIND_AFTER, each with
    its approve and reject addresses, at most once per REMIND_EVERY, and nothing when none
    are. How many lists sent one."""
    now = now or utcnow()
    sent = 0
    for mlist in settings.lists:
        if not mlist.moderating:
            continue
        old = (
            Comment.list_address == mlist.address,
            Comment.status == HELD,
            Comment.received_at <= now - REMIND_AFTER,
            Comment.reason != comments.AUTOMATIC,  # held without a word, as auto-replies are
        )
        count = session.scalar(select(func.count()).where(*old)) or 0
        if not count or not _due(session, mlist, REMINDER, now, REMIND_EVERY):
            continue
        ctx = ListContext(settings, mlist)
        rows = session.execute(
            select(Comment, ModerationToken.token)
            .outerjoin(ModerationToken, ModerationToken.comment_id == Comment.id)
            .where(*old)
            .order_by(Comment.id)
            .limit(REMINDER_ITEMS)
        ).all()
        items = [_item(ctx, comment, token or _token(session, comment, now, notified=False)) for comment, token in rows]
        for to in mlist.moderating:
            send(
                session,
                ctx,
                "held_reminder",
                to,
                auto_submitted="auto-generated",
                to_moderators=True,
                items=items,
                count=count,
            )
        sent += 1
    return sent


def _item(ctx: ListContext, comment: Comment, token: str) -> dict[str, object]:
    return {
        "id": comment.id,
        "received": f"{comment.received_at:%Y-%m-%d %H:%M} UTC",
        "author": comment.display_name,
        "address": comment.sender,
        "subject": comment.subject,
        "post_title": comment.post_title or comment.post_slug or "",
        "reason": comment.reason,
        "approve_address": ctx.address(f"approve-{token}"),
        "reject_address": ctx.address(f"reject-{token}"),
    }


@dataclass(frozen=True)
class Outcome:
    """What a reply to an approve/reject address did, for the log; `ignored`: a stranger's or
    an automatic reply (logged as a warning)."""

    text: str
    ignored: bool = False


def by_mail(
    session: Session, ctx: ListContext, incoming: Incoming, envelope_from: str, action: str, token: str
) -> Outcome:
    """Approve (action addresses.APPROVE) or reject the held comment of `token` as
    `moderate approve`/`reject` would, recorded as decided by the moderator's address. Only a
    moderator (envelope sender or From) may, and never by an automatic reply (a vacation
    notice sent to the notice's Reply-To). A spent or unknown token does nothing."""
    found = session.execute(
        select(ModerationToken, Comment)
        .join(Comment, Comment.id == ModerationToken.comment_id)
        .where(ModerationToken.token == token, ModerationToken.list_address == ctx.mlist.address)
    ).first()
    if found is None:
        return Outcome("unknown token: nothing done")
    row, comment = found
    if row.used_at is not None or comment.status != HELD:
        return Outcome(f"spent token of comment {comment.id} ({comments.decided(comment)}): nothing done")
    moderator = moderator_of(ctx.mlist, envelope_from, incoming.sender)
    if moderator is None:
        return Outcome(f"not a moderator of {ctx.mlist.address}: ignored, comment {comment.id} still held", True)
    if incoming.is_automated(envelope_from, ctx.mlist.address):
        return Outcome(f"automatic reply: ignored, comment {comment.id} still held", True)
    try:
        if action == addresses.APPROVE:
            comments.approve(session, ctx, comment, moderator)
        else:
            comments.reject(session, ctx, comment, moderator, reason_from(incoming.text))
    except comments.NotHeld as exc:  # decided by someone else meanwhile
        return Outcome(f"nothing done: {exc}")
    except comments.NoPost:
        return Outcome(f"comment {comment.id} has no post: approve it with moderate approve {comment.id} --post SLUG")
    return Outcome(f"comment {comment.id} {comments.decided(comment)}")


def moderator_of(mlist: ListSettings, envelope_from: str, sender: str) -> str | None:
    """The moderator's address a reply comes from (its From first, then its envelope sender),
    or None when neither is the list's owner or one of its moderators.

    >>> from listbridge.config import build_settings
    >>> mlist = build_settings({"lists": [{"owner": "o@x.org", "moderators": ["Ann@X.org"]}]}).lists[0]
    >>> moderator_of(mlist, "<ANN@x.org>", "someone@else.org"), moderator_of(mlist, "", "eve@x.org")
    ('ann@x.org', None)
    """
    for candidate in (sender, envelope_from):
        address = candidate.strip().strip("<>").lower()
        if address and address in mlist.moderating:
            return address
    return None


def reason_from(text: str) -> str:
    """The reason a rejecting reply gives: its first line of its own, not quoted (">"), not
    empty, before any signature ("-- "); "" when there is none.

    >>> reason_from("Off topic, sorry.\\n\\nOn 2 May 2026, Carole <c@x.org> wrote:\\n> Buy now\\n")
    'Off topic, sorry.'
    >>> reason_from("> Buy now\\n\\nSpam.\\n-- \\nAnn\\n"), reason_from("> Buy now\\n-- \\nAnn\\n")
    ('Spam.', '')
    """
    for line in commenttext.clean(text).splitlines():
        if line.strip() and not line.lstrip().startswith(">"):
            return one_line(line.strip(), REASON_CHARS)
    return ""
