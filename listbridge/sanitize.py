"""Text cleaning: HTML to plain text, and header values made safe for one line.

HTML is read by a small tokenizer of our own, in two passes over the text that each look at a
character a bounded number of times, whatever the markup: hostile mail (thousands of unclosed
`<head `, `<!--`, quotes, spliced `<scr<script></script>ipt>`) costs what a plain page of the
same size costs. It builds no tree, so nesting depth costs nothing either.
"""

from __future__ import annotations

import html
import re

# Control characters (CR and LF included) that must never survive in a one-line value, as a
# character-class body for other patterns to use too.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{CONTROL_CHARS}]+")
# The same, minus line feed and tab, for multi-line text (an ESC in a comment must not reach
# the moderator's terminal).
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")

# Elements whose content is not text for the reader. Unterminated, they run to the end, as in a
# browser; but for head, whose end tag is optional: without one, only what it holds is dropped.
_HIDDEN = "script|style|title|template"
_OPEN = {head: re.compile(rf"(?i)<({_HIDDEN}{head})\b") for head in ("|head", "")}
_EVENT = {head: re.compile(rf"(?i)<({_HIDDEN}{head})\b|</({_HIDDEN}{head})\s*>") for head in ("|head", "")}
_LONGEST_OPEN = len("<template")
# One token of markup or text, each of which always matches where it starts (an unterminated
# comment, declaration or tag runs to the end, as in a browser), so the scan never retries.
# Quotes count only around an attribute value, as in HTML5.
_TOKEN = re.compile(
    r"(?P<comment><!--(?:-?>|.*?(?:--!?>|\Z)))"
    r"|(?P<bogus><(?:[!?]|/(?![A-Za-z]))[^>]*>?)"
    r"|(?P<tag></?(?P<name>[A-Za-z][^\s/>]*)(?:[^>=]+|=\s*(?:\"[^\"]*\"?|'[^']*'?)?)*>?)"
    r"|(?P<text>(?:[^<]+|<(?![A-Za-z!?/]))+)",
    re.DOTALL,
)
# Tags that start or end a paragraph.
_BLOCKS = frozenset(
    {
        "p",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "ul",
        "ol",
        "tr",
        "blockquote",
        "pre",
        "table",
        "br",
        "hr",
    }
)
# A numeric character reference, for the ones too long for html.unescape (it raises past
# 4300 digits): leading zeros dropped, and anything past U+10FFFF is U+FFFD anyway.
_NUMERIC_REF = re.compile(r"&#(?:([xX])([0-9a-fA-F]+)|([0-9]+))(;?)")


def one_line(value: str, limit: int = 998) -> str:
    """A header value on one line: control characters folded to spaces, trimmed to `limit`."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit].rstrip()


def clean_text(text: str) -> str:
    """Multi-line text with one kind of line end and no control character but tab and LF."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    return _TEXT_CONTROL.sub(" ", text)


def html_to_text(markup: str) -> str:
    """Plain text from HTML: no tag survives, entities are unescaped, paragraphs are kept."""
    text = _markup_to_text(drop_hidden(markup))
    lines = [" ".join(line.split()) for line in clean_text(text).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def drop_hidden(markup: str) -> str:
    """`markup` without script, style, title, template and head elements, none of which is left
    in it, not even one spliced together by removing another ("<scr<script></script>ipt>"): after
    each removal, the end of what is kept is read again with what follows it.

    >>> drop_hidden("a<scr<script>x</script>ipt>alert(1)</script>b<style>c")
    'ab'
    """
    kept, rest = _drop_hidden(markup, "|head")
    if rest:  # a head left open: no </head> from there on, so read that part without heads
        kept += _drop_hidden(rest, "")[0]
    return kept


def _drop_hidden(markup: str, head: str) -> tuple[str, str]:
    """drop_hidden(), heads included or not (`head`: "|head" or ""): what is kept, and when
    a head is left open at the end, the markup from its opening on (else "")."""
    kept: list[str] = []
    hidden = ""  # the element we are inside, if any
    position = 0  # in `markup`: what comes before is in `kept` or dropped
    opened = ("", 0)  # where the element we are inside starts: the part cut off `kept`, then in `markup`
    for event in _EVENT[head].finditer(markup):
        if event.start() < position:
            continue
        if not hidden:
            if event.group(1):  # an opening; a stray end tag is left for the tokenizer
                if event.start() > position:
                    kept.append(markup[position : event.start()])
                hidden, position, opened = event.group(1).lower(), event.end(), ("", event.start())
        elif (event.group(2) or "").lower() == hidden:
            hidden, cut, end = _spliced_opening(kept, markup, event.end(), head)
            position, opened = end, (cut, event.end())
    if not hidden:
        kept.append(markup[position:])
    rest = opened[0] + markup[opened[1] :] if hidden == "head" else ""
    return "".join(kept), rest


def _spliced_opening(kept: list[str], markup: str, position: int, head: str) -> tuple[str, str, int]:
    """An opening made of the end of `kept` and `markup` from `position`, if there is one: its
    element, the part of it taken off `kept`, and where it ends in `markup`. Else ("", "", position)."""
    tail = ""
    for piece in reversed(kept):
        tail = piece[-_LONGEST_OPEN:] + tail
        if len(tail) >= _LONGEST_OPEN:
            break
    start = tail.rfind("<", max(0, len(tail) - _LONGEST_OPEN))
    if start < 0:
        return "", "", position
    start_of_it = tail[start:]
    opening = _OPEN[head].match(start_of_it + markup[position : position + _LONGEST_OPEN + 2])
    if opening is None:
        return "", "", position
    _cut(kept, len(start_of_it))
    return opening.group(1).lower(), start_of_it, position + max(0, opening.end() - len(start_of_it))


def _cut(pieces: list[str], size: int) -> None:
    """Take the last `size` characters off the joined `pieces`."""
    while size > 0:
        last = pieces.pop()
        if len(last) > size:
            pieces.append(last[: len(last) - size])
        size -= len(last)


def _markup_to_text(markup: str) -> str:
    """The text of `markup` with every tag, comment and declaration taken out, entities
    unescaped, and a paragraph break for each block tag."""
    out: list[str] = []
    for token in _TOKEN.finditer(markup):
        kind = token.lastgroup
        if kind == "text":
            out.append(_unescape(token.group(0)))
        elif kind == "tag" and token.group("name").lower() in _BLOCKS:
            out.append("\n\n")
    return "".join(out)


def _unescape(text: str) -> str:
    """html.unescape, also for numeric references of thousands of digits."""
    if "&" not in text:
        return text
    try:
        return html.unescape(text)
    except ValueError:
        return html.unescape(_NUMERIC_REF.sub(_short_ref, text))


def _short_ref(match: re.Match[str]) -> str:
    hexadecimal = match.group(1) is not None
    digits = (match.group(2) if hexadecimal else match.group(3)).lstrip("0") or "0"
    if len(digits) > 8:
        return "\ufffd"
    return ("&#x" if hexadecimal else "&#") + digits + match.group(4)


# Characters HTML makes a parse error of: controls (C0 but for tab, line ends and form feed,
# DEL, C1) and noncharacters; a browser shows them as boxes, or not at all. And lone
# surrogates, which UTF-8 cannot encode.
_NONCHARACTERS = "".join(chr(plane * 0x10000 + low) for plane in range(1, 17) for low in (0xFFFE, 0xFFFF))
_NOT_HTML = re.compile(f"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff{_NONCHARACTERS}]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def html_text(text: object) -> str:
    r"""`text` as HTML can hold it (the markup is jinja's autoescape's to escape).

    >>> html_text("a\x00b\x85c\ufffed\ud800") == "abcd\ufffd"
    True
    """
    return _LONE_SURROGATE.sub("\ufffd", _NOT_HTML.sub("", str(text)))
