"""A comment's text as it will be published: no signature, no trailing quoted reply. Pure.

Inline quotes (`>` lines followed by the author's own text) are kept as they are; only what
hangs at the end goes: the quoted reply (`>` lines and blank lines up to the end), an Outlook
`-----Original Message-----` block, a signature after `-- `, a "Sent from my iPhone". An
attribution line that introduces a quote (`On … wrote:`, `Le … a écrit :`, possibly wrapped
over two lines) goes wherever it is: it often carries an address. A token quoted from a list
mail (a one-click link, an unsubscribe address) is masked wherever it is.

>>> clean("Merci !\\r\\n\\r\\nLe 12 mars 2026 à 10:00, Carole <c@x> a écrit :\\r\\n> Bonjour\\r\\n")
'Merci !'
>>> clean("> One click: https://l.example/unsubscribe/abcdefghijklmnopqrstuvwxyz\\nSo true.")
'> One click: https://l.example/unsubscribe/…\\nSo true.'
>>> clean("> bla+unsubscribe-abcdefghijklmnopqrstuvwxyz@l.example\\nYes, confirm-internationalization")
'> bla+unsubscribe-…@l.example\\nYes, confirm-internationalization'
"""

from __future__ import annotations

import re

# `-- ` is the signature separator; `--` is the same after a client trimmed the space.
_SIGNATURE = re.compile(r"^--[ \u00a0]?$")
# The header of a top-posted reply whose quote is not marked with '>' (Outlook and friends):
# everything from there to the end is the old message.
_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(?:original message|message d'origine|message original|ursprüngliche nachricht"
    r"|mensaje original|messaggio originale)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*_{10,}\s*$")  # Outlook's line of underscores, followed by From:/De :
_HEADER = re.compile(r"^\s*(?:from|de|von|da)\s*:", re.IGNORECASE)
_WROTE = r"(?:wrote|a\s+écrit|schrieb|escribió|ha\s+scritto|skrev|schreef)\s*:\s*$"
# An attribution: "On <date>, <name> wrote:", "Le <date>, <name> a écrit :", … (it has a date,
# so a digit), "<name> <address> wrote:", or a short "<name> wrote:" with no sentence in it.
# Written so that a long line costs linear time: the digit is the first one, and the address
# splits at its first "@" after the first character (the same lines match).
_ATTRIBUTION = re.compile(
    rf"^(?:(?:on|le|am|el|il|op|den|dne)\s\D*\d.*\s{_WROTE}"
    rf"|[^>\s].{{0,120}}<[^<>\s][^<>\s@]*@[^<>\s]+>\s*{_WROTE}"
    rf"|[^>\s][^.!?]{{0,60}}\s{_WROTE})",
    re.IGNORECASE,
)
# Rounds of dropping attributions and what hangs at the end, each linear in the text: as many
# as it takes (each drops a line at least) while they read ROUNDS_BUDGET characters in all,
# and MIN_ROUNDS whatever the size. A real mail is done in two or three; what a hostile one
# stacks beyond that stays in its text.
ROUNDS_BUDGET = 2_000_000
MIN_ROUNDS = 10
_MOBILE = re.compile(
    r"^(?:sent from my|envoyé de mon|envoyé depuis mon|von meinem|enviado desde mi)\s.{1,40}$",
    re.IGNORECASE,
)


# A token of the reader's own, quoted from a list mail's footer (an inline quote is kept):
# unsubscribe/TOKEN of a one-click link, unsubscribe-TOKEN (or enable-, confirm-) of an
# address. Published, it would let anyone act for that reader.
_SECRET = re.compile(
    r"(/unsubscribe/)[a-z2-7]{26}(?![a-z2-7])|([+\-](?:unsubscribe|enable|confirm|approve|reject)-)[a-z2-7]{26}(?=@)",
    re.IGNORECASE,
)


def _quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _cut_at_signature_or_original(lines: list[str]) -> list[str]:
    """Lines before the first signature separator or old-message header outside quotes."""
    for index, line in enumerate(lines):
        if line.lstrip()[:1] not in ("-", "_"):  # what all three patterns start with
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if _SIGNATURE.match(line) or _ORIGINAL.match(line) or (_RULE.match(line) and _HEADER.match(following)):
            return lines[:index]
    return lines


def _next_is_quoted(lines: list[str], index: int) -> bool:
    """True when the first non-blank line from `index` on is a quoted line."""
    for position in range(index, len(lines)):
        if lines[position].strip():
            return _quoted(lines[position])
    return False


def _attribution_size(lines: list[str], index: int) -> int:
    """How many lines (0, 1 or 2) from `index` form an attribution followed by a quote."""
    line = lines[index].strip()
    if not line:  # an attribution starts with a visible character
        return 0
    if _next_is_quoted(lines, index + 1) and _ATTRIBUTION.match(line):
        return 1
    if index + 1 < len(lines) and not line.endswith((".", "!", "?", "…")):
        joined = f"{line} {lines[index + 1].strip()}"  # wrapped over two lines (Gmail)
        if _next_is_quoted(lines, index + 2) and _ATTRIBUTION.match(joined):
            return 2
    return 0


def _drop_attributions(lines: list[str]) -> list[str]:
    """Lines without the attributions that introduce a quote (they may carry an address)."""
    if not any(map(_quoted, lines)):
        return lines  # no quote, so nothing introduces one
    kept: list[str] = []
    index = 0
    while index < len(lines):
        size = _attribution_size(lines, index)
        if not size:
            kept.append(lines[index])
        index += size or 1
    return kept


def _drop_trailing_quote(lines: list[str]) -> list[str]:
    """Lines without the trailing run of `>` and blank lines."""
    end = len(lines)
    while end and (not lines[end - 1].strip() or _quoted(lines[end - 1])):
        end -= 1
    return lines[:end]


def _trim_blank_ends(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start]:
        start += 1
    while end > start and not lines[end - 1]:
        end -= 1
    return lines[start:end]


def _once(lines: list[str]) -> list[str]:
    lines = _trim_blank_ends(_drop_trailing_quote(_drop_attributions(lines)))
    if lines and _MOBILE.match(lines[-1].strip()):
        lines = lines[:-1]
    return lines


def clean(text: str) -> str:
    """The comment as it will be published (LF line ends, no trailing whitespace)."""
    text = _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "…", text)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = _cut_at_signature_or_original([line.rstrip() for line in lines])
    for _ in range(max(MIN_ROUNDS, ROUNDS_BUDGET // (len(text) + 1))):  # a dropped part can uncover another
        shorter = _once(lines)
        if shorter == lines:
            break
        lines = shorter
    return "\n".join(lines)
