"""Gemtext made from user text, safe by construction. Pure functions, no I/O.

Gemtext has no escape character: a line's type is decided by its first characters. So every
line of user text is checked at its *visible start*, that is after skipping whatever a sloppy
client might strip (whitespace, zero-width and format characters, a BOM, combining marks,
blank fillers). When the visible start is a marker character (`=`, `#`, `*` or a backtick),
the line's invisible start is replaced by the visible prefix `\\`, so it is a text line for
every client (`\\# not a heading`, `\\=> not a link`). Other lines are kept as written. A `>`
start stays a quote line: quote lines are terminal and harmless. Line separators (everything
`str.splitlines()` splits on) and other control characters can only end a line or become a
space, never start a new one inside a line.

>>> block("# Title\\n=> gemini://x\\n\\u200b* item\\n> quoted\\nplain")
['\\\\# Title', '\\\\=> gemini://x', '\\\\* item', '> quoted', 'plain']
>>> inline("  Re:\\r\\n=> evil  ")
'Re: => evil'
>>> link("/log/Comment réparé.gmi", "# Comment réparé")
'=> /log/Comment%20r%C3%A9par%C3%A9.gmi \\\\# Comment réparé'
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

PREFIX = "\\"
"""Put in front of a line whose visible start is a marker; visible, ASCII, never a marker."""

MARKER_CHARS = frozenset("=#*`")
"""First visible characters that get the prefix: broader than the spec's markers on purpose."""

# Characters that render as nothing (or as a blank) although they are not "whitespace" or "Cf":
# Default_Ignorable_Code_Point letters and marks, Hangul fillers, the braille blank.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"})
_BLANKS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")


def _invisible(char: str) -> bool:
    """True for a character a client might strip or not render at the start of a line."""
    return char.isspace() or char in _BLANKS or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def _visible_start(line: str) -> int:
    """Index of the first character of `line` that is not invisible (len(line) if none)."""
    for index, char in enumerate(line):
        if not _invisible(char):
            return index
    return len(line)


def _clean_chars(line: str) -> str:
    """One line's characters: tabs expanded, controls to spaces, lone surrogates to U+FFFD."""
    out = []
    for char in line.expandtabs(4):
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif category == "Cs":
            out.append("\ufffd")
        else:
            out.append(char)
    return "".join(out)


def _neutral(line: str) -> str:
    """A line (no separator in it) that is a text or quote line for any client; '' if blank."""
    line = line.rstrip()
    start = _visible_start(line)
    if start == len(line):
        return ""
    if line[start] in MARKER_CHARS:
        return PREFIX + line[start:]
    return line


def inline(text: str, limit: int | None = None) -> str:
    """One safe line (a name, a subject): whitespace and separators folded to single spaces.

    With `limit`, the result is at most `limit` characters, ending with '…' when cut.
    """
    line = _neutral(" ".join(_clean_chars(text).split()))
    if limit is not None and len(line) > limit:
        line = _neutral(line[: limit - 1].rstrip() + "…") if limit > 0 else ""
    return line


def block(text: str) -> list[str]:
    """A body as safe lines: no blank line at either end, never two blank lines in a row."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = _neutral(_clean_chars(raw))
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


# Characters kept as they are in a URL: RFC 3986 unreserved, reserved, and '%' (see below).
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def link(url: str, label: str) -> str:
    """A `=> URL label` line we generate: the URL percent-encoded (no whitespace, ASCII only),
    an existing `%XX` kept, the label made safe with `inline()`."""
    url = re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", url.strip())
    encoded = quote(url, safe=_URL_SAFE, errors="surrogatepass")
    if not encoded:
        raise ValueError("a link needs a URL")
    name = inline(label)
    return f"=> {encoded} {name}" if name else f"=> {encoded}"
