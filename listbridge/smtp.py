"""aiosmtpd edge: RCPT checks, size limit, DATA handed to dispatch in a thread, 250 after commit."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from . import dispatch
from .config import Settings
from .posts import Post
from .store import Database

log = logging.getLogger(__name__)

TEMPORARY_FAILURE = dispatch.Reply("451 4.3.0 Internal error, try again later")


class ListHandler:
    """aiosmtpd handler for the configured lists."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        wakeup: threading.Event | None = None,
        posts: Callable[[], dict[str, Post]] | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.posts = posts
        self.on_stored = on_stored
        self.db = db
        self.settings = settings
        self.wakeup = wakeup

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = dispatch.check_recipient(self.settings, address)
        if refusal is not None:
            return refusal.line
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        recipients = list(envelope.rcpt_tos)
        try:
            # Database work stays off the event loop.
            replies = await asyncio.to_thread(
                dispatch.accept, self.db, self.settings, raw, envelope_sender(envelope), recipients, self.posts
            )
        except Exception:
            # A bug or a broken template: keep the mail at the MTA. Not handle_exception's single
            # line: LMTP needs one reply per recipient to stay in step.
            log.exception("unexpected error while storing a message from <%s>", envelope.mail_from)
            replies = [TEMPORARY_FAILURE] * len(recipients)
        if self.wakeup is not None:
            self.wakeup.set()  # the outbox may have new mail
        if self.on_stored is not None:
            self.on_stored()  # an auto-approved comment may wait for the site
        if isinstance(server, LMTP):
            return "\r\n".join(r.line for r in replies)  # one reply per recipient
        return _one_reply(replies)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("unexpected error while receiving", exc_info=error)
        return TEMPORARY_FAILURE.line


def envelope_sender(envelope: Envelope) -> str:
    """MAIL FROM as an address; "" for the null sender, which aiosmtpd keeps as "<>"."""
    sender = (envelope.mail_from or "").strip()
    return "" if sender in ("<>", "") else sender.removeprefix("<").removesuffix(">")


def _one_reply(replies: list[dispatch.Reply]) -> str:
    """SMTP has one reply for all recipients: success if any was stored, else the worst refusal."""
    if any(r.code < 300 for r in replies):
        return dispatch.OK.line
    temporary = [r for r in replies if 400 <= r.code < 500]
    return (temporary or replies)[0].line


class _LongLinesSMTP(SMTP):
    # Real mail breaks the 1000-octet line limit; refusing it would lose comments.
    line_length_limit = 64 * 1024


class _LongLinesLMTP(LMTP):
    line_length_limit = 64 * 1024


class ListController(Controller):
    """aiosmtpd controller speaking SMTP or LMTP on [smtp] host:port."""

    def __init__(self, handler: ListHandler, settings: Settings, **kwargs: Any) -> None:
        self.lmtp = settings.smtp.lmtp
        super().__init__(
            handler,
            hostname=settings.smtp.host,
            port=settings.smtp.port,
            data_size_limit=settings.smtp.max_message_size,
            enable_SMTPUTF8=True,
            **kwargs,
        )

    def factory(self) -> SMTP:
        cls = _LongLinesLMTP if self.lmtp else _LongLinesSMTP
        return cls(self.handler, **self.SMTP_kwargs)
