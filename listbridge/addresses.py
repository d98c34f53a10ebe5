"""Recipient addresses -> what the mail is for. Pure functions, no I/O.

>>> route("bla+confirm-ABC@example.org", {"bla@example.org"})
Recipient(list_address='bla@example.org', action='confirm', token='abc')
>>> route("BLA@Example.org", {"bla@example.org"})
Recipient(list_address='bla@example.org', action='post', token='')
>>> route("bla-unsubscribe-x7q@example.org", {"bla@example.org"}, separator="-")
Recipient(list_address='bla@example.org', action='unsubscribe-token', token='x7q')
>>> route("bla+approve-k2q@example.org", {"bla@example.org"})
Recipient(list_address='bla@example.org', action='approve', token='k2q')
>>> route("bla+bounces-Not.One@example.org", {"bla@example.org"})
Recipient(list_address='bla@example.org', action='bounces', token='not.one')
>>> route("bla+nope@example.org", {"bla@example.org"}) is None
True
>>> split_address("<Carole@Example.NET>")
('Carole', 'example.net')
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

POST = "post"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
CONFIRM = "confirm"
UNSUBSCRIBE_TOKEN = "unsubscribe-token"
HELP = "help"
OWNER = "owner"
APPROVE = "approve"
REJECT = "reject"
BOUNCES = "bounces"
ENABLE = "enable"

# Sub-addresses that take no token.
SUBADDRESSES: dict[str, str] = {
    "subscribe": SUBSCRIBE,
    "unsubscribe": UNSUBSCRIBE,
    "help": HELP,
    "owner": OWNER,
    # The envelope sender of batched list mail (one per transaction): bounces read from the DSN.
    "bounces": BOUNCES,
}
# Sub-addresses of the form NAME-TOKEN.
TOKEN_SUBADDRESSES: dict[str, str] = {
    "confirm": CONFIRM,
    "unsubscribe": UNSUBSCRIBE_TOKEN,
    # A moderator's reply to a held comment's notice (lists/moderation.py).
    "approve": APPROVE,
    "reject": REJECT,
    # The envelope sender of mail to one recipient (outbound/verp.py), and the address a
    # subscriber disabled by bounces writes to to get list mail again (lists/bounces.py).
    "bounces": BOUNCES,
    "enable": ENABLE,
}
# Tokens are lower-case base32 so that an MTA that folds case cannot break them.
TOKEN_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# Case folding is ASCII only: str.lower() would fold e.g. KELVIN SIGN (U+212A) to "k", so a
# non-ASCII look-alike would reach a list or carry a valid token.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """ASCII-only lower case, the folding used for list names, sub-addresses and domains."""
    return text.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class Recipient:
    list_address: str
    action: str
    token: str = ""


def split_address(address: str) -> tuple[str, str]:
    """'Local@Domain' -> ('Local', 'domain'); ValueError when it is not an address."""
    address = address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an address: {address!r}")
    return local, fold(domain)


def route(address: str, lists: Iterable[str], separator: str = "+") -> Recipient | None:
    """Map an envelope recipient to a list and an action, or None when it is not ours."""
    try:
        local, domain = split_address(address)
    except ValueError:
        return None
    known = {fold(a) for a in lists}
    base, sep, sub = local.partition(separator)
    list_address = f"{fold(base)}@{domain}"
    if list_address not in known:
        return None
    if not sep:
        return Recipient(list_address, POST)
    sub = fold(sub)
    action = SUBADDRESSES.get(sub)
    if action:
        return Recipient(list_address, action)
    name, dash, token = sub.partition("-")
    action = TOKEN_SUBADDRESSES.get(name)
    if action and dash and token and set(token) <= TOKEN_ALPHABET:
        return Recipient(list_address, action, token)
    if action == BOUNCES and dash:
        # A bounce address takes everything, even a token an MTA mangled: refused at RCPT,
        # the bounce would come back as a double bounce (and count for nothing anyway).
        return Recipient(list_address, action, token)
    return None


def subaddress(list_address: str, name: str, separator: str = "+") -> str:
    """bla@D + 'confirm-XYZ' -> 'bla+confirm-XYZ@D'."""
    local, domain = list_address.rsplit("@", 1)
    return f"{local}{separator}{name}@{domain}"


def new_token() -> str:
    """128 random bits as 26 lower-case base32 characters (safe in a local part)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()
