"""The comment archive as files: one page per post, the index, the Atom feed. Pure rendering;
the caller reads the database and writes the site repo.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import quote

from listbridge.config import ListSettings, SiteSettings
from listbridge.render import environment
from listbridge.sanitize import html_text

# Characters XML 1.0 forbids even when escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

_SURROGATE = re.compile("[\ud800-\udfff]")
FEED_ENTRIES = 50


@dataclass(frozen=True)
class PublishedComment:
    """A comment as its page shows it (read from models.Comment)."""

    id: int
    author: str  # display name; "" is shown as Anonymous
    date: dt.datetime
    text: str
    attachments: int = 0
    removed: bool = False  # replaced by a removal note (`forget`)


@dataclass(frozen=True)
class PublishedPost:
    """A post with shown comments, as its page and the index show it (read from
    models.PostSummary)."""

    slug: str
    title: str
    path: str  # the post's own page, relative to the repo root ("" when unknown)
    last: dt.datetime  # date of its newest published comment
    count: int


def page_path(mlist: ListSettings, slug: str, suffix: str = ".gmi") -> str:
    """Where a post's comment page lives in the repo: in the list's own comments folder."""
    return f"{mlist.comments_dir}/{slug}{suffix}"


def index_path(mlist: ListSettings, suffix: str = ".gmi") -> str:
    return f"{mlist.comments_dir}/index{suffix}"


def page_url(mlist: ListSettings, site: SiteSettings, slug: str) -> str:
    """A post's comment page as links in mail and the feed give it: the HTML one under
    web_url when the site has one, else the gemtext one under base_url."""
    return _web_or_gemini(site, page_path(mlist, slug, ".html"), page_path(mlist, slug))


def status_url(site: SiteSettings) -> str:
    """The status page as mail and channels link to it: the HTML one under web_url, if any."""
    return _web_or_gemini(site, "status.html", "status.gmi")


def gemini_status_url(site: SiteSettings) -> str:
    return _url(site, "status.gmi")


def _web_or_gemini(site: SiteSettings, html: str, gemtext: str) -> str:
    if site.web_url and site.html:
        return site.web_url + "/" + quote(html)
    return _url(site, gemtext)


def feed_path(mlist: ListSettings) -> str:
    return f"{mlist.comments_dir}/atom.xml"


def _url(site: SiteSettings, relpath: str) -> str:
    return site.base_url.rstrip("/") + "/" + quote(relpath)


def post_page(mlist: ListSettings, site: SiteSettings, post: PublishedPost, comments: list[PublishedComment]) -> str:
    """`<comments_dir>/<slug>.gmi`: every published comment of one post, oldest first."""
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/post.gmi")
    return template.render(
        list=mlist,
        post=_PostView(post, "/" + quote(post.path) if post.path else "/", ""),
        comments=sorted(comments, key=lambda c: (c.date, c.id)),
        index_url="index.gmi",
        mailto=f"mailto:{mlist.address}?subject={quote(post.slug)}",
    )


def post_page_html(
    mlist: ListSettings, site: SiteSettings, post: PublishedPost, comments: list[PublishedComment]
) -> str:
    """`<comments_dir>/<slug>.html`, as post_page for a www site (jinja escapes all text)."""
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/post.html")
    # Under web_url when set: a project site is served below the host's root.
    root = site.web_url + "/" if site.web_url else "/"
    own = root + quote(post.path.removesuffix(".gmi") + ".html") if post.path else root
    shown = [dataclasses.replace(c, author=html_text(c.author), text=html_text(c.text)) for c in comments]
    return template.render(
        list=mlist,
        post=_PostView(dataclasses.replace(post, title=html_text(post.title)), own, ""),
        comments=sorted(shown, key=lambda c: (c.date, c.id)),
        mailto=f"mailto:{mlist.address}?subject={quote(post.slug)}",
        feed="atom.xml",
        feed_title=mlist.title,
    )


def index_page_html(mlist: ListSettings, site: SiteSettings, posts: list[PublishedPost]) -> str:
    """`<comments_dir>/index.html`: posts with comments, newest first."""
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/index.html")
    ordered = sorted(posts, key=index_order, reverse=True)
    views = [_PostView(dataclasses.replace(p, title=html_text(p.title)), "", quote(f"{p.slug}.html")) for p in ordered]
    return template.render(list=mlist, posts=views, feed="atom.xml", feed_title=mlist.title)


def index_line(mlist: ListSettings, post: PublishedPost) -> str:
    """One post's line on the index: `=> page YYYY-MM-DD title (count)`."""
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/index_line.gmi")
    return template.render(list=mlist, post=post, page=quote(f"{post.slug}.gmi")).rstrip("\n")


def index_order(post: PublishedPost) -> tuple[dt.datetime, str]:
    """Newest first: sort by this, reversed."""
    return (post.last, post.slug)


def index_from_lines(mlist: ListSettings, lines: list[str]) -> str:
    """`<comments_dir>/index.gmi` from lines already in order (see index_line)."""
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/index.gmi")
    return template.render(list=mlist, lines=lines)


def index_page(mlist: ListSettings, site: SiteSettings, posts: list[PublishedPost]) -> str:
    """`<comments_dir>/index.gmi`: posts with comments, newest first, as Gemini feed lines."""
    ordered = sorted(posts, key=index_order, reverse=True)
    return index_from_lines(mlist, [index_line(mlist, p) for p in ordered])


def atom_feed(mlist: ListSettings, site: SiteSettings, latest: list[tuple[PublishedPost, PublishedComment]]) -> str:
    """`<comments_dir>/atom.xml`: the latest published comments, newest first."""
    template = environment(mlist.templates).get_template(f"archive/{mlist.language}/atom.xml")
    latest = sorted(latest, key=lambda pc: (pc[1].date, pc[1].id), reverse=True)[:FEED_ENTRIES]
    entries = [
        {
            "id": f"{_url(site, page_path(mlist, post.slug))}#comment-{c.id}",  # the same, whatever the links
            "url": page_url(mlist, site, post.slug) + f"#comment-{c.id}",
            "title": _xml(post.title),
            "author": _xml(c.author).strip(),
            "updated": atom_time(c.date),
            "text": _xml("" if c.removed else c.text),
        }
        for post, c in latest
    ]
    updated = entries[0]["updated"] if entries else atom_time(dt.datetime(1970, 1, 1))
    return template.render(
        list=mlist,
        entries=entries,
        updated=updated,
        feed_id=_url(site, feed_path(mlist)),
        feed_url=_url(site, feed_path(mlist)),
        index_url=_web_or_gemini(site, index_path(mlist, ".html"), index_path(mlist)),
    )


@dataclass(frozen=True)
class _PostView:
    """A post as the templates see it: its summary plus the URLs they link to."""

    summary: PublishedPost
    url: str
    page: str

    def __getattr__(self, name: str) -> object:
        return getattr(self.summary, name)


def _xml(text: str) -> str:
    """Text that XML 1.0 accepts and UTF-8 can encode (jinja escapes the markup)."""
    return _SURROGATE.sub("\ufffd", _NOT_XML.sub("", text))


def atom_time(when: dt.datetime) -> str:
    """A naive UTC time as an Atom (RFC 3339) date: 2026-12-02T13:46:35Z."""
    return when.replace(microsecond=0).isoformat() + "Z"
