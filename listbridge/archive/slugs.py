"""Slugs: case- and accent-insensitive keys for matching a mail subject to a post. Pure.

>>> slugify("Comment les 3hg ont réparé le CHATONS?")
'comment-les-3hg-ont-repare-le-chatons'
>>> subject_key("Re: [bla] TR: Comment les 3hg ont réparé le CHATONS ?")
'comment-les-3hg-ont-repare-le-chatons'
>>> subject_key("=?utf-8?q?Comment_les_3hg_ont_r=C3=A9par=C3=A9_le_CHATONS?=")
'comment-les-3hg-ont-repare-le-chatons'
"""

from __future__ import annotations

import re
import unicodedata
from email.errors import HeaderParseError
from email.header import decode_header, make_header

# Latin letters that NFKD does not split into a base letter and a mark.
_LETTERS = str.maketrans(
    {
        "æ": "ae",
        "œ": "oe",
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "ł": "l",
        "ı": "i",
        "ħ": "h",
        "ŧ": "t",
        "ŋ": "n",
        "ĸ": "k",
    }
)
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")

# One reply/forward prefix ("Re:", "RE :", "Re[2]:", "Fwd:", "TR:", "AW:", "Réf.:", …) or one
# "[list]" tag, with the whitespace around it.
_PREFIX = re.compile(
    r"""^\s*(?:
        (?:re|fwd?|tr|aw|wg|sv|vs|antw|r[ée]f\.?)\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]
        | \[[^\]]*\]
    )\s*""",
    re.IGNORECASE | re.VERBOSE,
)


def slugify(text: str) -> str:
    """Lower-case ASCII key: accents dropped, every run of other characters becomes one '-'.

    Letters with no ASCII base (Greek, Cyrillic, CJK…) are dropped like punctuation.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_LETTERS))
    if decomposed.isascii():  # nothing to drop: most subjects
        ascii_text = decomposed
    else:
        ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_ALNUM.sub("-", ascii_text.lower()).strip("-")


def decode_subject(subject: str) -> str:
    """A subject with any raw RFC 2047 encoded-words decoded; unchanged when it has none
    or when they cannot be decoded."""
    if "=?" not in subject:
        return subject
    try:
        return str(make_header(decode_header(subject)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return subject


def strip_prefixes(subject: str) -> str:
    """The subject without its leading Re:/Fwd:/TR:/AW:/Réf:/[list] prefixes, any number."""
    while True:
        stripped = _PREFIX.sub("", subject, count=1)
        if stripped == subject:
            return subject.strip()
        subject = stripped


def subject_key(subject: str) -> str:
    """The slug a subject points at: decoded, prefixes stripped, then `slugify()`."""
    return slugify(strip_prefixes(decode_subject(subject)))
