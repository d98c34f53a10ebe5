"""Raw message bytes -> Incoming: the fields listbridge acts on, decoded to proper Unicode."""

from __future__ import annotations

import email.utils
from email.header import decode_header, make_header
from dataclasses import dataclass

import mailparser

from .sanitize import html_to_text, one_line


class IntakeError(Exception):
    """The message cannot be read at all; the text is the SMTP reason given to the sender."""


@dataclass(frozen=True)
class Incoming:
    sender: str  # the From address, or the envelope sender when From is missing
    display_name: str
    subject: str
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    auto_submitted: bool  # Auto-Submitted other than "no"
    bulk: bool  # Precedence: bulk, junk or list
    x_loop: tuple[str, ...]
    text: str
    raw: bytes

    def is_automated(self, envelope_sender: str, loop_marker: str) -> bool:
        """True when no automatic reply may go to this message (RFC 3834 and loop rules)."""
        return (
            not envelope_sender
            or self.auto_submitted
            or self.bulk
            or loop_marker.lower() in (value.lower() for value in self.x_loop)
        )


def parse(raw: bytes, envelope_sender: str = "") -> Incoming:
    """Parse one message. Raises IntakeError when nothing usable can be read."""
    try:
        mail = mailparser.parse_from_bytes(raw)
        headers = mail.headers
    except Exception as exc:  # mail-parser raises many kinds on hostile input
        raise IntakeError(f"message cannot be parsed ({type(exc).__name__})") from exc
    if not headers:
        raise IntakeError("message has no header")

    display_name, sender = _first_address(mail.from_)
    if not sender:
        sender = envelope_sender
    auto = one_line(str(headers.get("Auto-Submitted", "no"))).split(";")[0].strip().lower()
    precedence = one_line(str(headers.get("Precedence", ""))).lower()
    return Incoming(
        sender=sender,
        display_name=display_name,
        subject=one_line(str(mail.subject or "")),
        message_id=one_line(str(mail.message_id or "")),
        in_reply_to=one_line(str(headers.get("In-Reply-To", ""))),
        references=tuple(one_line(str(headers.get("References", ""))).split()),
        auto_submitted=auto not in ("", "no"),
        bulk=precedence in ("bulk", "junk", "list"),
        x_loop=tuple(one_line(v) for v in _all_values(mail, "X-Loop")),
        text=_text(mail),
        raw=raw,
    )


def _first_address(value: object) -> tuple[str, str]:
    """(display name, address) of the first From entry, cleaned; ('', '') when there is none."""
    if isinstance(value, list) and value:
        name, address = value[0]
    elif isinstance(value, str) and value:
        name, address = email.utils.parseaddr(value)
    else:
        return "", ""
    name = str(name)
    if "=?" in name:  # encoded words inside quotes: invalid, yet common
        try:
            name = str(make_header(decode_header(name)))
        except (ValueError, LookupError, UnicodeError):
            pass
    address = one_line(str(address), 320)
    if "@" not in address or " " in address:
        address = ""
    return one_line(name, 255), address


def _all_values(mail: mailparser.MailParser, name: str) -> list[str]:
    return [str(v) for v in (mail.message.get_all(name) or [])]


def _text(mail: mailparser.MailParser) -> str:
    """The text body: text/plain preferred, else HTML turned into text."""
    if mail.text_plain:
        return "\n".join(part.replace("\r\n", "\n") for part in mail.text_plain).strip()
    if mail.text_html:
        return html_to_text("\n".join(mail.text_html))
    return ""
