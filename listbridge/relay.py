"""SMTP client to the relay: none/starttls/ssl, AUTH, timeouts, one connection reused for
many messages, and PIPELINING (RFC 2920) so a message costs two round trips, not 3 + N.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from typing import Sequence

from .config import RelaySettings

_EOL = re.compile(rb"\r\n|\r(?!\n)|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


class RelayError(Exception):
    """The relay could not be reached or dropped the connection: a temporary failure."""


def prepare(data: bytes) -> bytes:
    """CRLF line ends, dot-stuffing and a final CRLF: ready to follow DATA."""
    data = _LEADING_DOT.sub(b"..", _EOL.sub(b"\r\n", data))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


class RelayClient:
    """One SMTP session to the relay; reconnects on demand after a failure."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._pipelining = False

    def _connect(self) -> smtplib.SMTP:
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
        if smtp.sock is not None:
            # Each message is written in two pieces; without this, Nagle + delayed ACK stall 40 ms.
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pipelining = smtp.has_extn("pipelining")
        return smtp

    def send(self, sender: str, recipients: Sequence[str], data: bytes) -> list[tuple[int, str]]:
        """Send prepared `data` (see prepare()); one (code, text) per recipient.

        Raises RelayError when the connection fails; the session is then dropped.
        """
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            return self._transaction(self._smtp, sender, recipients, data)
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise RelayError(f"relay connection lost: {exc}") from exc

    def _transaction(
        self, smtp: smtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes
    ) -> list[tuple[int, str]]:
        commands = [f"MAIL FROM:<{sender}>".encode()] + [f"RCPT TO:<{r}>".encode() for r in recipients]
        commands.append(b"DATA")
        if self._pipelining:
            smtp.send(b"\r\n".join(commands) + b"\r\n")
            replies = [smtp.getreply() for _ in commands]
        else:
            replies = []
            for command in commands:
                smtp.send(command + b"\r\n")
                replies.append(smtp.getreply())
                if replies[0][0] >= 400:  # MAIL refused: RCPT and DATA would only fail
                    replies += [replies[0]] * (len(commands) - 1)
                    break
        mail, rcpts, data_reply = replies[0], replies[1:-1], replies[-1]
        if mail[0] >= 400:
            self._reset(smtp)
            return [(mail[0], _text(mail[1]))] * len(recipients)
        results = [(code, _text(text)) for code, text in rcpts]
        if data_reply[0] != 354:
            self._reset(smtp)
            # Accepted recipients cannot receive the data now: retry them later.
            code = data_reply[0] if data_reply[0] >= 400 else 451
            return [r if r[0] >= 400 else (code if code < 500 else 451, _text(data_reply[1])) for r in results]
        smtp.send(data + b".\r\n")
        final = smtp.getreply()
        return [r if r[0] >= 400 else (final[0], _text(final[1])) for r in results]

    def _reset(self, smtp: smtplib.SMTP) -> None:
        code, _ = smtp.docmd("RSET")
        if code != 250:
            self.close()

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                self._smtp.close()
            self._smtp = None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
