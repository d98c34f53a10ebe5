"""VERP tokens: the envelope sender LIST+bounces-TOKEN@D of a mail to one recipient, TOKEN
naming its outbox row (hence its address and message). A bounce goes back to that address, so
it says who failed whatever the DSN quotes. The token is signed, so that no one can name a
subscriber who was not sent that mail. Pure functions, no I/O.

>>> key = bytes(32)
>>> token = encode(1234, key)
>>> token, decode(token, key)
('atjaaot4nacvnzv7h7z6hvxn', 1234)
>>> decode(token.replace("a", "b", 1), key) is None, decode("x", key) is None, decode("aa" + token, key) is None
(True, True, True)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

MAC_CHARS = 20  # 100 bits of HMAC-SHA256, in base32


def encode(row_id: int, key: bytes) -> str:
    """The lower-case base32 token of outbox row `row_id`: its id, then its signature."""
    raw = row_id.to_bytes((row_id.bit_length() + 7) // 8 or 1, "big")
    return _b32(raw) + _b32(_mac(raw, key))[:MAC_CHARS]


def decode(token: str, key: bytes) -> int | None:
    """The row id of a token made by encode() with `key`; None for any other string."""
    token = token.lower()
    head, mac = token[:-MAC_CHARS], token[-MAC_CHARS:]
    if not head or len(mac) != MAC_CHARS:
        return None
    try:
        raw = base64.b32decode(head.upper() + "=" * (-len(head) % 8))
    except (binascii.Error, ValueError):
        return None
    if not raw:
        return None
    row_id = int.from_bytes(raw, "big")
    # Compared whole, so that a token is only ever the one encode() makes (no leading zeros).
    return row_id if hmac.compare_digest(encode(row_id, key), token) else None


def _mac(raw: bytes, key: bytes) -> bytes:
    return hmac.new(key, b"verp:" + raw, hashlib.sha256).digest()


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()
