"""The HTML pages of a www site ([site] formats = ["gemtext", "html"]): whatever commenters
and titles hold, a page parses as HTML5 without one error, holds only the elements and
attributes its template writes (no script, no handler, no javascript: link), and shows the
text as it was written. Then a real serve writes them into a real git repo, with the status
pages, and headless Chromium shows the comment and runs nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess
import warnings
from pathlib import Path

import html5lib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_archive_safety import any_text, comment_st, slug_text

from listbridge.archive import pages
from listbridge.archive.pages import PublishedComment, PublishedPost
from listbridge.config import ConfigWarning, build_settings
from listbridge.sanitize import html_text

from helpers import git, send, site_repo, wait_for

BASE = build_settings({"site": {"formats": ["gemtext", "html"]}, "lists": [{"address": "bla@bla.example.org"}]})
XHTML = "{http://www.w3.org/1999/xhtml}"
# What the templates write, and nothing else may appear.
ELEMENTS = {"html", "head", "meta", "title", "link", "style", "body", "h1", "h2", "nav", "a", "article", "time"}
ELEMENTS |= {"div", "p", "footer", "ul", "li", "br"}
ATTRIBUTES = {"lang", "charset", "name", "content", "rel", "type", "href", "title", "id", "datetime", "class"}
HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    "</div></article><script>alert(2)</script>",
    "&lt;b&gt; &amp; &#x3C;",
    "\x00\x01\x7f\x85\ufffe\U0001ffff",
    "]]><!-- -->",
]


def parse(page: str):
    parser = html5lib.HTMLParser(strict=True)
    document = parser.parse(page)
    assert not parser.errors, parser.errors
    return document


def check_shape(document) -> None:
    for element in document.iter():
        tag = element.tag.removeprefix(XHTML)
        assert tag in ELEMENTS, tag
        assert set(element.attrib) <= ATTRIBUTES, element.attrib
        for value in element.attrib.values():
            assert not value.strip().lower().startswith(("javascript:", "data:", "vbscript:")), value
    assert len(document.findall(f".//{XHTML}style")) == 1 and not document.findall(f".//{XHTML}script")


def text_of(element) -> str:
    return "".join(element.itertext())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    language=st.sampled_from(["fr", "en"]),
    slug=slug_text,
    title=any_text,
    raw_comments=st.lists(comment_st, max_size=4),
)
def test_a_post_page_keeps_its_shape_and_shows_the_text(language, slug, title, raw_comments):
    mlist = dataclasses.replace(BASE.lists[0], language=language)
    comments = [PublishedComment(i + 1, a, w, t, n, r) for i, (a, w, t, n, r) in enumerate(raw_comments)]
    post = PublishedPost(slug, title, "log/p.gmi", dt.datetime(2024, 1, 1), len(comments))
    document = parse(pages.post_page_html(mlist, BASE.site, post, comments))
    check_shape(document)
    articles = document.findall(f".//{XHTML}article")
    assert len(articles) == len(comments)
    for article, comment in zip(articles, sorted(comments, key=lambda c: (c.date, c.id)), strict=True):
        texts = article.findall(f".//{XHTML}div")
        if comment.removed:
            assert not texts
        else:
            (shown,) = texts
            assert text_of(shown) == html_text(comment.text).replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=100, deadline=None)
@given(language=st.sampled_from(["fr", "en"]), titles=st.lists(any_text, max_size=5))
def test_the_index_links_each_post_once(language, titles):
    mlist = dataclasses.replace(BASE.lists[0], language=language)
    posts = [PublishedPost(f"p{i}", t, "", dt.datetime(2024, 1, 1 + i), 1) for i, t in enumerate(titles)]
    document = parse(pages.index_page_html(mlist, BASE.site, posts))
    check_shape(document)
    links = [a.attrib["href"] for a in document.findall(f".//{XHTML}li/{XHTML}a")]
    assert links == [f"p{i}.html" for i in reversed(range(len(titles)))]


@pytest.mark.parametrize("text", HOSTILE)
def test_known_injections_stay_text(text):
    post = PublishedPost("p", text, "log/p.gmi", dt.datetime(2024, 1, 1), 1)
    comment = PublishedComment(1, f"Carole <b>x</b> {text}", dt.datetime(2024, 1, 1), text)
    page = pages.post_page_html(BASE.lists[0], BASE.site, post, [comment])
    document = parse(page)
    check_shape(document)
    assert "Carole <b>x</b>" in text_of(document.find(f".//{XHTML}h2"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(path: Path) -> str:
    """The DOM headless Chromium builds from a page (scripts would have run by then)."""
    assert CHROMIUM, "chromium is not installed"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.mark.skipif(not CHROMIUM, reason="headless Chromium (Debian's chromium) is not installed")
def test_serve_writes_html_pages_a_browser_shows(make_settings, tmp_path: Path, sink):
    from listbridge.outage import incidents
    from listbridge.service import Service

    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        settings = make_settings(
            site={"repo": str(site), "formats": ["gemtext", "html"], "web_url": "https://www.example.org"},
            lists=[{"address": "bla@bla.example.org", "title": "bla", "moderation": "none", "language": "fr"}],
        )
    svc = Service(settings)
    svc.start()
    try:
        with svc.db.transaction() as session:
            from listbridge.lists.context import ListContext
            from listbridge.lists.subscriptions import subscribe

            subscribe(session, ListContext(settings, settings.lists[0]), "reader@example.net")
        send(
            settings.smtp.port,
            "bla@bla.example.org",
            subject="Re: Un billet",
            sender="carole@example.net",
            name="Carole <b>x</b>",
            body='Bravo ! <script>document.title="pwned"</script>\n<img src=x onerror="alert(1)">\n',
        )
        page = site / "log/commentaires/un-billet.html"
        wait_for(lambda: page.exists() and "un-billet.html" in git(site, "show", "--name-only", "--format=", "HEAD"))
        (mail,) = wait_for(lambda: sink.handler.to("reader@example.net"))
        assert "https://www.example.org/log/commentaires/un-billet.html" in mail.message.get_content()
        with svc.db.transaction() as session:
            incidents.declare(session, settings, "coupure de courant", actor="test")
            incidents.publish_status(session, settings, "Outage")
    finally:
        svc.stop()
    assert (site / "log/commentaires/index.html").exists() and (site / "status.html").exists()
    for path in (page, site / "log/commentaires/index.html", site / "status.html", site / "status/1.html"):
        check_shape(parse(path.read_text()))
    dom = dump_dom(page)
    assert "Bravo ! <script>" not in dom and "&lt;script&gt;" in dom and "pwned" not in dom.split("<title>")[1][:80]
    assert "<b>" not in dom and "carole@example.net" not in dom  # markup never, addresses never
    assert "coupure de courant" in dump_dom(site / "status.html")


def test_with_web_url_the_feed_links_the_html_pages():
    site = build_settings({"site": {"formats": ["gemtext", "html"], "web_url": "https://www.example.org"}}).site
    post = PublishedPost("un-billet", "Un billet", "log/un-billet.gmi", dt.datetime(2024, 1, 1), 1)
    comment = PublishedComment(7, "Carole", dt.datetime(2024, 1, 1), "Bravo")
    feed = pages.atom_feed(BASE.lists[0], site, [(post, comment)])
    assert '<link href="https://www.example.org/log/commentaires/index.html"/>' in feed
    assert '<link href="https://www.example.org/log/commentaires/un-billet.html#comment-7"/>' in feed
    gemini = pages.atom_feed(BASE.lists[0], BASE.site, [(post, comment)])  # no web_url: the capsule's
    assert '<link href="gemini://localhost/log/commentaires/index.gmi"/>' in gemini


@pytest.mark.parametrize("text", HOSTILE)
def test_status_pages_keep_their_shape(make_settings, db, text):
    from listbridge.outage import incidents

    settings = make_settings(site={"formats": ["gemtext", "html"]})
    with db.transaction() as session:
        # The nature is a subject too, where the email package refuses line breaks (NEL).
        nature = f"panne {text}" if text.isprintable() else "panne"
        incidents.declare(session, settings, nature, actor="test", eta=text)
        rendered = incidents.render_status(session, settings)
    for name in ("status.html", "status/1.html"):
        document = parse(rendered[name])
        check_shape(document)
        assert "panne" in text_of(document.find(f".//{XHTML}body"))


def test_a_project_site_links_below_its_web_url():
    site = build_settings({"site": {"formats": ["gemtext", "html"], "web_url": "https://u.example.io/capsule"}}).site
    post = PublishedPost("un-billet", "Un billet", "log/un-billet.gmi", dt.datetime(2024, 1, 1), 1)
    page = pages.post_page_html(BASE.lists[0], site, post, [])
    assert '<a href="https://u.example.io/capsule/log/un-billet.html">' in page
    with pytest.warns(ConfigWarning, match='no "html"'):
        build_settings({"site": {"web_url": "https://www.example.org"}})
