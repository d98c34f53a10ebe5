"""Raw message bytes -> Incoming: the fields listbridge acts on, decoded to proper Unicode.

mail-parser reads the MIME structure and the body. The few headers listbridge acts on are read
from the raw header values instead, because mail-parser decodes RFC 2047 words *before* it
splits addresses: an encoded CR/LF, comma or colon in a display name then loses the sender.
Here the address list is split first and only the display name is decoded, leniently (encoded
words inside quotes, unknown charsets and 8-bit headers are common in the field).
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import email.utils
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from email import quoprimime

import mailparser
from flufl.bounce import all_failures

from listbridge.message import Failures, Incoming, is_null_sender
from listbridge.sanitize import CONTROL_CHARS, clean_text, html_to_text, one_line

# RFC 2047 encoded word; the encoded text is printable ASCII without "?".
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([!->@-~]*)\?=")
# No control character inside: an id is printed to the moderator's terminal and written back in
# the headers of list mail.
_MSG_ID = re.compile(rf"<[^<>\s{CONTROL_CHARS}]{{1,996}}>")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")
_COMMENT = re.compile(r"\([^()]*\)")
_FOLDING = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
# One mailbox in its everyday form, which the address-list parser reads the same way:
# `Some Name <local@domain>` (words of atom characters, single spaces) or a bare address.
# No quotes, comments, dots in the name, encoded words or folding: those take the parser.
_NAME_WORD = r"[^\s\x00-\x1f\x7f-\x9f\u2028\u2029()<>@,;:\\\".\[\]=?]+"
_PLAIN_ADDRESS = r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_MAILBOX = re.compile(rf" ?(?:({_NAME_WORD}(?: {_NAME_WORD})*) ?)?<({_PLAIN_ADDRESS})> ?| ?({_PLAIN_ADDRESS}) ?")
_HIDDEN_WORD = re.compile(r"ew(\d+)x([0-9a-f]{8})")  # an encoded word hidden by _first_address
# A Content-Type that leaves nothing for mail-parser to do (see _plain_body).
_PLAIN_TYPE = re.compile(
    r'\s*text/plain\s*(?:;\s*charset=(?:utf-8|us-ascii|"utf-8"|"us-ascii")\s*)?'
    r"(?:;\s*format=(?:flowed|fixed)\s*)?(?:;\s*delsp=(?:yes|no)\s*)?;?\s*",
    re.IGNORECASE,
)
_PLAIN_EXTRAS = frozenset({"content-transfer-encoding", "content-language", "content-description"})
# The headers read below; the others (Received, DKIM-Signature…: most of a real header) are
# never decoded.
_READ = frozenset(
    {
        "from",
        "subject",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "precedence",
        "x-loop",
        "authentication-results",
    }
)
# References longer than this keep the first id (the thread root) and the newest ones.
MAX_REFERENCES = 100
# A Message-ID header line anywhere in a bounce: the returned mail's own, among others.
_QUOTED_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[!-;=?-~]{1,250}>)", re.IGNORECASE | re.MULTILINE)
# The part of a bounce the detectors read: a DSN's report comes before the returned message,
# and a null sender must not buy a long scan with a large body.
SCAN_BYTES = 256 * 1024


class IntakeError(Exception):
    """The message cannot be read at all; the text is the SMTP reason given to the sender."""


def parse(raw: bytes, envelope_sender: str = "", bounce: bool = False) -> Incoming:
    """Parse one message. Raises IntakeError when nothing usable can be read, whatever went
    wrong inside (mail-parser and the email package raise many kinds on hostile input, the
    address parser RecursionError on deeply nested comments): it costs that message alone.
    A message sent to a bounce address (`bounce`), from the null sender or shaped as a
    delivery report is also scanned for the addresses that failed."""
    try:
        return _parse(raw, envelope_sender, bounce)
    except IntakeError:
        raise
    except Exception as exc:
        raise IntakeError(f"message cannot be parsed ({type(exc).__name__})") from exc


def _parse(raw: bytes, envelope_sender: str, bounce: bool) -> Incoming:
    message = _read_message(raw)
    headers = [(str(name).lower(), value) for name, value in message.raw_items()]
    if not headers:
        raise IntakeError("message has no header")
    items = [(key, _header_text(value)) for key, value in headers if key in _READ]
    body, attachments = _read_body(message, headers)
    text = clean_text(body).strip()

    def values(name: str) -> list[str]:
        return [value for key, value in items if key == name]

    def first(name: str) -> str:
        found = values(name)
        return found[0] if found else ""

    display_name, sender = _first_address(first("from"))
    if not sender:
        sender = _valid_address(envelope_sender)
    suspect = bounce or is_null_sender(envelope_sender) or message.get_content_type() == "multipart/report"
    return Incoming(
        sender=sender,
        display_name=display_name,
        subject=one_line(decode_words(first("subject"))),
        message_id=_first_id(first("message-id")),
        in_reply_to=_first_id(first("in-reply-to")),
        references=_references(first("references")),
        auto_submitted=any(_keyword(v) not in ("", "no") for v in values("auto-submitted")),
        bulk=any(_keyword(v) in ("bulk", "junk", "list") for v in values("precedence")),
        x_loop=tuple(one_line(v) for v in values("x-loop")),
        text=text,
        raw=raw,
        authentication_results=tuple(one_line(v, 4000) for v in values("authentication-results")),
        attachments=attachments,
        failures=_failures(raw) if suspect else None,
    )


def _failures(raw: bytes) -> Failures:
    """What flufl.bounce's detectors find in the first SCAN_BYTES of `raw` (the shortcut keeps
    no parts). Nothing when a detector fails on it: an unreadable bounce counts for nothing,
    and the message is still taken."""
    head = raw[:SCAN_BYTES]
    quoted = frozenset(m.decode("ascii") for m in _QUOTED_MESSAGE_ID.findall(head))
    try:
        report = email.message_from_bytes(head, policy=email.policy.default)
        temporary, permanent = all_failures(report)
    except Exception:  # the detectors raise many kinds on what they do not expect
        return Failures(message_ids=quoted)
    return Failures(permanent=_addresses(permanent), temporary=_addresses(temporary), message_ids=quoted)


def quiet_parsers() -> None:
    """Only with -v: flufl.bounce logs every detector it runs at INFO, and a detector's
    failure (taken by _failures as nothing found) as an ERROR with a traceback; mail-parser
    warns of every part it does not decode (the headers a DSN returns, say)."""
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
    logging.getLogger("mailparser").setLevel(logging.ERROR)


def _addresses(found: Iterable[bytes | str]) -> frozenset[str]:
    out = set()
    for item in found:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        address = one_line(text).strip("<> ").lower()
        if "@" in address:
            out.add(address)
    return frozenset(out)


def _read_message(raw: bytes) -> email.message.Message:
    """`raw` as the email package reads it, through the shortcut when that applies."""
    shortcut = _header_then_body(raw)
    return shortcut if shortcut is not None else email.message_from_bytes(raw)


def _header_then_body(raw: bytes) -> email.message.Message | None:
    """The shortcut: what comes before the first CRLF CRLF read alone, and the body attached as
    it is, which is what the email package makes of a body without parts (it reads a body line
    by line even when it has no structure). None when that does not read as a whole header:
    an empty line or a line that is not a header came earlier, or a multipart or message/*
    type looks for its parts. A Hypothesis test holds it equal to the email package."""
    end = raw.find(b"\r\n\r\n") + 2
    if end < 2:
        return None
    message = email.message_from_bytes(raw[:end] + b"\r\n")
    if message.get_payload() or message.defects:  # an empty line came earlier, or a non-header…
        return None
    message.set_payload(raw[end + 2 :].decode("ascii", "surrogateescape"))
    return message


def _read_body(message: email.message.Message, headers: Sequence[tuple[str, object]]) -> tuple[str, int]:
    """The body's text and its number of attachments as mail-parser reads them (its walk of the
    MIME parts, text/plain preferred, HTML turned into text), through the shortcut for a body
    with no structure when that applies."""
    plain = _plain_body(message, headers)
    if plain is not None:
        return plain, 0
    mail = _BodyParser(_body_view(message))
    return _text(mail), len(mail.attachments)


def _plain_body(message: email.message.Message, headers: Sequence[tuple[str, object]]) -> str | None:
    """The shortcut: the text of a message with no MIME structure to walk: one text/plain part declared UTF-8
    or ASCII (or nothing), in any transfer encoding. For such a message mail-parser returns the
    decoded body's bytes read as UTF-8, bad bytes replaced, whichever of those charsets is
    declared; this does the same without its walk of the parts (a Hypothesis test holds the two
    equal). `headers`: (lower-case name, value). None for anything else, which goes to
    mail-parser."""
    types: list[str] = []
    for key, value in headers:
        if key == "content-type":
            types.append(str(value))
        elif key.startswith("content-") and key not in _PLAIN_EXTRAS:
            return None  # a disposition, an id…: mail-parser's attachment rules apply
    if types and not _PLAIN_TYPE.fullmatch(types[0]):  # the first one counts, for mail-parser too
        return None
    body = message.get_payload(decode=True)
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else None


def _body_view(message: email.message.Message) -> email.message.Message:
    """`message` with only the top-level headers that shape its body (Content-*, MIME-Version):
    mail-parser decodes every header it is given, addresses twice over, and the headers
    listbridge acts on are read from the raw items instead."""
    for name in {key for key in message if not _shapes_body(key)}:
        del message[name]
    return message


class _BodyParser(mailparser.MailParser):
    """mail-parser's walk of the MIME parts (text, HTML, attachments, charset recovery),
    without the two summary dicts (`mail`, `mail_partial`) it then builds from every header
    and part: listbridge reads neither."""

    def _make_mail(self, complete: bool = True) -> dict[str, object]:
        return {}


def _shapes_body(name: str) -> bool:
    name = name.lower()
    return name.startswith("content-") or name == "mime-version"


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words anywhere in `value` (also inside quotes, where they are
    invalid yet common). Whitespace between adjacent encoded words is dropped; a word that
    cannot be decoded is kept as it is; unknown charsets fall back to UTF-8, then windows-1252.

    >>> decode_words('=?iso-8859-1?q?Ren=E9?= =?utf-8?b?TMOp?= "=?utf-8?q?caf=C3=A9?="')
    'RenéLé "café"'
    """
    if "=?" not in value:  # no encoded word: most headers
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    position = 0
    after_word = False

    def flush() -> None:
        nonlocal pending
        if pending:
            out.append(_decode_bytes(bytes(pending), pending_charset))
            pending = bytearray()

    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        position = match.end()
        if gap.strip() or not after_word:
            flush()
            out.append(gap)
        charset = match.group(1).split("*", 1)[0].lower()  # RFC 2231 language suffix
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            flush()
            out.append(match.group(0))
            after_word = False
            continue
        if charset != pending_charset:
            flush()
        pending += data  # words of one charset are joined first: a character may be split
        pending_charset = charset
        after_word = True
    flush()
    out.append(value[position:])
    return "".join(out)


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "qQ":
        return quoprimime.header_decode(text).encode("latin-1")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _decode_bytes(data: bytes, charset: str) -> str:
    """`data` in its declared charset, else guessed."""
    try:
        return data.decode(charset)
    except (LookupError, UnicodeError, ValueError, TypeError):
        return _guess(data)


def _guess(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _header_text(value: object) -> str:
    """A raw header value as text: 8-bit bytes (kept by the parser as surrogate escapes) are
    read as UTF-8, else windows-1252; folding is undone."""
    text = str(value)
    try:
        text = _guess(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # lone surrogates that did not come from bytes
        text = text.encode("utf-8", "replace").decode("utf-8")
    return _FOLDING.sub("", text)


def _first_address(value: str) -> tuple[str, str]:
    """(display name, address) of the first From mailbox with a usable address; the name of
    the first mailbox when none has one; ('', '') when the header is empty."""
    if not value:
        return "", ""
    simple = _SIMPLE_MAILBOX.fullmatch(value) if len(value) < 998 else None
    if simple is not None:
        name, address = simple.group(1, 2) if simple.group(2) else ("", simple.group(3))
        return _display_name(name or ""), _valid_address(address)
    return _parsed_first_address(value)


def _parsed_first_address(value: str) -> tuple[str, str]:
    """_first_address() through the email package's address-list parser."""
    # Encoded words are hidden behind atoms while the list is split, so that what they decode
    # to (a comma, a colon, "<", CR/LF) cannot change the structure.
    words: list[str] = []
    nonce = secrets.token_hex(4)

    def hide(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"ew{len(words) - 1}x{nonce}"

    def show(text: str) -> str:
        return _HIDDEN_WORD.sub(lambda m: words[int(m.group(1))] if m.group(2) == nonce else m.group(0), text)

    hidden = _ENCODED_WORD.sub(hide, one_line(value, 100_000))
    mailboxes = [(show(name), show(address)) for name, address in email.utils.getaddresses([hidden])]
    if not mailboxes:
        return "", ""
    for name, address in mailboxes:
        valid = _valid_address(address)
        if valid:
            return _display_name(name), valid
    return _display_name(mailboxes[0][0]), ""


def _display_name(name: str) -> str:
    return one_line(decode_words(name), 255).strip('"').strip()


def _valid_address(address: str) -> str:
    """`address` when it looks like local@domain and fits in 320 characters, else '' (never
    cut: a cut address is somebody else's)."""
    address = one_line(address, 10_000).strip("<>")
    return address if len(address) <= 320 and _ADDRESS.fullmatch(address) else ""


def _first_id(value: str) -> str:
    """The first <msg-id> of a header (comments and noise around it dropped)."""
    match = _MSG_ID.search(value)
    return match.group(0) if match else one_line(value)


def _references(value: str) -> tuple[str, ...]:
    ids = _MSG_ID.findall(value)
    if len(ids) > MAX_REFERENCES:
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
    return tuple(ids)


def _keyword(value: str) -> str:
    """The keyword of Auto-Submitted or Precedence: parameters and comments dropped."""
    return _COMMENT.sub(" ", one_line(value)).split(";")[0].strip().lower()


def _text(mail: mailparser.MailParser) -> str:
    """The text body: text/plain preferred, else HTML turned into text."""
    if mail.text_plain:
        return "\n".join(mail.text_plain)
    if mail.text_html:
        return html_to_text("\n".join(mail.text_html))
    return _unstructured(mail)


def _unstructured(mail: mailparser.MailParser) -> str:
    """Text of a body mail-parser gave up on: a multipart without boundary, a bare body."""
    payload = mail.message.get_payload(decode=True)
    if not isinstance(payload, bytes) or mail.message.get_content_maintype() not in ("text", "multipart"):
        return ""
    text = _decode_bytes(payload, mail.message.get_content_charset() or "utf-8")
    return html_to_text(text) if mail.message.get_content_subtype() == "html" else text
