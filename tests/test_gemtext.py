"""Gemtext safety: user text never becomes a link, heading, list item or preformatted toggle,
for a client that follows the spec and for sloppy clients that strip the start of a line."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from listbridge.gemtext import PREFIX, block, inline, link

SEPARATORS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u034f\u180e\u3164\u115f\u2800\u202e\u0301"
SPACES = " \t\u00a0\u2000\u2003\u202f\u3000"
MARKERS = ["=>", "=", ">", "#", "##", "###", "* ", "*", "*\t", "```", "``", "`", "-", "\\"]


# --- independent classifiers (written from the spec, not from the module) -------------------


def classify(line: str) -> str:
    """Gemini spec, section 5: the type is decided by the line's first characters."""
    if line.startswith("=>"):
        return "link"
    if line.startswith("```"):
        return "toggle"
    if line.startswith("#"):
        return "heading"
    if line.startswith("* "):
        return "list"
    if line.startswith(">"):
        return "quote"
    return "text"


def _sloppy_strip(line: str) -> str:
    """What a lenient client may drop before looking at a line: whitespace, zero-width and
    format characters, BOM, combining marks, blank fillers."""
    stripped = ("Cc", "Cf", "Cs", "Mn", "Mc", "Me", "Zs", "Zl", "Zp")
    i = 0
    while i < len(line) and (line[i].isspace() or line[i] in ZERO_WIDTH or unicodedata.category(line[i]) in stripped):
        i += 1
    return line[i:]


def classify_lenient(line: str) -> str:
    """A sloppy client: strips the start, accepts `*` + any whitespace, and even `` ` ``."""
    line = _sloppy_strip(line)
    if line.startswith(("=>", "= >")):
        return "link"
    if line.startswith("`"):
        return "toggle"
    if line.startswith(("#", "＃")):
        return "heading"
    if line.startswith("*") and (len(line) == 1 or line[1].isspace()):
        return "list"
    return classify(line)


def classify_squeezed(line: str) -> str:
    """A client that deletes every format/zero-width character anywhere before parsing."""
    return classify_lenient("".join(c for c in line if c not in ZERO_WIDTH and unicodedata.category(c) != "Cf"))


def assert_safe(line: str) -> None:
    assert isinstance(line, str)
    assert line.splitlines() in ([line], []), repr(line)
    bad = ("Cc", "Cs", "Zl", "Zp")
    assert not any(unicodedata.category(c) in bad and c != "\t" for c in line), repr(line)
    for classifier in (classify, classify_lenient, classify_squeezed):
        assert classifier(line) in ("text", "quote"), (classifier.__name__, repr(line))


# --- strategies --------------------------------------------------------------------------------

pieces = st.one_of(
    st.sampled_from(MARKERS),
    st.sampled_from(list(SEPARATORS) + ["\r\n"]),
    st.sampled_from(list(ZERO_WIDTH)),
    st.sampled_from(list(SPACES)),
    st.text(min_size=0, max_size=5),
    st.sampled_from(["gemini://evil.example/", "Titre", "é", "\x1b[31m", "\x00", "\ud800"]),
)
crafted = st.lists(pieces, max_size=25).map("".join)
any_text = st.one_of(st.text(), crafted)


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=500)
@given(any_text)
@example("=> gemini://evil.example/ click")
@example("\u200b# heading")
@example("\ufeff```")
@example("x\u2028=> gemini://evil")
@example("a\x85* item")
def test_block_lines_are_text_or_quote(text: str) -> None:
    lines = block(text)
    for line in lines:
        assert_safe(line)
    # Blank lines kept, never two in a row, none at either end.
    assert all(lines[i] or lines[i + 1] for i in range(len(lines) - 1))
    assert not lines or (lines[0] and lines[-1])
    # Joining with LF and splitting again gives the same lines: nothing can start a new one.
    assert "\n".join(lines).split("\n") == (lines or [""])


@settings(max_examples=500)
@given(any_text, st.one_of(st.none(), st.integers(min_value=0, max_value=40)))
def test_inline_is_one_safe_line(text: str, limit: int | None) -> None:
    line = inline(text, limit)
    assert_safe(line)
    assert line == line.strip()
    assert "  " not in line
    if limit is not None:
        assert len(line) <= limit


@given(any_text, any_text)
def test_link_is_a_link_with_no_whitespace_in_the_url(url: str, label: str) -> None:
    if not url.strip():
        with pytest.raises(ValueError):
            link(url, label)
        return
    line = link(url, label)
    assert classify(line) == "link"
    assert line.splitlines() == [line]
    target = line[3:].split(" ", 1)[0]
    assert target and target.isascii() and not any(c.isspace() or ord(c) < 32 for c in target)
    assert line[3 + len(target) :].strip() == inline(label)


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Mn", "Me", "Mc")), min_size=1))
def test_ordinary_lines_are_kept_as_written(line: str) -> None:
    if line[0] in "=#*`":
        assert block(line) == [PREFIX + line]
    else:
        assert block(line) == [line]


# --- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("=> gemini://evil.example/ Click", ["\\=> gemini://evil.example/ Click"]),
        ("# Title\n## Sub\n### Subsub", ["\\# Title", "\\## Sub", "\\### Subsub"]),
        ("* one\n* two", ["\\* one", "\\* two"]),
        ("```\ncode\n```", ["\\```", "code", "\\```"]),
        ("   # indented", ["\\# indented"]),
        ("\ufeff\u200b=> hidden", ["\\=> hidden"]),
        ("\t* tabbed", ["\\* tabbed"]),
        ("> a quote\n\nmy answer", ["> a quote", "", "my answer"]),
        ("  > indented quote", ["  > indented quote"]),
        ("a\r\nb\rc\u2028d\x85e", ["a", "b", "c", "d", "e"]),
        ("a\n\n\n\n\nb\n\n", ["a", "", "b"]),
        ("\n\n  \nstart", ["start"]),
        ("a\x1b[31mred", ["a [31mred"]),
        ("Merci ! *vraiment* :)", ["Merci ! *vraiment* :)"]),
        ("*vraiment* merci", ["\\*vraiment* merci"]),
        ("trailing   ", ["trailing"]),
        ("\u200b\n\u3164\nx", ["x"]),
    ],
)
def test_block_examples(text: str, expected: list[str]) -> None:
    assert block(text) == expected


def test_inline_examples() -> None:
    assert inline("Carole  Dupont") == "Carole Dupont"
    assert inline("=?utf-8?q?x?=\r\n# Evil") == "\\=?utf-8?q?x?= # Evil"
    assert inline("Carole =) # 1") == "Carole =) # 1"
    assert inline("# Evil\r\n=> gemini://x") == "\\# Evil => gemini://x"
    assert inline("\u200b=> x") == "\\=> x"
    assert inline("") == ""
    assert inline("\U0001fae8 new emoji") == "\U0001fae8 new emoji"
    assert inline("\u200b \u2028 ") == ""
    assert inline("Comment les 3hg ont réparé le CHATONS", limit=12) == "Comment les…"
    assert inline("abc", limit=3) == "abc"
    assert inline("abcd", limit=0) == ""


def test_link_examples() -> None:
    assert link("/log/commentaires/", "Read the archive") == "=> /log/commentaires/ Read the archive"
    assert link("gemini://h/log/Comment-les-3hg-ont-réparé-le-CHATONS.gmi", "2026-03-12 Comment") == (
        "=> gemini://h/log/Comment-les-3hg-ont-r%C3%A9par%C3%A9-le-CHATONS.gmi 2026-03-12 Comment"
    )
    assert link("a b%20c%zz", "") == "=> a%20b%20c%25zz"
    assert link("/x", "two\nlines") == "=> /x two lines"
    with pytest.raises(ValueError):
        link("  ", "label")
