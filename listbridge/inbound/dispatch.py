"""One received message -> parse, route each recipient, act, commit. Shared by SMTP, LMTP and
`deliver`; the caller answers only after this returns, so a 250 means the work is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from listbridge import addresses
from listbridge.archive.posts import Post, site_posts
from listbridge.config import Settings
from listbridge.db import Database, effects
from listbridge.failurelog import summary
from listbridge.inbound.parse import IntakeError, parse
from listbridge.inbound.timelimit import Overtime, TimeLimit
from listbridge.lists import bounces, comments, moderation
from listbridge.lists.context import ListContext, Rejected, send, within_reply_limit
from listbridge.lists.subscriptions import confirm, request, unsubscribe_with_token
from listbridge.message import Incoming
from listbridge.outbound import outbox

log = logging.getLogger(__name__)

# sysexits.h
EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 0, 65, 67, 75


@dataclass(frozen=True)
class Reply:
    """The answer for one recipient, as an SMTP reply and as a sysexits code."""

    line: str

    @property
    def code(self) -> int:
        return int(self.line[:3])

    @property
    def exit_code(self) -> int:
        if self.code < 400:
            return EX_OK
        if self.code < 500:
            return EX_TEMPFAIL
        return EX_NOUSER if self.line.startswith("550 5.1.1") else EX_DATAERR


OK = Reply("250 2.0.0 OK: stored")
TEMPORARY_FAILURE = Reply("451 4.3.0 Internal error, try again later")
UNKNOWN = Reply("550 5.1.1 No such list or address here")
# The most one message may take to parse, in the store process and in `deliver`: tens of times
# what the largest message accepted takes, so only a parser gone wrong on hostile input meets it.
PARSE_SECONDS = 5.0
# What parsing one batch may take in all. Past it, the messages not yet read wait for the next
# batch: mail sent beside slow messages is answered within seconds, not after the sum of their
# times (each under PARSE_SECONDS, so none of them refused).
BATCH_PARSE_SECONDS = 2.0
TOO_SLOW = Reply("554 5.6.0 message takes too long to read")


def route(settings: Settings, address: str) -> addresses.Recipient | None:
    """The configured list and action an envelope recipient stands for (None: not ours)."""
    return addresses.route(address, [m.address for m in settings.lists], settings.smtp.separator)


def check_recipient(settings: Settings, address: str) -> Reply | None:
    """None when `address` is one of ours, else the refusal (never an open relay)."""
    if route(settings, address) is None:
        return UNKNOWN
    return None


@dataclass(frozen=True)
class Received:
    """One message as the MTA handed it over."""

    raw: bytes
    envelope_from: str
    recipients: tuple[str, ...]
    deferred: bool = False  # left unread by an earlier batch, for want of time


@dataclass(frozen=True)
class Accepted:
    """The replies to a batch of messages (one list per message, one Reply per recipient), and
    what their committed work left for the background workers (db.MAIL_QUEUED, …)."""

    replies: list[list[Reply]]
    effects: frozenset[str] = frozenset()
    # Messages left unread for want of time in this batch (their replies are empty): the
    # caller offers them again in the next one.
    deferred: frozenset[int] = frozenset()


def accept(
    db: Database,
    settings: Settings,
    raw: bytes,
    envelope_from: str,
    recipients: Sequence[str],
    posts: Callable[[], dict[str, Post]] | None = None,
) -> list[Reply]:
    """Act on one message for each recipient; all the work is committed before returning.
    `posts` gives the site's posts (to attach comments); by default the site is scanned."""
    return accept_many(db, settings, [Received(raw, envelope_from, tuple(recipients))], posts).replies[0]


def accept_many(
    db: Database, settings: Settings, messages: Sequence[Received], posts: Callable[[], dict[str, Post]] | None = None
) -> Accepted:
    """Parse the messages (within BATCH_PARSE_SECONDS), then act on them all in one transaction
    (group commit: one fsync for all of them); if that fails, on each alone, so that one bad
    message never takes the others down with it. The replies are final only once this returns."""
    parsed = _parse_batch(messages, lambda rcpt: _is_bounce(settings, rcpt))
    replies: list[list[Reply]] = [_bounces_taken(settings, messages[i], p) for i, p in enumerate(parsed)]
    work = [(i, p, messages[i]) for i, p in enumerate(parsed) if isinstance(p, Incoming)]
    done = _commit(db, settings, work, replies, posts or (lambda: site_posts(settings)))
    return Accepted(replies, done, frozenset(i for i, p in enumerate(parsed) if p is None))


def _is_bounce(settings: Settings, rcpt: str) -> bool:
    if "bounces" not in rcpt.lower():  # every message asks: most are not bounces
        return False
    recipient = route(settings, rcpt)
    return recipient is not None and recipient.action == addresses.BOUNCES


def _bounces_taken(settings: Settings, message: Received, parsed: Incoming | list[Reply] | None) -> list[Reply]:
    """The refusals of an unreadable message, but for its bounce addresses, which take
    everything: a refused bounce would come back as a double bounce."""
    if not isinstance(parsed, list):
        return []
    return [OK if _is_bounce(settings, rcpt) else reply for rcpt, reply in zip(message.recipients, parsed, strict=True)]


def _parse_batch(
    messages: Sequence[Received], is_bounce: Callable[[str], bool] = lambda _: False
) -> list[Incoming | list[Reply] | None]:
    """Each message parsed, or its refusal; None for one left to the next batch. The smallest
    go first (hostile mail is large), within BATCH_PARSE_SECONDS; one cut short by that waits
    instead of being refused. One message always has its full PARSE_SECONDS, so that every
    batch reads at least one: the first deferred one (the oldest), read last, or else the
    smallest. No message waits for ever behind smaller ones."""
    parsed: list[Incoming | list[Reply] | None] = [None] * len(messages)
    oldest = next((i for i, message in enumerate(messages) if message.deferred), None)
    order = sorted((i for i in range(len(messages)) if i != oldest), key=lambda i: len(messages[i].raw))
    deadline = time.monotonic() + BATCH_PARSE_SECONDS
    for n, i in enumerate(order):
        full = n == 0 and oldest is None
        seconds = PARSE_SECONDS if full else min(PARSE_SECONDS, deadline - time.monotonic())
        if seconds <= 0:
            break
        parsed[i] = _parse(messages[i], seconds, is_bounce)
    if oldest is not None:
        parsed[oldest] = _parse(messages[oldest], PARSE_SECONDS, is_bounce)
    return parsed


def _commit(
    db: Database,
    settings: Settings,
    work: Sequence[Work],
    replies: list[list[Reply]],
    posts: Callable[[], dict[str, Post]],
) -> frozenset[str]:
    """Act on the parsed messages, together, else one by one; what they left for the workers."""
    if len(work) <= 1:
        return _commit_alone(db, settings, work[0], replies, posts) if work else frozenset()
    try:
        return _commit_together(db, settings, work, replies, posts)
    except Exception as exc:
        log.warning("a batch of %d messages failed (%s); storing each alone", len(work), summary(exc))
    return _commit_one_by_one(db, settings, work, replies, posts)


Work = tuple[int, Incoming, Received]  # a parsed message and its place in the batch


def _commit_together(
    db: Database,
    settings: Settings,
    work: Sequence[Work],
    replies: list[list[Reply]],
    posts: Callable[[], dict[str, Post]],
) -> frozenset[str]:
    """Act on `work` in one transaction, a second time on a new connection when the database
    dropped the first. Had the commit itself gone through, the work is done twice, as when a
    451 makes the MTA send again: stored twice, never lost."""
    try:
        return _act_on(db, settings, work, replies, posts)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("database connection lost; trying again on a new one")
        return _act_on(db, settings, work, replies, posts)


def _commit_alone(
    db: Database, settings: Settings, work: Work, replies: list[list[Reply]], posts: Callable[[], dict[str, Post]]
) -> frozenset[str]:
    """Act on one message in its own transaction; a database error defers it (451). Any other
    error is a bug, and is raised: the caller keeps the mail at the MTA."""
    i, _, message = work
    try:
        return _commit_together(db, settings, [work], replies, posts)
    except SQLAlchemyError as exc:
        log.error("database error, message from <%s> deferred: %s", message.envelope_from, summary(exc))
        replies[i] = [Reply("451 4.3.0 Temporary storage failure, try again later")] * len(message.recipients)
        return frozenset()


def _commit_one_by_one(
    db: Database,
    settings: Settings,
    work: Sequence[Work],
    replies: list[list[Reply]],
    posts: Callable[[], dict[str, Post]],
) -> frozenset[str]:
    """Act on each message in a transaction of its own, so that the culprit alone is refused."""
    done = frozenset[str]()
    for item in work:
        try:
            done |= _commit_alone(db, settings, item, replies, posts)
        except Exception:  # a bug on this message: the MTA keeps it; the others stand
            log.exception("unexpected error while storing a message from <%s>", item[2].envelope_from)
            replies[item[0]] = [TEMPORARY_FAILURE] * len(item[2].recipients)
    return done


def _parse(
    message: Received, seconds: float = PARSE_SECONDS, is_bounce: Callable[[str], bool] = lambda _: False
) -> Incoming | list[Reply] | None:
    """The message parsed, or its refusal (one per recipient) when it cannot be read, or not
    within PARSE_SECONDS: then it alone is refused, and the rest of its batch goes on. None
    when `seconds`, less than that, ran out: the batch's time, not the message, is to blame."""
    bounce = any(map(is_bounce, message.recipients))
    # A bounce address takes even what cannot be read (_bounces_taken): then it is dropped.
    outcome = "dropped" if bounce else "refused"
    try:
        with TimeLimit(seconds):
            return parse(message.raw, message.envelope_from, bounce)
    except IntakeError as exc:
        log.warning("%s unparseable message from <%s>: %s", outcome, message.envelope_from, exc)
        return [Reply(f"554 5.6.0 {exc}")] * len(message.recipients)
    except Overtime:
        if seconds < PARSE_SECONDS:
            return None
        log.warning(
            "%s a message from <%s> (%d bytes): not read within %g s",
            outcome,
            message.envelope_from,
            len(message.raw),
            PARSE_SECONDS,
        )
        return [TOO_SLOW] * len(message.recipients)


def _act_on(
    db: Database,
    settings: Settings,
    todo: Sequence[Work],
    replies: list[list[Reply]],
    posts: Callable[[], dict[str, Post]],
) -> frozenset[str]:
    """Act on the parsed messages in one transaction; fill in their replies; the effects. What
    was done is logged once it is committed, and not at all when the transaction fails."""
    with db.transaction() as session:
        said = session.info.setdefault(_SAID, [])
        for i, incoming, message in todo:
            replies[i] = _act_all(session, settings, incoming, message, posts)
        done = effects(session)
    for level, args in said:
        log.log(level, *args)
    return done


_SAID = "listbridge.said"  # session.info key: log lines waiting for the commit


def _say(session: Session, level: int, *args: object) -> None:
    """Log `args` (a format and its values) once the session's transaction commits."""
    session.info.setdefault(_SAID, []).append((level, args))


def _act_all(
    session: Session, settings: Settings, incoming: Incoming, message: Received, posts: Callable[[], dict[str, Post]]
) -> list[Reply]:
    done: dict[object, Reply] = {}  # a recipient given twice is acted on once
    out = []
    for rcpt in message.recipients:
        recipient = route(settings, rcpt)
        key = recipient or rcpt
        if key not in done:
            done[key] = _act(session, settings, incoming, message.envelope_from, rcpt, recipient, posts)
        out.append(done[key])
    return out


def _act(
    session: Session,
    settings: Settings,
    incoming: Incoming,
    envelope_from: str,
    rcpt: str,
    recipient: addresses.Recipient | None,
    posts: Callable[[], dict[str, Post]],
) -> Reply:
    mlist = settings.list_for(recipient.list_address) if recipient else None
    if recipient is None or mlist is None:
        return UNKNOWN
    ctx = ListContext(settings, mlist)
    action = recipient.action
    automated = incoming.is_automated(envelope_from, mlist.address)
    try:
        if action == addresses.POST:
            if incoming.carries_loop(mlist.address):
                _say(
                    session,
                    logging.WARNING,
                    "dropped a comment from <%s> carrying %s's own X-Loop: its own mail came back",
                    incoming.sender,
                    mlist.address,
                )
                return OK
            failures = incoming.failures
            if failures is not None and (failures.permanent or failures.temporary):
                # A DSN from an MTA that ignored the envelope: counted, for the owner if there
                # is one, never for the archive.
                for done in bounces.named(session, ctx, incoming):
                    _say(session, logging.INFO, "DSN to %s: %s", mlist.address, done)
                return _forward_to_owner(session, ctx, incoming) if mlist.owner else OK
            if mlist.status_only:  # it takes no comments: mail to it is for its owner
                return _forward_to_owner(session, ctx, incoming)
            comment = comments.receive(session, ctx, incoming, posts(), automated)
            name = comment.id if comment.id is not None else incoming.message_id or "without Message-ID"
            _say(
                session,
                logging.INFO,
                "comment %s from <%s> on %s: %s %s",
                name,
                incoming.sender,
                comment.post_slug or "no post",
                comment.status,
                comment.reason,
            )
            return OK
        if action == addresses.OWNER:
            for done in bounces.named(session, ctx, incoming):
                _say(session, logging.INFO, "DSN to the owner of %s: %s", mlist.address, done)
            return _forward_to_owner(session, ctx, incoming)
        if action == addresses.BOUNCES:
            # Taken whatever it is, never answered nor forwarded one by one.
            _say(session, logging.INFO, "%s: %s", rcpt, bounces.received(session, ctx, incoming, recipient.token))
            return OK
        if action in (addresses.APPROVE, addresses.REJECT):
            # Never answered (no backscatter): 250 whatever the token or the sender.
            outcome = moderation.by_mail(session, ctx, incoming, envelope_from, action, recipient.token)
            level = logging.WARNING if outcome.ignored else logging.INFO
            _say(
                session, level, "%s from <%s> (envelope <%s>): %s", action, incoming.sender, envelope_from, outcome.text
            )
            return OK
        if action == addresses.UNSUBSCRIBE_TOKEN:
            done = unsubscribe_with_token(session, ctx, recipient.token, goodbye=not automated)
        elif automated:
            # RFC 3834: never answer (nor act on) an automatic message; it is dropped on purpose.
            done = f"ignored automatic message to {action}"
        elif not _answerable(incoming.sender):
            return Reply("550 5.1.7 The message has no sender address to answer")
        elif action in (addresses.SUBSCRIBE, addresses.UNSUBSCRIBE):
            done = request(session, ctx, action, incoming.sender, incoming.display_name)
        elif action == addresses.CONFIRM:
            done = confirm(session, ctx, recipient.token)
        elif action == addresses.ENABLE:
            done = bounces.enable_with_token(session, ctx, recipient.token)
        elif action == addresses.HELP:
            done = "help sent"
            if within_reply_limit(session, ctx, incoming.sender.lower(), "help"):
                send(session, ctx, "help", incoming.sender)
            else:
                done = "help not sent: reply limit reached"
        else:  # pragma: no cover - route() only returns the actions above
            return UNKNOWN
    except Rejected as exc:
        _say(session, logging.INFO, "%s: %s", rcpt, exc.reply)
        return Reply(exc.reply)
    _say(session, logging.INFO, "%s from <%s>: %s", rcpt, incoming.sender, done)
    return OK


def _answerable(sender: str) -> bool:
    """True when `sender` is an address a reply can go to (From, or a bare envelope sender)."""
    try:
        addresses.split_address(sender)
    except ValueError:
        return False
    return " " not in sender


def _forward_to_owner(session: Session, ctx: ListContext, incoming: Incoming) -> Reply:
    owner = ctx.mlist.owner
    if not owner:
        return Reply("550 5.1.1 This list has no owner address")
    if incoming.carries_loop(ctx.mlist.address):
        _say(session, logging.WARNING, "dropped a looping message to the owner of %s", ctx.mlist.address)
        return OK
    # A null envelope sender: a bounce from the owner's side can never loop back here.
    outbox.enqueue(
        session,
        list_address=ctx.mlist.address,
        kind="owner",
        envelope_from="",
        body=f"X-Loop: {ctx.mlist.address}\r\n".encode() + incoming.raw,
        recipients=[owner],
        retry_days=ctx.settings.relay.retry_days,
    )
    return OK
