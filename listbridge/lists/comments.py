"""Comments: attach to a post, apply the list's moderation policy, approve, reject, broadcast.

Works inside the caller's transaction; pages are rendered later by publish.py, mail goes
through the outbox.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from listbridge.addresses import new_token
from listbridge.archive import pages
from listbridge.archive.posts import Post, find_post
from listbridge.db import COMMENT_HELD, SITE_CHANGED, FastInsert, note_effect, rowcount
from listbridge.lists import authresults, commenttext
from listbridge.lists.context import ListContext, send
from listbridge.message import Incoming
from listbridge.models import (
    APPROVED,
    HELD,
    REJECTED,
    Comment,
    ModerationEvent,
    ModerationToken,
    OutboxMessage,
    utcnow,
)
from listbridge.outbound import compose, outbox
from listbridge.render import render_mail

NO_POST = "no matching post"


@dataclass(frozen=True)
class Decision:
    status: str
    reason: str = ""


def matches(sender: str, patterns: tuple[str, ...]) -> bool:
    """`sender` is one of `patterns`: a whole address, or `@domain` (subdomains included)."""
    sender = sender.lower()
    domain = sender.rpartition("@")[2]
    for pattern in patterns:
        if pattern.startswith("@"):
            if domain == pattern[1:] or domain.endswith("." + pattern[1:]):
                return True
        elif sender == pattern:
            return True
    return False


AUTOMATIC = "automatic message"  # held so, a comment brings no notice: that would be the flood


def decide(
    *,
    policy: str,
    sender: str,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    known_sender: bool,
    authenticated: bool,
    automated: bool,
    too_long: bool,
    attached: bool,
) -> Decision:
    """The moderation policy, as a pure function. Nothing passes on a From header alone:
    the allow list and `first-post` both need a DKIM/DMARC pass seen by our own MTA."""
    if matches(sender, deny):
        return Decision(REJECTED, "sender is on the deny list")
    if automated:
        return Decision(HELD, AUTOMATIC)
    if too_long:
        return Decision(HELD, "too long")
    if not attached:
        return Decision(HELD, NO_POST)
    if policy == "none":
        return Decision(APPROVED)
    if policy == "first-post" or matches(sender, allow):
        if not authenticated:
            return Decision(HELD, "sender not authenticated (no DKIM/DMARC pass)")
        if known_sender or matches(sender, allow):
            return Decision(APPROVED)
        return Decision(HELD, "first post")
    return Decision(HELD, "every comment is moderated")


def attach(session: Session, ctx: ListContext, incoming: Incoming, posts: dict[str, Post]) -> Post | None:
    """The post a comment belongs to: a reply to one of our broadcasts stays on its post;
    otherwise the subject is matched against the site's posts."""
    ids = [i for i in (incoming.in_reply_to, *incoming.references) if i]
    if ids:
        threaded = session.execute(
            select(OutboxMessage.post_slug)
            .where(OutboxMessage.header_message_id.in_(ids), OutboxMessage.post_slug.is_not(None))
            .order_by(OutboxMessage.id.desc())
            .limit(1)
        ).scalar()
        if threaded:
            post = next((p for p in posts.values() if p.slug == threaded), None)
            if post is not None:
                return post
            known = session.execute(
                select(Comment.post_title, Comment.post_path).where(Comment.post_slug == threaded).limit(1)
            ).first()
            return Post(threaded, known[0] if known else threaded, known[1] if known else "", None)
    return find_post(posts, incoming.subject)


@dataclass(frozen=True)
class Stored:
    """What became of a received comment."""

    id: int | None  # None for a held comment: written as the transaction commits
    status: str
    reason: str
    post_slug: str | None


_INSERT_COMMENT = FastInsert(
    Comment.__table__,
    (
        "list_address",
        "sender",
        "display_name",
        "subject",
        "message_id",
        "in_reply_to",
        "auto_submitted",
        "received_at",
        "status",
        "reason",
        "post_slug",
        "post_title",
        "post_path",
        "text",
        "attachments",
        "published",
        "raw",
        "decided_by",
        "notice_due",
    ),
)


def receive(session: Session, ctx: ListContext, incoming: Incoming, posts: dict[str, Post], automated: bool) -> Stored:
    """Store a comment sent to the bare list address, held or approved per the list's policy."""
    mlist = ctx.mlist
    post = attach(session, ctx, incoming, posts)
    text = commenttext.clean(incoming.text)
    sender = incoming.sender.lower()
    authenticated = authresults.passes(incoming.authentication_results, mlist.authserv_id, incoming.sender)
    # Only first-post asks whether the sender is known, and only an authenticated one.
    known = (
        mlist.moderation == "first-post"
        and authenticated
        and bool(sender)
        and bool(
            session.scalar(
                select(
                    exists().where(
                        Comment.list_address == mlist.address, Comment.sender == sender, Comment.status == APPROVED
                    )
                )
            )
        )
    )
    decision = decide(
        policy=mlist.moderation,
        sender=incoming.sender,
        allow=mlist.allow,
        deny=mlist.deny,
        known_sender=known,
        authenticated=authenticated,
        automated=automated,
        too_long=len(text) > mlist.max_comment_chars,
        attached=post is not None,
    )
    row = dict(
        list_address=mlist.address,
        sender=sender,
        display_name=incoming.display_name,
        subject=incoming.subject,
        message_id=incoming.message_id,
        in_reply_to=incoming.in_reply_to,
        auto_submitted=automated,
        received_at=utcnow(),
        status=HELD,
        reason=decision.reason,
        post_slug=post.slug if post else None,
        post_title=post.title if post else "",
        post_path=post.path if post else "",
        text=text,
        attachments=incoming.attachments,
        published=True,
        raw=incoming.raw,
        decided_by="",
        notice_due=decision.status == HELD and decision.reason != AUTOMATIC,
    )
    if decision.status == HELD:  # the hot path: nothing reads it back before the commit
        _INSERT_COMMENT.stage(session, row)
        if row["notice_due"]:
            note_effect(session, COMMENT_HELD)
        return Stored(None, decision.status, decision.reason, post.slug if post else None)
    comment_id = _INSERT_COMMENT.insert(session, row)
    comment = session.get(Comment, comment_id)
    assert comment is not None
    if decision.status == APPROVED:
        approve(session, ctx, comment, actor="policy")
    else:
        reject(session, ctx, comment, "policy", decision.reason)
    return Stored(comment_id, decision.status, decision.reason, post.slug if post else None)


def actor() -> str:
    """Who runs the command, for the moderation log."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class NoPost(ValueError):
    """A held comment matched no post, and the moderator gave none: it cannot be published."""

    def __init__(self, comment_id: int) -> None:
        super().__init__(f"comment {comment_id} is not attached to a post")


class NotHeld(ValueError):
    """Someone else decided on the comment first, or it is in a state the action does not take."""

    def __init__(self, comment: Comment) -> None:
        self.comment_id, self.status = comment.id, comment.status  # the row is expired by the rollback
        super().__init__(f"comment {comment.id} is no longer held: {decided(comment)}")


def decided(comment: Comment) -> str:
    """Its state and who set it when: `approved by alice at 2026-12-02 08:01 UTC`."""
    who = f" by {comment.decided_by}" if comment.decided_by else ""
    when = f" at {comment.decided_at:%Y-%m-%d %H:%M} UTC" if comment.decided_at else ""
    return f"{comment.status}{who}{when}"


def _transition(session: Session, comment: Comment, source: str, values: dict[str, object]) -> bool:
    """Move the comment from `source` to `values` in one conditional UPDATE, so that of two
    moderators acting at once only one changes it (the row lock, or SQLite's write lock, orders
    them; the second finds no row in `source`). False, with the comment reloaded, if it was
    not in `source`."""
    values = {**values, "notice_due": False}  # decided: no notice to make any more
    result = session.execute(
        update(Comment)
        .where(Comment.id == comment.id, Comment.status == source)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if rowcount(result) != 1:
        session.refresh(comment)
        return False
    for key, value in values.items():
        set_committed_value(comment, key, value)
    return True


def _spend_token(session: Session, comment: Comment, actor: str) -> None:
    """Kill the comment's notice token (approve/reject by mail), decided now by `actor`. A
    comment decided by the policy at intake was never held, so has none (no query then)."""
    if actor != "policy":
        session.execute(
            update(ModerationToken)
            .where(ModerationToken.comment_id == comment.id, ModerationToken.used_at.is_(None))
            .values(used_at=comment.decided_at)
            .execution_options(synchronize_session=False)
        )


def approve(session: Session, ctx: ListContext, comment: Comment, actor: str, post: Post | None = None) -> bool:
    """Publish (on the next render) and broadcast a held comment, once whatever the concurrency.
    False if it was approved already (nothing done); NotHeld if it was decided otherwise;
    NoPost when it has none."""
    target = post.slug if post is not None else comment.post_slug
    if not target and comment.status == HELD:
        raise NoPost(comment.id)
    values: dict[str, object] = {"status": APPROVED, "decided_at": utcnow(), "decided_by": actor, "published": False}
    if post is not None:
        values.update(post_slug=post.slug, post_title=post.title, post_path=post.path)
    if not _transition(session, comment, HELD, values):
        if comment.status == APPROVED:
            return False
        raise NotHeld(comment)
    session.add(
        ModerationEvent(
            comment_id=comment.id,
            action=APPROVED,
            actor=actor,
            at=comment.decided_at,
            detail=f"post {comment.post_slug}",
        )
    )
    _spend_token(session, comment, actor)
    note_effect(session, SITE_CHANGED)
    broadcast(session, ctx, comment)
    return True


@dataclass(frozen=True)
class Rejection:
    changed: bool  # False: it was rejected already, nothing done
    told: bool  # its author was sent the "rejected" notice


def reject(
    session: Session,
    ctx: ListContext,
    comment: Comment,
    actor: str,
    reason: str = "",
    notify: bool = False,
    unpublish: bool = False,
) -> Rejection:
    """Reject a held comment (with `unpublish`, an approved one too: its page drops it), once
    whatever the concurrency; with `notify`, tell its author (never an automatic message).
    NotHeld if it was decided otherwise."""
    values: dict[str, object] = {"status": REJECTED, "decided_at": utcnow(), "decided_by": actor}
    if reason:
        values["reason"] = reason
    if _transition(session, comment, HELD, values):
        pass
    elif (
        unpublish
        and comment.status == APPROVED
        and _transition(session, comment, APPROVED, {**values, "published": False})
    ):
        note_effect(session, SITE_CHANGED)
    elif comment.status == REJECTED:
        return Rejection(changed=False, told=False)
    else:
        raise NotHeld(comment)
    _spend_token(session, comment, actor)
    session.add(
        ModerationEvent(comment_id=comment.id, action=REJECTED, actor=actor, at=comment.decided_at, detail=reason)
    )
    if notify and comment.sender and not comment.auto_submitted:
        send(
            session, ctx, "rejected", comment.sender, name=comment.display_name, subject=comment.subject, reason=reason
        )
        return Rejection(changed=True, told=True)
    return Rejection(changed=True, told=False)


def broadcast(session: Session, ctx: ListContext, comment: Comment) -> None:
    """Put an approved comment in the outbox for every subscriber, threaded by post."""
    mlist, settings = ctx.mlist, ctx.settings
    placeholder = new_token()  # stands for each recipient's token: nobody can write it in a comment
    page_url = pages.page_url(mlist, settings.site, comment.post_slug or "")
    subject, body = render_mail(
        mlist,
        "comment",
        **{
            **ctx.common(),
            # Each recipient's own link, put in by the delivery worker (personalised mail only).
            "unsubscribe_url": settings.web.unsubscribe_url(placeholder) if settings.relay.personalize else "",
        },
        post_title=comment.post_title or comment.post_slug,
        text=comment.text,
        author=comment.display_name,
        attachments=comment.attachments,
        page_url=page_url,
    )
    root = compose.thread_root(mlist, comment.post_slug or "")
    message_id = compose.new_message_id(mlist.domain)
    if mlist.keep_from and comment.sender:
        sender, name = comment.sender, comment.display_name
    else:  # DMARC-safe: the list's own address, the author's name
        sender, name = mlist.address, f"{comment.display_name or comment.sender.partition('@')[0]} via {mlist.title}"
    data = compose.build(
        mlist,
        settings.smtp.separator,
        subject=subject,
        body=body,
        sender=sender,
        sender_name=name,
        reply_to=mlist.address,
        message_id=message_id,
        extra={"In-Reply-To": root, "References": root},
    )
    message, _ = outbox.enqueue_fanout(
        session,
        list_address=mlist.address,
        kind="comment",
        envelope_from=ctx.address("owner"),
        body=data,
        retry_days=settings.relay.retry_days,
        verp=True,
    )
    message.header_message_id = message_id
    message.post_slug = comment.post_slug
    message.token_placeholder = placeholder
