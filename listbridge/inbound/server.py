"""aiosmtpd edge: RCPT checks, size limit, DATA handed to the store process, 250 after commit."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from listbridge.config import Settings
from listbridge.db import COMMENT_HELD, MAIL_QUEUED, SITE_CHANGED
from listbridge.inbound import dispatch
from listbridge.inbound.smtpdata import DataAssembler, read_data

log = logging.getLogger(__name__)

DATA_TOO_SLOW = "421 4.4.2 DATA took too long, closing the connection"


class ListHandler:
    """aiosmtpd handler for the configured lists. `store` acts on a batch of received messages
    and commits it, off the event loop (StoreProcess.accept_many)."""

    def __init__(
        self,
        settings: Settings,
        store: Callable[[list[dispatch.Received]], Awaitable[dispatch.Accepted]],
        wakeup: threading.Event | None = None,
        on_stored: Callable[[], None] | None = None,
        on_held: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.wakeup = wakeup
        self.on_stored = on_stored
        self.on_held = on_held
        self._group: GroupCommitter | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = dispatch.check_recipient(self.settings, address)
        if refusal is not None:
            return refusal.line
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipients = list(envelope.rcpt_tos)
        received = dispatch.Received(envelope.original_content or b"", envelope_sender(envelope), tuple(recipients))
        try:
            replies = await self._committer().submit(received)
        except Exception:
            # A bug or a broken template: keep the mail at the MTA. Not handle_exception's single
            # line: LMTP needs one reply per recipient to stay in step.
            log.exception("unexpected error while storing a message from <%s>", envelope.mail_from)
            replies = [dispatch.TEMPORARY_FAILURE] * len(recipients)
        if isinstance(server, LMTP):
            return "\r\n".join(r.line for r in replies)  # one reply per recipient
        return _one_reply(replies)

    def _committer(self) -> GroupCommitter:
        if self._group is None:
            self._group = GroupCommitter(self.store, self._wake)
        return self._group

    def _wake(self, effects: frozenset[str]) -> None:
        """Wake the workers that have new work, once the batch that made it is committed."""
        if MAIL_QUEUED in effects and self.wakeup is not None:
            self.wakeup.set()
        if SITE_CHANGED in effects and self.on_stored is not None:
            self.on_stored()  # an auto-approved comment waits for the site
        if COMMENT_HELD in effects and self.on_held is not None:
            self.on_held()  # its moderators are due a notice

    async def handle_exception(self, error: Exception) -> str:
        log.exception("unexpected error while receiving", exc_info=error)
        return dispatch.TEMPORARY_FAILURE.line


class GroupCommitter:
    """Messages arriving while a commit is under way wait and go together in the next one:
    one transaction and one fsync for all, each still answered only after that commit.
    `accept_many` does the database work off the event loop (in the store process)."""

    MAX_BATCH = 64

    def __init__(
        self,
        accept_many: Callable[[list[dispatch.Received]], Awaitable[dispatch.Accepted]],
        on_effects: Callable[[frozenset[str]], None],
    ) -> None:
        self.accept_many = accept_many
        self.on_effects = on_effects
        self.queue: asyncio.Queue[tuple[dispatch.Received, asyncio.Future[list[dispatch.Reply]]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, received: dispatch.Received) -> list[dispatch.Reply]:
        future: asyncio.Future[list[dispatch.Reply]] = asyncio.get_running_loop().create_future()
        await self.queue.put((received, future))
        return await future

    async def _run(self) -> None:
        waiting: list[tuple[dispatch.Received, asyncio.Future[list[dispatch.Reply]]]] = []
        while True:
            batch = waiting or [await self.queue.get()]  # what the last batch left unread first
            while len(batch) < self.MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                accepted = await self.accept_many([item for item, _ in batch])
            except Exception as exc:
                waiting = []
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if accepted.effects:
                self.on_effects(accepted.effects)
            answers = accepted.replies
            if not _in_step(batch, accepted):  # a bug: nobody may be left waiting for a reply
                log.error("the store's replies do not match its batch of %d; all of it gets 451", len(batch))
                answers = [[dispatch.TEMPORARY_FAILURE] * len(item.recipients) for item, _ in batch]
                accepted = dispatch.Accepted(answers)
            waiting = [
                (dataclasses.replace(item, deferred=True), future)
                for item, future in (batch[i] for i in sorted(accepted.deferred))
                if not future.done()
            ]
            for i, ((_, future), replies) in enumerate(zip(batch, answers, strict=True)):
                if i not in accepted.deferred and not future.done():
                    future.set_result(replies)


def _in_step(batch: Sequence[tuple[dispatch.Received, object]], accepted: dispatch.Accepted) -> bool:
    """True when there is one list of replies per message, one reply per recipient of each
    message read, and at least one message read (else the batch would come back for ever)."""
    replies, deferred = accepted.replies, accepted.deferred
    return (
        len(replies) == len(batch)
        and len(deferred) < len(batch)
        and all(
            i in deferred or len(answer) == len(item.recipients)
            for i, ((item, _), answer) in enumerate(zip(batch, replies, strict=True))
        )
        and all(0 <= i < len(batch) for i in deferred)
    )


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


# RFC 5321 path in its everyday form, <dot-atom@dot-atom>: nothing quoted, no comment, ASCII.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(.*)", re.DOTALL)


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, rest of the argument) for a MAIL FROM or RCPT TO argument of the everyday
    form, exactly as aiosmtpd's own parser reads it; None for anything else (quoted local part,
    comments, null path, non-ASCII), which is left to that parser."""
    match = _PLAIN_PATH.match(arg)
    if match is None:
        return None
    rest = match.group(2).lstrip()
    if rest.startswith("("):  # a comment after the path: the full parser drops it
        return None
    return match.group(1), rest


class _PlainPathsFirst(SMTP):
    """aiosmtpd parses every MAIL FROM and RCPT TO path with the email package's RFC 5322
    parser, which defines a class on each call. The everyday path takes a regular expression;
    anything else still goes to that parser, and what that parser trips over (IndexError on
    `<a@`, AttributeError…) is a malformed address (553), not an internal error that would
    tell the client to try again."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_path(arg)
        if plain is None:
            try:
                return super()._getaddr(arg)
            except Exception:
                return None, None
        address, rest = plain
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest


class _BulkData(SMTP):
    """aiosmtpd's DATA, read in bulk (smtpdata) rather than a line per await; the same checks,
    limits and replies, copied from aiosmtpd 1.4's smtp_DATA, plus a limit on the whole DATA's
    time (`data_timeout`: aiosmtpd's own timeout runs from the last command).
    tests/test_smtpdata.py compares the two on the installed aiosmtpd, so a change there
    shows. The handler gets the bytes (decode_data is refused, not half-supported), through
    handle_DATA: the deprecated process_message() API is not called."""

    def __init__(self, *args: Any, data_timeout: float = 120.0, **kwargs: Any) -> None:
        if kwargs.get("decode_data"):
            raise ValueError("listbridge's SMTP handler reads DATA as bytes: decode_data is not supported")
        super().__init__(*args, **kwargs)
        self.data_timeout = data_timeout

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        block = DataAssembler(self.data_size_limit, self.line_length_limit)
        try:
            async with asyncio.timeout(self.data_timeout):
                await read_data(self._reader, block)
        except TimeoutError:  # a trickle holds a connection and a buffer: Postfix's total, here
            log.info("%r DATA took more than %g s; connection closed", self.session.peer, self.data_timeout)
            await self.push(DATA_TOO_SLOW)
            self._writer.close()
            return
        except asyncio.CancelledError:  # aiosmtpd cancels this task on EOF or a lost connection
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        if block.error is not None:
            await self.push(block.error)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = block.content()
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


class _LongLinesSMTP(_PlainPathsFirst, _BulkData):
    # Real mail breaks the 1000-octet line limit; refusing it would lose comments.
    line_length_limit = 64 * 1024


class _LongLinesLMTP(_PlainPathsFirst, _BulkData, LMTP):
    line_length_limit = 64 * 1024


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The receiver's event loop: uvloop's where it is installed (a dependency except on
    Windows), whose transports and selector are C; asyncio's own otherwise. aiosmtpd's
    STARTTLS leans on asyncio's private TLS protocol, but listbridge does not offer STARTTLS
    (the MTA in front of it does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ListController(Controller):
    """aiosmtpd controller speaking SMTP or LMTP on [smtp] host:port."""

    def __init__(self, handler: ListHandler, settings: Settings, **kwargs: Any) -> None:
        self.lmtp = settings.smtp.lmtp
        if "loop" not in kwargs:  # not setdefault: that would make (and leak) a loop never used
            kwargs["loop"] = new_event_loop()
        super().__init__(
            handler,
            hostname=settings.smtp.host,
            port=settings.smtp.port,
            data_size_limit=settings.smtp.max_message_size,
            enable_SMTPUTF8=True,
            ident=f"ESMTP listbridge {version('listbridge')}",  # the banner: 220 HOST ESMTP listbridge 0.1.0
            **kwargs,
        )
        self.data_timeout = settings.smtp.data_timeout

    def factory(self) -> SMTP:
        cls = _LongLinesLMTP if self.lmtp else _LongLinesSMTP
        return cls(self.handler, data_timeout=self.data_timeout, **self.SMTP_kwargs)
