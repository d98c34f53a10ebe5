"""Outgoing messages: headers every list mail carries, and per-recipient personalisation."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate

from listbridge.addresses import subaddress
from listbridge.config import ListSettings


def list_id(mlist: ListSettings) -> str:
    """RFC 2919 List-Id: `title <local.domain>`."""
    return f"{mlist.title} <{mlist.local}.{mlist.domain}>"


def new_message_id(domain: str) -> str:
    return f"<{int(time.time())}.{secrets.token_hex(8)}@{domain}>"


def list_headers(mlist: ListSettings, separator: str) -> dict[str, str]:
    """The List-* and loop headers of every mail the list sends (List-Unsubscribe apart)."""
    return {
        "List-Id": list_id(mlist),
        "List-Post": f"<mailto:{mlist.address}>",
        "List-Help": f"<mailto:{subaddress(mlist.address, 'help', separator)}>",
        "List-Subscribe": f"<mailto:{subaddress(mlist.address, 'subscribe', separator)}>",
        "Precedence": "list",
        "X-Loop": mlist.address,
    }


def build(
    mlist: ListSettings,
    separator: str,
    *,
    subject: str,
    body: str,
    sender: str,
    to: str | None = None,
    reply_to: str | None = None,
    extra: dict[str, str] | None = None,
    sender_name: str | None = None,
    message_id: str | None = None,
    to_moderators: bool = False,
    unsubscribe: tuple[str, str] | None = None,
) -> bytes:
    """A complete message as CRLF bytes. `to=None` leaves To and List-Unsubscribe to the sender
    worker (a list mail, personalised at send time). `to_moderators`: a mail about the list,
    not of it (a moderation notice), with no List-* header, so that neither "reply to list"
    posts it nor an unsubscribe button acts on the moderator's subscription; X-Loop stays.
    `unsubscribe`: the recipient's own one-step address and one-click URL (RFC 8058), when a
    subscriber."""
    msg = EmailMessage(policy=SMTP)
    raw = b""  # headers the email package must not fold (it would encode a long URL)
    msg["From"] = formataddr((mlist.title if sender_name is None else sender_name, sender))
    if to is not None:
        msg["To"] = to
        if unsubscribe is not None and not to_moderators:
            raw = unsubscribe_headers(*unsubscribe)
        elif not to_moderators:
            msg["List-Unsubscribe"] = f"<mailto:{subaddress(mlist.address, 'unsubscribe', separator)}>"
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id or new_message_id(mlist.domain)
    if reply_to:
        msg["Reply-To"] = reply_to
    headers = {"X-Loop": mlist.address} if to_moderators else list_headers(mlist, separator)
    for name, value in {**headers, **(extra or {})}.items():
        msg[name] = value
    msg.set_content(body, cte="quoted-printable" if not body.isascii() else "7bit")
    return raw + msg.as_bytes()


def request_mail(mlist: ListSettings, sender: str, to: str, subject: str) -> bytes:
    """A bare request to one of the list's own addresses (the watcher forwarding a one-click
    unsubscribe home): no List-* header, no X-Loop, nothing that marks it automatic."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr((mlist.title, sender))
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = new_message_id(mlist.domain)
    msg.set_content(f"{subject}\n")
    return msg.as_bytes()


def thread_root(mlist: ListSettings, slug: str) -> str:
    """A stable Message-ID standing for a post: every broadcast about it replies to this one,
    so mail clients gather a post's comments in one thread."""
    return f"<post.{hashlib.sha256(slug.encode()).hexdigest()[:20]}@{mlist.domain}>"


def personal_headers(address: str, unsubscribe: str, url: str = "") -> bytes:
    """Headers prepended to a stored list mail for one recipient (or one batch)."""
    return f"To: {address}\r\n".encode("ascii", "replace") + unsubscribe_headers(unsubscribe, url)


def unsubscribe_headers(address: str, url: str = "") -> bytes:
    """List-Unsubscribe with the one-step `address`; with a one-click `url`, first, RFC 8058's
    List-Unsubscribe-Post too. Raw, unfolded: an encoded URL would not be one (RFC 2369)."""
    if not url:
        return f"List-Unsubscribe: <mailto:{address}>\r\n".encode("ascii", "replace")
    return (
        f"List-Unsubscribe: <{url}>, <mailto:{address}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    ).encode("ascii", "replace")


def token_slots(data: bytes, placeholder: str) -> tuple[tuple[int, int], ...]:
    r"""Where the body of `data` holds `placeholder` (a stand-in for each recipient's token, as
    long as one), soft line breaks of quoted-printable included; never in the headers.

    >>> token_slots(b"S: x\r\n\r\na abcdefghij=\r\nklmnop b", "abcdefghijklmnop")
    ((10, 29),)
    """
    end_of_headers = data.find(b"\r\n\r\n")
    if not placeholder or end_of_headers < 0:
        return ()
    pattern = re.compile(b"(?:=\r\n)?".join(re.escape(c.encode()) for c in placeholder))
    return tuple(m.span() for m in pattern.finditer(data, end_of_headers + 4))


def with_token(data: bytes, slots: tuple[tuple[int, int], ...], token: str) -> bytes:
    r"""`data` with `token` in each of its `slots` (from token_slots).

    >>> body = b"S: x\r\n\r\na abcdefghij=\r\nklmnop b"
    >>> with_token(body, token_slots(body, "abcdefghijklmnop"), "ponmlkjihgfedcba")
    b'S: x\r\n\r\na ponmlkjihg=\r\nfedcba b'
    """
    out, last = [], 0
    for start, end in slots:
        out += [data[last:start], _fill(data[start:end], token)]
        last = end
    out.append(data[last:])
    return b"".join(out)


def _fill(slot: bytes, token: str) -> bytes:
    """The token laid out as the placeholder was (its soft line breaks kept)."""
    pieces = re.findall(b"=\r\n|.", slot, re.DOTALL)
    if len(token) != sum(piece != b"=\r\n" for piece in pieces):
        return token.encode("ascii", "replace")
    chars = iter(token.encode("ascii", "replace"))
    return b"".join(b"=\r\n" if piece == b"=\r\n" else bytes([next(chars)]) for piece in pieces)
