"""html_to_text on markup built to be slow: its cost stays near-linear whatever the markup, and
what it guarantees (no tag, no hidden content, entities unescaped) still holds."""

from __future__ import annotations

import doctest
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listbridge import sanitize
from listbridge.sanitize import html_to_text

SIZE = 400_000
# Far above what any of these takes (well under a second each), far below the tens of seconds
# or minutes of a parser that rescans the text from each unclosed tag.
BOUND = 3.0


def repeat(unit: str, size: int = SIZE) -> str:
    return unit * (size // len(unit))


HOSTILE = {
    "unclosed head": repeat("<head "),
    "unclosed title": repeat("<title "),
    "unclosed template": repeat("<template "),
    "unclosed script": repeat("<script "),
    "opened scripts": repeat("<script>"),
    "unclosed titles after text": repeat("x<title>"),
    "unclosed comments": repeat("<!--"),
    "unclosed CDATA": repeat("<![CDATA["),
    "spliced script": "<scr" * 20_000 + "<script></script>" + "ipt></script>" * 20_000 + "ok",
    "spliced head": "<he" * 20_000 + "<head></head>" + "ad></head>" * 20_000 + "ok",
    "lone <": repeat("<"),
    "unclosed <a": repeat("<a "),
    "unclosed quotes": repeat('<a b="'),
    "alternate quotes": repeat("<a b=\"<a b='"),
    "deep nesting": repeat("<div>", SIZE // 2) + "x" + repeat("</div>", SIZE // 2),
    "unclosed end tags": repeat("</script "),
    "bare </": repeat("</"),
    "bare <!": repeat("<!"),
    "many equals": "<a " + "=" * SIZE,
    "text and removed scripts": "y" * SIZE + repeat("<script></script>"),
    "heads without end": repeat("<head><script>"),
    "long character references": "&#" + "1" * 5000 + ";&#x" + "0" * 10_000 + "41;",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_markup_is_read_in_bounded_time(name):
    markup = HOSTILE[name]
    started = time.monotonic()
    text = html_to_text(markup)
    assert time.monotonic() - started < BOUND, name
    assert not re.search(r"<[A-Za-z/!?]", text), text[:80]


def test_spliced_elements_nested_deep_leave_nothing_hidden():
    markup = "<scr" * 5000 + "<script>SECRET</script>" + "ipt>SECRET</script>" * 5000 + "shown"
    assert html_to_text(markup) == "shown"


@pytest.mark.parametrize(
    "markup, expected",
    [
        ("<head><title>T</title><meta charset=utf-8></head><body><p>Hi</p>", "Hi"),
        ("<html><head><meta charset=utf-8><body><p>no end of head</p>", "no end of head"),  # </head> is optional
        ("<head>hidden</head>a<head>b", "ab"),  # only from the head left open on
        ("<p>a</p><title>unterminated, as a browser hides it", "a"),
        ("<a title=\"x>y\" href='a<b'>link</a>", "link"),
        ('<a b"c>d', "d"),  # a quote outside a value is part of the name, as in HTML5
        ("a<!-->b<!--->c<!-- x -- y -->d", "abcd"),
        ("<!DOCTYPE html><?xml x?>a<![CDATA[b]]>c</ x>d", "acd"),
        ("&#1114112;&#x41;&#0000065;", "\ufffdAA"),
        ("&am<b>p;", "&amp;"),  # a reference is not joined across a removed tag
        ("<<b>a", "<a"),
    ],
)
def test_html_to_text_reads_markup_as_a_browser_shows_it(markup, expected):
    assert html_to_text(markup) == expected


_pieces = st.sampled_from(
    [
        "<",
        ">",
        "/",
        "!",
        "?",
        "-",
        "=",
        '"',
        "'",
        " ",
        "\n",
        "a",
        "x",
        "&",
        ";",
        "#",
        "1",
        "<script",
        "</script",
        "<scr",
        "ipt",
        "<style>",
        "</style>",
        "<title",
        "</title>",
        "<head",
        "</head>",
        "<!--",
        "-->",
        "<template>",
        "</template >",
        "<p>",
        "<br/>",
        "<![CDATA[",
        "]]>",
        "<a href=",
        "&amp;",
        "&#x3c;",
    ]
)


@settings(max_examples=1000)
@given(st.lists(_pieces, max_size=40).map("".join))
def test_no_hidden_element_survives_its_removal(markup):
    kept = sanitize.drop_hidden(markup)
    assert not re.search(r"(?i)<(script|style|title|template)\b", kept)
    assert sanitize.drop_hidden(kept) == kept


@settings(max_examples=1000)
@given(st.lists(_pieces, max_size=40).map("".join), st.text("SECRET", min_size=1, max_size=3))
def test_what_a_hidden_element_holds_is_never_text(markup, marker):
    secret = f"<script>{marker}SECRETSECRET</script><style>{marker}SECRETSECRET</style>"
    assert "SECRETSECRET" not in html_to_text(markup.replace("x", secret, 1))


def test_doctests_of_the_module_pass():
    result = doctest.testmod(sanitize)
    assert result.attempted > 0 and result.failed == 0
