"""Text cleaning: HTML to plain text with bleach, and header values made safe for one line."""

from __future__ import annotations

import html
import re

import bleach

# Control characters (CR and LF included) that must never survive in a one-line value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_BLOCK_END = re.compile(r"(?i)</(p|div|h[1-6]|li|tr|blockquote|pre|table)\s*>|<br\s*/?>|<hr\s*/?>")
_SCRIPTS = re.compile(r"(?is)<(script|style|head)\b.*?</\1\s*>")


def one_line(value: str, limit: int = 998) -> str:
    """A header value on one line: control characters folded to spaces, trimmed to `limit`."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def html_to_text(markup: str) -> str:
    """Plain text from HTML: no tag survives, entities are unescaped, paragraphs are kept."""
    markup = _SCRIPTS.sub("", markup)
    markup = _BLOCK_END.sub("\n\n", markup)
    text = html.unescape(bleach.clean(markup, tags=set(), attributes={}, strip=True, strip_comments=True))
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
