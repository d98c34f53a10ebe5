"""SQLAlchemy 2.0 typed models. The schema itself is built by the alembic migrations.

Times are naive UTC everywhere, so SQLite and PostgreSQL behave the same.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer(), "sqlite")

# Comment states.
HELD = "held"
APPROVED = "approved"
REJECTED = "rejected"
REMOVED = "removed"

# Outbox recipient states.
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"


def utcnow() -> dt.datetime:
    """The current time as naive UTC (the convention of every column here)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    if TYPE_CHECKING:
        # Each model maps a Table of its own (declarative allows any FromClause).
        __table__: ClassVar[Table]


class Subscriber(Base):
    """A confirmed subscription of one address to one list."""

    __tablename__ = "subscribers"
    __table_args__ = (UniqueConstraint("list_address", "address", name="uq_subscribers_list_address"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    list_address: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(320))
    domain: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    # The subscriber's own secret, used in List-Unsubscribe (bla+unsubscribe-TOKEN@D).
    token: Mapped[str] = mapped_column(String(64), unique=True)
    subscribed_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    # Bounces (lists/bounces.py): the score, counted at most once a day, and when delivery
    # was turned off at the threshold (None: on), with the warnings sent since.
    bounce_score: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_bounce_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    warnings_sent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_warning_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)


class SpentToken(Base):
    """The unsubscribe token of a subscriber who left, as a SHA-256 digest (no address): a
    one-click link used again says "done" instead of "unknown" (web/unsubscribe.py)."""

    __tablename__ = "spent_tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    list_address: Mapped[str] = mapped_column(String(320))
    spent_at: Mapped[dt.datetime] = mapped_column(DateTime())


class Confirmation(Base):
    """A pending subscribe or unsubscribe, waiting for a reply to bla+confirm-TOKEN@D."""

    __tablename__ = "confirmations"
    __table_args__ = (Index("ix_confirmations_address_created", "address", "created_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    list_address: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    action: Mapped[str] = mapped_column(String(16))  # subscribe | unsubscribe
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)


class Comment(Base):
    """Mail to the bare list address: kept whole, attached to a post, moderated, published."""

    __tablename__ = "comments"
    __table_args__ = (
        Index("ix_comments_status", "status"),
        Index("ix_comments_post", "list_address", "post_slug", "status"),
        Index("ix_comments_sender", "sender"),
        Index("ix_comments_unpublished", "published"),
        Index("ix_comments_feed", "list_address", "status", "received_at", "id"),
        # Small: only the comments whose moderators' notice is yet to be made (moderation.py).
        Index(
            "ix_comments_notice_due",
            "list_address",
            sqlite_where=text("notice_due = 1"),
            postgresql_where=text("notice_due"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    list_address: Mapped[str] = mapped_column(String(320))
    sender: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    in_reply_to: Mapped[str] = mapped_column(String(998), default="")
    auto_submitted: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=HELD)  # held | approved | rejected | removed
    reason: Mapped[str] = mapped_column(Text, default="")
    # The post it belongs to: None until attached (by threading, subject, or the moderator).
    post_slug: Mapped[str | None] = mapped_column(String(255), nullable=True)
    post_title: Mapped[str] = mapped_column(Text, default="", server_default="")
    post_path: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    text: Mapped[str] = mapped_column(Text, default="", server_default="")  # cleaned, as it will be published
    attachments: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    decided_by: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # False while the site repo does not show the comment's current state yet.
    published: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Held for a reason that brings its moderators a notice, which is not made yet.
    notice_due: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class ModerationEvent(Base):
    """Who did what to which comment, and when."""

    __tablename__ = "moderation_events"
    __table_args__ = (Index("ix_moderation_events_comment", "comment_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    comment_id: Mapped[int | None] = mapped_column(Id, nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    detail: Mapped[str] = mapped_column(Text, default="")


class ModerationToken(Base):
    """The secret of one held comment's addresses, LIST+approve-TOKEN@D and LIST+reject-TOKEN@D,
    made when a notice (`notified`) or a daily reminder first names them: a comment held past
    the hourly limit of notices has none until then. It works only while the comment is held
    and `used_at` is empty: comments.approve and reject set it, so any decision (CLI or mail)
    kills it."""

    __tablename__ = "moderation_tokens"

    comment_id: Mapped[int] = mapped_column(Id, ForeignKey("comments.id", ondelete="CASCADE"), primary_key=True)
    list_address: Mapped[str] = mapped_column(String(320))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow, index=True)
    notified: Mapped[bool] = mapped_column(Boolean, default=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)


class ModerationMail(Base):
    """When each list last sent the moderators a mail of one kind (the hourly summary past the
    notice limit, the daily reminder), so that a restart neither repeats nor forgets them."""

    __tablename__ = "moderation_mails"

    list_address: Mapped[str] = mapped_column(String(320), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[dt.datetime] = mapped_column(DateTime())


class OutboxMessage(Base):
    """One outgoing message, stored once whatever the number of recipients."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    list_address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))
    envelope_from: Mapped[str] = mapped_column(String(320))
    # A list mail: To and List-Unsubscribe are added at send time (per recipient, or batched).
    fanout: Mapped[bool] = mapped_column(Boolean, default=False)
    # Sent from LIST+bounces-TOKEN@D, TOKEN naming the recipient row (outbound/verp.py), so
    # that a bounce says whose address failed; envelope_from is then unused.
    verp: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    # Temporary failures are retried until then.
    give_up_at: Mapped[dt.datetime] = mapped_column(DateTime())
    # Our Message-ID header, and the post a broadcast belongs to: replies thread back to it.
    header_message_id: Mapped[str] = mapped_column(String(998), default="", server_default="", index=True)
    post_slug: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # A list mail's stand-in for each recipient's unsubscribe token in its body (compose.py):
    # random, so that no commenter can write it and collect the recipients' tokens.
    token_placeholder: Mapped[str] = mapped_column(String(64), default="", server_default="")


class OutboxRecipient(Base):
    """Delivery state of one message to one recipient."""

    __tablename__ = "outbox_recipients"
    __table_args__ = (
        Index("ix_outbox_recipients_due", "state", "next_attempt_at"),
        Index("ix_outbox_recipients_message", "message_id", "state"),
        # A DSN names an address (lists/bounces.py), and privacy.forget deletes by address.
        Index("ix_outbox_recipients_address", "address"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("outbox_messages.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    domain: Mapped[str] = mapped_column(String(255))
    token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    done_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class OutboxBounce(Base):
    """The first bounce counted for one delivered mail (lists/bounces.py): a second, or the
    same one sent again, counts for nothing. No foreign key: checking one would wait for the
    delivery worker's lock on the row, and the intake must not wait on an SMTP session."""

    __tablename__ = "outbox_bounces"

    recipient_id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    bounced_at: Mapped[dt.datetime] = mapped_column(DateTime())


class AutoReply(Base):
    """Every reply sent on a request (confirmation, help, notice), to rate-limit them per address."""

    __tablename__ = "auto_replies"
    __table_args__ = (Index("ix_auto_replies_address_sent", "address", "sent_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    list_address: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))
    sent_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)


# Incident statuses (as on Statuspage).
INVESTIGATING = "investigating"
IDENTIFIED = "identified"
MONITORING = "monitoring"
RESOLVED = "resolved"
INCIDENT_STATUSES = (INVESTIGATING, IDENTIFIED, MONITORING, RESOLVED)
# A planned maintenance: announced (scheduled), then under way (maintenance) in its window.
SCHEDULED = "scheduled"
MAINTENANCE = "maintenance"


class Incident(Base):
    """An outage: what broke, its status, when it should be back."""

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_status", "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    nature: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=INVESTIGATING)
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)  # opened by the MX watcher
    eta: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    # A planned maintenance's window (UTC); none for an outage.
    planned_start: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    planned_end: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)


class IncidentUpdate(Base):
    """One change of an incident; each one is announced once."""

    __tablename__ = "incident_updates"
    __table_args__ = (Index("ix_incident_updates_incident", "incident_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # opened | updated | resolved
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    eta: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(255), default="")


class ChannelPost(Base):
    """One outage event (an incident update) to post to one channel (an apprise URL, known by
    its digest, never stored: it may hold a token), with its retries, as the outbox does mail:
    a restart neither posts twice nor forgets (outage/channels.py)."""

    __tablename__ = "channel_posts"
    __table_args__ = (
        UniqueConstraint("update_id", "channel", name="uq_channel_posts_update_channel"),
        Index("ix_channel_posts_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    update_id: Mapped[int] = mapped_column(ForeignKey("incident_updates.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(255))  # scheme://host, for `outage status`
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # What the channel made of it, where later posts refer to it: the forum topic's id.
    remote_id: Mapped[str] = mapped_column(String(64), default="", server_default="")


class ProbeStatus(Base):
    """The watcher's view of the MX (one row), kept so a restart neither repeats nor forgets."""

    __tablename__ = "probe_status"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(8), default="up")
    failures: Mapped[int] = mapped_column(Integer, default=0)
    successes: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[dt.datetime | None] = mapped_column(DateTime(), nullable=True)
    last_ok: Mapped[bool] = mapped_column(Boolean, default=True)
    last_detail: Mapped[str] = mapped_column(Text, default="")


class RosterImport(Base):
    """Each roster snapshot read by the watcher; the export time is the home's heartbeat."""

    __tablename__ = "roster_imports"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    exported_at: Mapped[dt.datetime] = mapped_column(DateTime())
    imported_at: Mapped[dt.datetime] = mapped_column(DateTime(), default=utcnow)
    subscribers: Mapped[int] = mapped_column(Integer, default=0)


class PostSummary(Base):
    """One post with published comments: its summary and its rendered line of the index page,
    kept up to date on each publish so that an approval does not re-read the whole archive."""

    __tablename__ = "post_summaries"
    __table_args__ = (Index("ix_post_summaries_order", "list_address", "last", "post_slug"),)

    list_address: Mapped[str] = mapped_column(String(320), primary_key=True)
    post_slug: Mapped[str] = mapped_column(String(255), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(String(1000))
    last: Mapped[dt.datetime] = mapped_column(DateTime())  # newest shown comment
    count: Mapped[int] = mapped_column(Integer)
    line: Mapped[str] = mapped_column(Text)  # the post's line on index.gmi


class Secret(Base):
    """A key made once per database: "verp" signs the bounce addresses' tokens."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
