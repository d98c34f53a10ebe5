"""`forget ADDRESS`: a person's privacy request, inside the caller's transaction.

What goes: their subscriptions, pending confirmations and reply counts; their held and
rejected comments (never shown, so nothing stays in their place, as Mailman drops a held
message on such a request); their approved comments, each replaced by a removal note (or
deleted); and in the outbox, every row addressed to them, every mail made for them alone,
every mail of theirs forwarded to the owner, and the body of every broadcast that carried one
of their comments. A broadcast's row stays, emptied, so replies to it still find their post;
its deliveries not yet made are dropped. The site's git history keeps older pages: the README
says how to rewrite it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32, default

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from listbridge.db import rowcount
from listbridge.models import (
    APPROVED,
    HELD,
    QUEUED,
    REJECTED,
    REMOVED,
    SENDING,
    AutoReply,
    Comment,
    Confirmation,
    OutboxBounce,
    OutboxMessage,
    OutboxRecipient,
    Subscriber,
)

BROADCAST_KIND = "comment"  # comments.broadcast
OWNER_KIND = "owner"  # dispatch's forward of +owner mail
NOTICE_KINDS = ("held", "held_reminder")  # lists/moderation: they name the authors of held comments


@dataclass
class Forgotten:
    """What a forget removed; `touched` is {list: post slugs} whose pages must be rendered again."""

    subscriptions: int = 0
    held: int = 0
    rejected: int = 0
    published: int = 0
    mails: int = 0
    touched: dict[str, set[str]] = field(default_factory=dict)
    kept_as_notes: list[int] = field(default_factory=list)  # ids of the comments now removal notes


def forget(session: Session, address: str, delete_published: bool) -> Forgotten:
    """Remove every trace of `address` (lower case) that listbridge keeps, save the site's git history."""
    done = Forgotten()
    done.subscriptions = rowcount(session.execute(delete(Subscriber).where(Subscriber.address == address)))
    session.execute(delete(Confirmation).where(Confirmation.address == address))
    session.execute(delete(AutoReply).where(AutoReply.address == address))
    # Locked as read: an approval or rejection under way is waited for and then seen, and none
    # can start on these rows until forget commits.
    mine = select(Comment).where(Comment.sender == address).order_by(Comment.id).with_for_update()
    theirs = list(session.scalars(mine))
    done.mails = _erase_outbox(session, address, theirs)
    for comment in theirs:
        if comment.post_slug:  # a page may show it, or still show it until the next publish
            done.touched.setdefault(comment.list_address, set()).add(comment.post_slug)
        if comment.status == HELD:
            done.held += 1
        elif comment.status == REJECTED:
            done.rejected += 1
        elif comment.status == APPROVED:
            done.published += 1
        if comment.status != APPROVED or delete_published:
            session.delete(comment)
        else:  # keep the thread readable: a note replaces the text; nothing of the person stays
            _erase(comment)
            done.kept_as_notes.append(comment.id)
    return done


def _erase(comment: Comment) -> None:
    comment.status, comment.text, comment.display_name, comment.sender, comment.subject = REMOVED, "", "", "", ""
    comment.raw, comment.message_id, comment.in_reply_to, comment.reason = b"", "", "", ""
    comment.published = False  # until the commit that shows the note exists


def _erase_outbox(session: Session, address: str, comments: list[Comment]) -> int:
    """Drop or empty every stored mail that names `address` or carries its comments; how many."""
    to_them = set(session.scalars(select(OutboxRecipient.message_id).where(OutboxRecipient.address == address)))
    _delete_recipients(session, OutboxRecipient.address == address)
    emptied = [m for m in to_them if not _has_recipients(session, m) and not _is_fanout(session, m)]
    gone = set(emptied) | set(_owner_forwards_from(session, address)) | set(_notices_naming(session, address))
    for message_id in gone:
        _delete_recipients(session, OutboxRecipient.message_id == message_id)
        session.execute(delete(OutboxMessage).where(OutboxMessage.id == message_id))
    broadcasts = _broadcasts_of(session, comments)
    for message in broadcasts:
        message.body = b""
        # Not yet delivered: dropped. A row `sending` (SQLite) goes too, or a crash would queue
        # it again with the emptied body; its worker holds the body already and finishes.
        _delete_recipients(
            session, OutboxRecipient.message_id == message.id, OutboxRecipient.state.in_((QUEUED, SENDING))
        )
    return len(gone) + len(broadcasts)


def _delete_recipients(session: Session, *where: ColumnElement[bool]) -> None:
    """Delete outbox rows, and the bounces counted for them (no foreign key does it)."""
    session.execute(delete(OutboxBounce).where(OutboxBounce.recipient_id.in_(select(OutboxRecipient.id).where(*where))))
    session.execute(delete(OutboxRecipient).where(*where))


def _has_recipients(session: Session, message_id: int) -> bool:
    count = session.scalar(
        select(func.count()).select_from(OutboxRecipient).where(OutboxRecipient.message_id == message_id)
    )
    return bool(count)


def _is_fanout(session: Session, message_id: int) -> bool:
    return bool(session.scalar(select(OutboxMessage.fanout).where(OutboxMessage.id == message_id)))


def _owner_forwards_from(session: Session, address: str) -> list[int]:
    """Mail of `address` to the list owner, stored whole with its headers."""
    rows = session.execute(select(OutboxMessage.id, OutboxMessage.body).where(OutboxMessage.kind == OWNER_KIND)).all()
    return [i for i, body in rows if _sent_by(BytesHeaderParser(policy=compat32).parsebytes(body), address)]


def _notices_naming(session: Session, address: str) -> list[int]:
    """The moderators' notices and reminders whose text names `address` (an author shown)."""
    pattern = re.compile(rf"(?<![\w.+-]){re.escape(address)}(?![\w.-])", re.I)
    rows = session.execute(
        select(OutboxMessage.id, OutboxMessage.body).where(OutboxMessage.kind.in_(NOTICE_KINDS))
    ).all()
    return [i for i, body in rows if body and pattern.search(_text_of(body))]


def _text_of(body: bytes) -> str:
    part = BytesParser(policy=default).parsebytes(body).get_body(preferencelist=("plain",))
    content = part.get_content() if part is not None else ""
    return content if isinstance(content, str) else ""


def _sent_by(headers: Message, address: str) -> bool:
    """True when From, Sender or Reply-To names `address`. A plain search of the raw values,
    not an address parser: these headers came from outside and may be crafted to break one."""
    pattern = re.compile(rf"(?<![\w.+-]){re.escape(address)}(?![\w.-])", re.I)
    return any(pattern.search(str(v)) for name in ("From", "Sender", "Reply-To") for v in headers.get_all(name, []))


def _broadcasts_of(session: Session, comments: list[Comment]) -> list[OutboxMessage]:
    """The list mails that carried one of `comments`: same list and post, sent after it came,
    with its author's name or address in From and its text in the body."""
    found: dict[int, OutboxMessage] = {}
    for comment in comments:
        if not comment.post_slug or not comment.text.strip():
            continue
        candidates = session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.kind == BROADCAST_KIND,
                OutboxMessage.list_address == comment.list_address,
                OutboxMessage.post_slug == comment.post_slug,
                OutboxMessage.created_at >= comment.received_at,
            )
        )
        for message in candidates:
            if message.id not in found and message.body and _carries(message.body, comment):
                found[message.id] = message
    return list(found.values())


def _carries(body: bytes, comment: Comment) -> bool:
    """True when the stored broadcast `body` is the one made from `comment`: From is its author
    (`Name via list`, or their own address with keep_from) and the text is in the body."""
    mail = BytesParser(policy=default).parsebytes(body)
    header = mail["From"]
    authors = header.addresses if header is not None else ()
    named = f"{comment.display_name or comment.sender.partition('@')[0]} via "
    if not any(a.addr_spec.lower() == comment.sender or a.display_name.startswith(named) for a in authors):
        return False
    part = mail.get_body(preferencelist=("plain",))
    return part is not None and comment.text.strip() in part.get_content()
