"""Recipient addresses -> what the mail is for. Pure functions, no I/O.

>>> route("bla+confirm-ABC@example.org", {"bla@example.org"})
Recipient(list_address='bla@example.org', action='confirm', token='abc')
>>> route("BLA@Example.org", {"bla@example.org"})
Recipient(list_address='bla@example.org', action='post', token='')
>>> route("bla-unsubscribe-x7q@example.org", {"bla@example.org"}, separator="-")
Recipient(list_address='bla@example.org', action='unsubscribe-token', token='x7q')
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

# Sub-addresses that take no token.
SUBADDRESSES: dict[str, str] = {
    "subscribe": SUBSCRIBE,
    "unsubscribe": UNSUBSCRIBE,
    "help": HELP,
    "owner": OWNER,
}
# Sub-addresses of the form NAME-TOKEN.
TOKEN_SUBADDRESSES: dict[str, str] = {
    "confirm": CONFIRM,
    "unsubscribe": UNSUBSCRIBE_TOKEN,
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
    return None


def subaddress(list_address: str, name: str, separator: str = "+") -> str:
    """bla@D + 'confirm-XYZ' -> 'bla+confirm-XYZ@D'."""
    local, domain = list_address.rsplit("@", 1)
    return f"{local}{separator}{name}@{domain}"


def new_token() -> str:
    """128 random bits as 26 lower-case base32 characters (safe in a local part)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()
