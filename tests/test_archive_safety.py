"""Property tests at the page level: whatever commenters and post titles hold, the archive pages
keep the shape the templates give them (gemtext has no escape character, so a line's type is all
there is), and the Atom feed stays well-formed XML.

A line's type is judged as a sloppy client would: after skipping leading whitespace and
invisible characters, and splitting on every Unicode line separator (not only LF).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import unicodedata
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import feedparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listbridge.archive import pages
from listbridge.archive.pages import PublishedComment, PublishedPost
from listbridge.config import build_settings

BASE = build_settings({"lists": [{"address": "bla@bla.example.org", "title": "bla", "language": "fr"}]})
SITE = BASE.site
ATOM = "{http://www.w3.org/2005/Atom}"

WORDS = {
    "fr": {
        "title": "# Commentaires : ",
        "index_title": "# Commentaires sur ",
        "back": "Retour au billet",
        "all": "Tous les commentaires",
        "mail": "Envoyer un commentaire par courriel",
        "anonymous": "Anonyme",
        "removed": "(Ce commentaire a été retiré à la demande de son auteur.)",
    },
    "en": {
        "title": "# Comments: ",
        "index_title": "# Comments on ",
        "back": "Back to the post",
        "all": "All the comments",
        "mail": "Send a comment by mail",
        "anonymous": "Anonymous",
        "removed": "(This comment was removed at its author's request.)",
    },
}


def attachments_note(language: str, n: int) -> str:
    s = "s" if n > 1 else ""
    if language == "fr":
        return f"({n} pièce{s} jointe{s} non publiée{s})"
    return f"({n} attachment{s} not published)"


# --- what a client might not show at the start of a line ------------------------------------

_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"}
_BLANKS = set("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")


def invisible(char: str) -> bool:
    return char.isspace() or char in _BLANKS or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def visible_start(line: str) -> str:
    """The line from its first visible character on ('' when there is none)."""
    for index, char in enumerate(line):
        if not invisible(char):
            return line[index:]
    return ""


def visible_chars(text: str) -> str:
    """The characters a reader sees, in order, backslashes left out (the neutralising prefix)."""
    text = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)
    return "".join(c for c in text if not invisible(c) and c != "\\")


def page_lines(page: str) -> list[str]:
    """The page's lines, checking no line separator other than LF hides in it."""
    assert page.endswith("\n"), repr(page[-40:])
    lines = page.split("\n")[:-1]
    assert page.splitlines() == lines, "a line separator other than LF is in the page"
    controls = {c for c in page if c != "\n" and unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")}
    assert not controls, f"control characters in the page: {sorted(controls)!r}"
    return lines


def kind(line: str) -> str:
    """link / heading / list / pre / quote / text, by the visible start, for a lenient client."""
    start = visible_start(line)
    if start.startswith("="):
        return "link"
    if start.startswith("#"):
        return "heading"
    if start.startswith("*"):
        return "list"
    if start.startswith("`"):
        return "pre"
    return "text"


# --- strategies ---------------------------------------------------------------------------

INVISIBLES = [
    " ",
    "  ",
    "\t",
    "\u00a0",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u3000",
    "\u2800",
    "\u3164",
    "\u115f",
    "\u034f",
    "\u0301",
    "\u180e",
    "\u202e",
    "\x00",
    "\x0b",
    "\x7f",
    "\xad",
]
MARKERS = [
    "=>",
    "=",
    "=> gemini://evil.example/ x",
    "#",
    "##",
    "### ",
    "* ",
    "*",
    "```",
    "```python",
    "`",
    ">",
    "> =>",
    "",
    "\\",
    "\\#",
]
SEPARATORS = ["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\n\n\n"]

rich_line = st.builds(
    lambda prefix, marker, rest: "".join(prefix) + marker + rest,
    st.lists(st.sampled_from(INVISIBLES), max_size=3),
    st.sampled_from(MARKERS),
    st.text(max_size=12),
)
rich_text = st.builds(
    lambda lines, seps: "".join(line + seps[i % len(seps)] for i, line in enumerate(lines)),
    st.lists(rich_line, max_size=8),
    st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=4),
)
# Lone surrogates: the gemtext helpers turn them into U+FFFD; the database cannot store them
# (UTF-8), so the feed, which only ever gets database text, is tested without them.
xml_text = st.one_of(st.text(), rich_text)
with_surrogates = st.builds(lambda text, s: text + s, rich_text, st.sampled_from(["\udc80", "\ud800=>", "\udce9"]))
any_text = st.one_of(xml_text, with_surrogates, st.text(st.characters(codec=None, categories=None), max_size=30))
slug_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)
dates = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2035, 12, 31))


def comments_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[tuple]:
    """(author, date, text, attachments, removed)"""
    return st.tuples(text, dates, text, st.integers(0, 3), st.booleans())


comment_st = comments_of(any_text)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def a_list(language: str, title: str = "bla"):
    return dataclasses.replace(BASE.lists[0], language=language, title=title)


# --- the post page --------------------------------------------------------------------------


@PROPERTY
@given(
    language=st.sampled_from(["fr", "en"]),
    slug=slug_text,
    title=any_text,
    raw_comments=st.lists(comment_st, max_size=5),
)
def test_post_page_has_only_the_template_lines(language, slug, title, raw_comments):
    words = WORDS[language]
    mlist = a_list(language)
    comments = [PublishedComment(i + 1, a, w, t, n, r) for i, (a, w, t, n, r) in enumerate(raw_comments)]
    post = PublishedPost(slug, title, f"log/{slug}.gmi", dt.datetime(2030, 1, 1), len(comments))
    page = pages.post_page(mlist, SITE, post, comments)
    lines = page_lines(page)

    # Links: exactly the three the template makes, at their places.
    links = [line for line in lines if kind(line) == "link"]
    assert len(links) == 3, links
    back, index, mail = links
    assert (lines[2], lines[3], lines[-1]) == (back, index, mail)
    for line, label in ((back, words["back"]), (index, words["all"]), (mail, words["mail"])):
        url, _, rest = line.removeprefix("=> ").partition(" ")
        assert line.startswith("=> ") and rest == label, line
        assert url.isascii() and url.isprintable() and " " not in url, url
    assert unquote(back.split()[1]) == f"/log/{slug}.gmi"
    assert index.split()[1] == "index.gmi"
    assert unquote(mail.split()[1]) == f"mailto:bla@bla.example.org?subject={slug}"

    # Headings: the page title, then one `## ` per comment, oldest first.
    headings = [i for i, line in enumerate(lines) if kind(line) == "heading"]
    assert headings[0] == 0 and lines[0].startswith(words["title"]) and not lines[0].startswith("##")
    assert len(headings) == 1 + len(comments), [lines[i] for i in headings]
    ordered = sorted(comments, key=lambda c: (c.date, c.id))
    for at, c in zip(headings[1:], ordered, strict=True):
        assert lines[at].startswith("## ") and lines[at].endswith(f", {c.date:%Y-%m-%d}"), lines[at]
        assert lines[at - 1] == ""  # a blank line before each comment
        name = lines[at].removeprefix("## ").removesuffix(f", {c.date:%Y-%m-%d}")
        assert len(name) <= 120
        if not c.author:
            assert name == words["anonymous"]

    # No list item, no preformatted toggle anywhere.
    assert [line for line in lines if kind(line) in ("list", "pre")] == []
    assert lines[1] == "" and lines[-2] == ""

    # Each comment's text sits under its own heading, neutralised but complete.
    bounds = headings[1:] + [len(lines) - 2]
    for k, c in enumerate(ordered):
        section = lines[bounds[k] + 1 : bounds[k + 1]]
        if k + 1 < len(ordered):
            assert section and section[-1] == "", section  # the blank line before the next heading
            section = section[:-1]
        if c.removed:
            assert section == [words["removed"]]
            continue
        if c.attachments:
            assert section and section[-1] == attachments_note(language, c.attachments), section
            section = section[:-1]
        assert all(kind(line) == "text" for line in section), section
        assert "" not in section[:1] + section[-1:], section  # no blank line at either end
        assert all(a or b for a, b in itertools.pairwise(section)), section  # never two blank lines
        assert visible_chars("\n".join(section)) == visible_chars(c.text)


# --- the index ------------------------------------------------------------------------------

post_st = st.builds(
    lambda slug, title, last, count: (slug, title, last, count),
    slug_text,
    any_text,
    dates,
    st.integers(1, 500),
)


@PROPERTY
@given(
    language=st.sampled_from(["fr", "en"]),
    list_title=any_text,
    raw_posts=st.lists(post_st, max_size=6, unique_by=lambda p: p[0]),
)
def test_index_page_has_one_link_per_post(language, list_title, raw_posts):
    words = WORDS[language]
    mlist = a_list(language, list_title)
    posts = [PublishedPost(s, t, f"log/{s}.gmi", last, n) for s, t, last, n in raw_posts]
    page = pages.index_page(mlist, SITE, posts)
    lines = page_lines(page)

    assert lines[0].startswith(words["index_title"])
    assert [line for line in lines if kind(line) == "heading"] == [lines[0]]
    assert [line for line in lines if kind(line) in ("list", "pre")] == []
    links = [line for line in lines if kind(line) == "link"]
    assert len(links) == len(posts)
    ordered = sorted(posts, key=lambda p: (p.last, p.slug), reverse=True)
    for line, p in zip(links, ordered, strict=True):
        assert line.startswith("=> "), line
        url, _, label = line.removeprefix("=> ").partition(" ")
        assert url.isascii() and url.isprintable() and " " not in url, url
        assert unquote(url) == f"{p.slug}.gmi"
        assert label.startswith(f"{p.last:%Y-%m-%d} ") and label.endswith(f" ({p.count})")
    assert lines[1:] == [""] + links  # title, blank line, the links: nothing else


# --- the Atom feed --------------------------------------------------------------------------


def child_text(element: ET.Element, path: str) -> str:
    """The text of the child at `path`, which must exist ("" when it has none)."""
    child = element.find(path)
    assert child is not None, f"no {path}"
    return child.text or ""


def _xml_text(text: str) -> str:
    """What an XML parser gives back for `text` once the feed dropped what XML 1.0 forbids."""
    kept = "".join(c for c in text if c in "\t\n\r" or not (ord(c) < 0x20 or c in "\ufffe\uffff"))
    return kept.replace("\r\n", "\n").replace("\r", "\n")


@PROPERTY
@given(
    language=st.sampled_from(["fr", "en"]),
    list_title=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))),
    items=st.lists(st.tuples(slug_text, xml_text, comments_of(xml_text)), max_size=8),
)
def test_atom_feed_is_xml_and_feedparser_agrees(language, list_title, items):
    mlist = a_list(language, list_title)
    latest = []
    for i, (slug, title, (author, when, text, attachments, removed)) in enumerate(items):
        post = PublishedPost(slug, title, f"log/{slug}.gmi", when, 1)
        latest.append((post, PublishedComment(i + 1, author, when, text, attachments, removed)))
    feed = pages.atom_feed(mlist, SITE, latest)

    root = ET.fromstring(feed.encode("utf-8"))  # raises on anything not well-formed
    entries = root.findall(f"{ATOM}entry")
    assert len(entries) == min(len(latest), pages.FEED_ENTRIES)
    newest_first = sorted(latest, key=lambda pc: (pc[1].date, pc[1].id), reverse=True)
    for entry, (_, c) in zip(entries, newest_first, strict=False):  # the feed keeps the newest
        content = child_text(entry, f"{ATOM}content")
        assert content == ("" if c.removed else _xml_text(c.text))
        name = child_text(entry, f"{ATOM}author/{ATOM}name")
        assert name == (_xml_text(c.author).strip() or WORDS[language]["anonymous"])
        assert child_text(entry, f"{ATOM}id").endswith(f"#comment-{c.id}")

    parsed = feedparser.parse(feed)
    assert len(parsed.entries) == len(entries)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_known_smuggling_attempts_are_neutralised(language):
    """Fixed examples, so the property tests' oracle is itself checked against plain cases."""
    words = WORDS[language]
    text = "ok\n=> gemini://evil/ x\r\n\u200b# h\u2028* li\x85```\n  => y\n\ufeff=z"
    post = PublishedPost("p", "=> t", "log/p.gmi", dt.datetime(2024, 1, 1), 1)
    page = pages.post_page(
        a_list(language), SITE, post, [PublishedComment(1, "# Eve\n=> x", dt.datetime(2024, 1, 1), text)]
    )
    lines = page_lines(page)
    assert lines[0] == words["title"] + "\\=> t"
    assert "## \\# Eve => x, 2024-01-01" in lines
    for expected in ("ok", "\\=> gemini://evil/ x", "\\# h", "\\* li", "\\```", "\\=> y", "\\=z"):
        assert expected in lines
    assert sum(kind(line) == "link" for line in lines) == 3


def test_atom_feed_keeps_the_latest_entries_only():
    latest = []
    for i in range(pages.FEED_ENTRIES + 5):
        post = PublishedPost(f"p{i % 3}", f"T\x01{i}", f"log/p{i % 3}.gmi", dt.datetime(2024, 1, 1), 1)
        latest.append((post, PublishedComment(i + 1, f"n\x1b{i}", dt.datetime(2024, 1, 1, 0, i), f"x\x00{i}\ufffe")))
    feed = pages.atom_feed(a_list("en"), SITE, latest)
    entries = ET.fromstring(feed.encode("utf-8")).findall(f"{ATOM}entry")
    assert len(entries) == pages.FEED_ENTRIES
    assert child_text(entries[0], f"{ATOM}content") == f"x{len(latest) - 1}"  # newest first
    parsed = feedparser.parse(feed)
    assert not parsed.bozo, parsed.bozo_exception
    assert len(parsed.entries) == pages.FEED_ENTRIES
    assert parsed.entries[0].author == f"n{len(latest) - 1}"
