"""SMTP client to the relay: none/starttls/ssl, AUTH, timeouts, one connection reused for
many messages, and PIPELINING (RFC 2920).

smtplib only opens the session (greeting, EHLO, STARTTLS, AUTH). Transactions are then written
as raw bytes and the replies parsed here: with PIPELINING, a message's end-of-data travels in the
same write as the next message's MAIL, RCPT and DATA, so a stream of messages costs one round
trip each (two without PIPELINING would be 3 + N).
"""

from __future__ import annotations

import itertools
import logging
import re
import smtplib
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from listbridge.config import RelaySettings

log = logging.getLogger(__name__)

_EOL = re.compile(rb"\r\n|\r(?!\n)|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")

Reply = tuple[int, str]
# One SMTP transaction: envelope sender, recipients, prepared data (see prepare()).
Transaction = tuple[str, Sequence[str], bytes]


class RelayError(Exception):
    """The relay could not be reached or dropped the connection: a temporary failure."""


class _Unanswered(RelayError):
    """The session ended before the relay answered the first command sent on it (or answered
    421, closing): it accepted nothing, so the same transactions can go on a new session."""


def prepare(data: bytes) -> bytes:
    """CRLF line ends, dot-stuffing and a final CRLF: ready to follow DATA."""
    data = _LEADING_DOT.sub(b"..", _EOL.sub(b"\r\n", data))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


class _Connection:
    """An open SMTP session past EHLO/AUTH: raw writes, replies parsed a whole read at a time."""

    def __init__(self, smtp: smtplib.SMTP, sock: socket.socket, pipelining: bool) -> None:
        self.smtp = smtp
        self.sock = sock
        self.pipelining = pipelining
        self._partial = b""  # an incomplete last line
        self._replies: deque[tuple[int, bytes]] = deque()
        self.first: int | None = None  # the code of the first reply read since begin()

    def begin(self) -> None:
        self.first = None

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        """The next (possibly multi-line) reply: its code and its last line's text."""
        while not self._replies:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the relay")
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                if line[3:4] != b"-":  # continuation lines of a multi-line reply are skipped
                    try:
                        self._replies.append((int(line[:3]), line[4:].rstrip(b"\r")))
                    except ValueError:
                        raise smtplib.SMTPResponseException(-1, line) from None
        code, text = self._replies.popleft()
        if self.first is None:
            self.first = code
        return code, text

    def replies(self, count: int) -> list[tuple[int, bytes]]:
        """The next `count` replies."""
        return [self.reply() for _ in range(count)]


class RelayClient:
    """One SMTP session to the relay; reconnects on demand after a failure."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._conn: _Connection | None = None

    def _connect(self) -> _Connection:
        s = self.settings
        local = s.helo or None
        try:
            if s.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.host, s.port, local_hostname=local, timeout=s.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, local_hostname=local, timeout=s.timeout)
            smtp.ehlo()
            if s.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password())
        except smtplib.SMTPResponseException as exc:
            raise RelayError(f"relay refused the session: {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise RelayError(f"relay {s.host}:{s.port} unreachable: {exc}") from exc
        if smtp.sock is None:  # pragma: no cover - smtplib always leaves a socket after ehlo()
            raise RelayError(f"relay {s.host}:{s.port} closed the session")
        # Replies are small and writes are whole; never let Nagle + delayed ACK stall 40 ms.
        smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(smtp, smtp.sock, smtp.has_extn("pipelining"))

    def send(self, sender: str, recipients: Sequence[str], data: bytes) -> list[Reply]:
        """Send prepared `data` (see prepare()); one (code, text) per recipient.

        Raises RelayError when the connection fails; the session is then dropped.
        """
        (replies,) = self.send_many([(sender, recipients, data)])  # all of it: the session stays open
        return replies

    def send_many(self, transactions: Iterable[Transaction]) -> Iterator[list[Reply]]:
        """Send transactions back to back, yielding each one's per-recipient replies in order.

        With PIPELINING the next envelope rides with the previous end-of-data. Raises
        RelayError when the connection fails (the session is dropped): the transactions not
        yet yielded have an unknown fate, and must be retried. Stopping the iteration early
        drops the session too (an envelope may be in flight).
        """
        pending = iter(transactions)
        first = next(pending, None)
        if first is None:
            return
        reused = self._conn is not None
        pulled = 0

        def counted(source: Iterator[Transaction]) -> Iterator[Transaction]:
            nonlocal pulled
            for transaction in source:
                pulled += 1
                yield transaction

        try:
            yield from self._session(counted(itertools.chain([first], pending)))
        except _Unanswered as exc:
            if not reused or pulled > 1:  # a fresh session refused, or a second one in flight
                raise RelayError(str(exc)) from exc.__cause__
            # An idle session the relay has closed since (Postfix's smtpd_timeout): nothing was
            # answered or yielded, and only `first` was taken, so it goes again on a new one.
            log.info("relay session was closed while idle (%s); reconnecting", exc.__cause__)
            yield from self._session(itertools.chain([first], pending))

    def _session(self, transactions: Iterator[Transaction]) -> Iterator[list[Reply]]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        conn.begin()
        done, yielded = False, False
        try:
            replies = (
                self._pipelined(conn, transactions)
                if conn.pipelining
                else (self._lockstep(conn, *transaction) for transaction in transactions)
            )
            for result in replies:
                yielded = True
                yield result
            done = True
        except (OSError, smtplib.SMTPException) as exc:
            if not yielded and conn.first in (None, 421):
                raise _Unanswered(f"relay connection lost: {exc}") from exc
            raise RelayError(f"relay connection lost: {exc}") from exc
        finally:
            if not done:
                self._drop()

    def _pipelined(self, conn: _Connection, transactions: Iterator[Transaction]) -> Iterator[list[Reply]]:
        results: list[Reply] = []
        pending = b""  # end-of-data or RSET of the previous transaction, sent with the next envelope
        reset = False
        for sender, recipients, data in transactions:
            conn.write(pending + _envelope(sender, recipients))
            if pending:
                yield from self._finish(conn, results, reset)
            results, pending, reset = self._open(conn, len(recipients), data)
        if pending:
            conn.write(pending)
            yield from self._finish(conn, results, reset)

    def _open(self, conn: _Connection, count: int, data: bytes) -> tuple[list[Reply], bytes, bool]:
        """Read an envelope's replies: per-recipient results so far, what ends the transaction
        (end-of-data or RSET), and whether that is a RSET."""
        mail, *rcpts, data_reply = conn.replies(count + 2)
        if mail[0] >= 400:
            results = [(mail[0], _text(mail[1]))] * count
        else:
            results = [(code, text.decode("utf-8", "replace")) for code, text in rcpts]
        if data_reply[0] == 354:
            # Even with every recipient refused, a server that said 354 wants the data.
            return results, (data if mail[0] < 400 else b"") + b".\r\n", False
        if mail[0] < 400:
            # Accepted recipients cannot receive the data now: retry them later.
            code = data_reply[0] if data_reply[0] >= 400 else 451
            failed = (code if code < 500 else 451, _text(data_reply[1]))
            results = [r if r[0] >= 400 else failed for r in results]
        return results, b"RSET\r\n", True

    def _finish(self, conn: _Connection, results: list[Reply], reset: bool) -> Iterator[list[Reply]]:
        """Read the reply ending the previous transaction and yield its results."""
        code, text = conn.reply()
        if reset:
            yield results
            if code != 250:
                raise smtplib.SMTPException("the relay refused RSET")
            return
        final = (code, _text(text))
        yield [r if r[0] >= 400 else final for r in results]

    def _lockstep(self, conn: _Connection, sender: str, recipients: Sequence[str], data: bytes) -> list[Reply]:
        """One transaction, one command at a time (relay without PIPELINING)."""
        lines = _envelope(sender, recipients).split(b"\r\n")[:-1]
        replies = []
        for line in lines:
            conn.write(line + b"\r\n")
            replies.append(conn.reply())
            if replies[0][0] >= 400:  # MAIL refused: RCPT and DATA would only fail
                self._reset(conn)
                return [(replies[0][0], _text(replies[0][1]))] * len(recipients)
        results = [(code, _text(text)) for code, text in replies[1:-1]]
        data_reply = replies[-1]
        if data_reply[0] != 354:
            self._reset(conn)  # a refused RSET drops the session, these results included
            code = data_reply[0] if data_reply[0] >= 400 else 451
            failed = (code if code < 500 else 451, _text(data_reply[1]))
            return [r if r[0] >= 400 else failed for r in results]
        conn.write(data + b".\r\n")
        code, text = conn.reply()
        return [r if r[0] >= 400 else (code, _text(text)) for r in results]

    def _reset(self, conn: _Connection) -> None:
        conn.write(b"RSET\r\n")
        if conn.reply()[0] != 250:
            raise smtplib.SMTPException("the relay refused RSET")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.smtp.close()
            self._conn = None

    def close(self) -> None:
        """QUIT politely; the session is closed whatever the relay says."""
        if self._conn is not None:
            try:
                self._conn.write(b"QUIT\r\n")
                self._conn.reply()
            except (OSError, smtplib.SMTPException):
                pass
            self._drop()


def _envelope(sender: str, recipients: Sequence[str]) -> bytes:
    """MAIL, RCPT… and DATA as one write."""
    rcpts = "".join(f"RCPT TO:<{r}>\r\n" for r in recipients)
    return f"MAIL FROM:<{sender}>\r\n{rcpts}DATA\r\n".encode()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
