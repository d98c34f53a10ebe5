"""Text cleaning: HTML to plain text with bleach, and header values made safe for one line."""

from __future__ import annotations

import html
import re

import bleach

# Control characters (CR and LF included) that must never survive in a one-line value, as a
# character-class body for other patterns to use too.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{CONTROL_CHARS}]+")
# The same, minus line feed and tab, for multi-line text (an ESC in a comment must not reach
# the moderator's terminal).
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")
# Paragraph breaks: the start or end of a block element, <br> and <hr>.
_BLOCK = re.compile(r"(?i)</?(p|div|h[1-6]|li|ul|ol|tr|blockquote|pre|table)\b[^>]*>|<br\b[^>]*>|<hr\b[^>]*>")
# Elements whose content is not text for the reader. An unterminated script or style runs to
# the end, as in a browser; an unterminated head or title is left for bleach to strip.
_SCRIPTS = re.compile(r"(?is)<(script|style)\b.*?(?:</\1\s*>|\Z)|<(head|title|template)\b.*?</\2\s*>")


def one_line(value: str, limit: int = 998) -> str:
    """A header value on one line: control characters folded to spaces, trimmed to `limit`."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit].rstrip()


def clean_text(text: str) -> str:
    """Multi-line text with one kind of line end and no control character but tab and LF."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    return _TEXT_CONTROL.sub(" ", text)


def html_to_text(markup: str) -> str:
    """Plain text from HTML: no tag survives, entities are unescaped, paragraphs are kept."""
    # Repeated until stable: removing one element must not splice a new one together
    # ("<scr<script></script>ipt>").
    while True:
        stripped = _SCRIPTS.sub("", markup)
        if stripped == markup:
            break
        markup = stripped
    markup = _BLOCK.sub("\n\n", clean_text(markup))
    text = html.unescape(bleach.clean(markup, tags=set(), attributes={}, strip=True, strip_comments=True))
    lines = [" ".join(line.split()) for line in clean_text(text).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
