"""Database -> site repo: render the pages that changed, commit them, push.

Only the pages a change touches are rendered: the post's comment page, the index and the
feed. `rebuild` renders everything and commits only what differs, so an unchanged archive
makes no commit.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sqlalchemy import ColumnElement, Row, delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from listbridge import failurelog
from listbridge.archive.git import GitError, SiteRepo
from listbridge.archive.pages import (
    FEED_ENTRIES,
    PublishedComment,
    PublishedPost,
    atom_feed,
    feed_path,
    index_from_lines,
    index_line,
    index_page_html,
    index_path,
    page_path,
    post_page,
    post_page_html,
)
from listbridge.config import ListSettings, Settings
from listbridge.db import Database
from listbridge.models import APPROVED, REMOVED, Comment, PostSummary

log = logging.getLogger(__name__)

SHOWN = (APPROVED, REMOVED)  # a removed comment leaves a note in its place
# What writing and committing the pages can fail with: git refusing (a held index.lock, a
# full disk), git hanging past its timeout, the work tree not writable.
SITE_ERRORS = (GitError, subprocess.SubprocessError, OSError)


def repo_for(settings: Settings, mlist: ListSettings) -> SiteRepo:
    """The site repo, committing as `listbridge <LIST@DOMAIN>`."""
    return SiteRepo(settings.site.repo, "listbridge", mlist.address)


# The columns a PublishedComment is made of, after the post's slug.
_SHOWN_COLUMNS = (
    Comment.post_slug,
    Comment.id,
    Comment.display_name,
    Comment.received_at,
    Comment.text,
    Comment.attachments,
    Comment.status,
)
# A row of _SHOWN_COLUMNS.
_ShownRow = Row[str | None, int, str, dt.datetime, str, int, str]
# A comment not yet on the site: id, list_address, post_slug, display_name, status.
_Change = Row[int, str, str | None, str, str]


def _published(row: _ShownRow) -> PublishedComment:
    _, i, name, when, text, attachments, status = row
    return PublishedComment(i, name, when, text, attachments, status == REMOVED)


def _shown(list_address: str, slugs: Iterable[str] | None) -> tuple[ColumnElement[bool], ...]:
    """Which comments the pages of `slugs` (None: every post) show: the list's approved and
    removed comments on those posts."""
    on = Comment.post_slug.is_not(None) if slugs is None else Comment.post_slug.in_(sorted(set(slugs)))
    return Comment.list_address == list_address, Comment.status.in_(SHOWN), on


def page_count(session: Session, settings: Settings) -> int:
    """How many comment pages a rebuild renders: one per list and post with shown comments."""
    pages = [select(Comment.post_slug).where(*_shown(m.address, None)).distinct() for m in settings.lists]
    return sum(session.scalar(select(func.count()).select_from(p.subquery())) or 0 for p in pages)


def _shown_comments(
    session: Session, list_address: str, slugs: Iterable[str] | None
) -> dict[str, list[PublishedComment]]:
    """The shown comments of `slugs` (None: every post), oldest first, by post, in one query."""
    query = select(*_SHOWN_COLUMNS).where(*_shown(list_address, slugs)).order_by(Comment.received_at, Comment.id)
    by_post: dict[str, list[PublishedComment]] = defaultdict(list)
    for row in session.execute(query):
        assert row[0] is not None  # the WHERE keeps comments on a post only
        by_post[row[0]].append(_published(row))
    return by_post


def refresh_summaries(session: Session, mlist: ListSettings, slugs: Iterable[str] | None) -> None:
    """Bring post_summaries up to date for `slugs` (None: every post of the list): one
    aggregate over those posts' comments only, and their index lines rendered again."""
    rows = session.execute(
        select(
            Comment.post_slug,
            func.max(Comment.post_title),
            func.max(Comment.post_path),
            func.max(Comment.received_at),
            func.count(),
        )
        .where(*_shown(mlist.address, slugs))
        .group_by(Comment.post_slug)
    ).all()
    stale = delete(PostSummary).where(PostSummary.list_address == mlist.address)
    if slugs is not None:
        stale = stale.where(PostSummary.post_slug.in_(sorted(set(slugs))))
    session.execute(stale)
    entries = []
    for slug, title, path, last, count in rows:
        assert slug is not None  # the WHERE keeps comments on a post only
        summary = PublishedPost(slug, title or slug, path or "", last, count)
        entries.append(
            {
                "list_address": mlist.address,
                "post_slug": slug,
                "title": summary.title,
                "path": summary.path,
                "last": last,
                "count": count,
                "line": index_line(mlist, summary),
            }
        )
    if entries:
        session.execute(insert(PostSummary), entries)


def _summaries(session: Session, list_address: str, slugs: Iterable[str] | None = None) -> dict[str, PublishedPost]:
    query = select(PostSummary).where(PostSummary.list_address == list_address)
    if slugs is not None:
        query = query.where(PostSummary.post_slug.in_(sorted(set(slugs))))
    return {e.post_slug: PublishedPost(e.post_slug, e.title, e.path, e.last, e.count) for e in session.scalars(query)}


def _index_lines(session: Session, list_address: str) -> list[str]:
    """The index's lines, newest post first."""
    # Only the lines come back: no date parsing for a thousand rows. (A tie on `last` is
    # ordered by the database's collation; the incremental and the full render share it.)
    return list(
        session.scalars(
            select(PostSummary.line)
            .where(PostSummary.list_address == list_address)
            .order_by(PostSummary.last.desc(), PostSummary.post_slug.desc())
        )
    )


def _latest(session: Session, list_address: str) -> list[tuple[PublishedPost, PublishedComment]]:
    """The feed's comments, newest first: read along ix_comments_feed, FEED_ENTRIES rows."""
    rows = session.execute(
        select(*_SHOWN_COLUMNS)
        .where(Comment.list_address == list_address, Comment.status == APPROVED)
        .order_by(Comment.received_at.desc(), Comment.id.desc())
        .limit(FEED_ENTRIES)
    ).all()
    posts = _summaries(session, list_address, {row.post_slug for row in rows if row.post_slug})
    return [(posts[row.post_slug], _published(row)) for row in rows if row.post_slug in posts]


def render_list(
    db: Database, settings: Settings, mlist: ListSettings, slugs: Iterable[str] | None
) -> tuple[dict[str, str | None], list[str]]:
    """Pages to write for `slugs` (None: every post) plus index and feed: {path: content or
    None to delete}. Also the slugs rendered. The cost follows the posts touched, not the
    archive: summaries and index lines of the other posts are read as they are."""
    pages: dict[str, str | None] = {}
    with db.transaction() as session:
        known = session.scalar(select(exists().where(PostSummary.list_address == mlist.address)))
        refresh_summaries(session, mlist, slugs if known else None)  # first publish: all of them
        posts = _summaries(session, mlist.address, slugs)
        wanted = sorted(posts) if slugs is None else sorted(set(slugs))
        # One query for the comments of every page rendered, however many.
        shown = _shown_comments(session, mlist.address, None if slugs is None else wanted)
        html = settings.site.html
        for slug in wanted:
            post = posts.get(slug)  # None: no comment left on that post, its pages go
            comments = shown.get(slug, [])
            pages[page_path(mlist, slug)] = post_page(mlist, settings.site, post, comments) if post else None
            if html:
                page = post_page_html(mlist, settings.site, post, comments) if post else None
                pages[page_path(mlist, slug, ".html")] = page
        pages[index_path(mlist)] = index_from_lines(mlist, _index_lines(session, mlist.address))
        if html:  # every post's summary: one row each, read whole
            every = list(_summaries(session, mlist.address).values())
            pages[index_path(mlist, ".html")] = index_page_html(mlist, settings.site, every)
        pages[feed_path(mlist)] = atom_feed(mlist, settings.site, _latest(session, mlist.address))
    return pages, wanted


def write_and_commit(repo: SiteRepo, pages: dict[str, str | None], message: str, push: bool) -> str | None:
    """Write pages and commit those that differ from HEAD; push when asked. The commit id or
    None. Every path is handed to the commit, not only those written now: a page written by
    an earlier attempt whose commit failed is on disk already and must still be committed.
    The caller holds repo.lock() from rendering to here, so an older render never overwrites
    a newer page."""
    for path, content in pages.items():
        if content is None:
            repo.remove(path)
        else:
            repo.write(path, content)
    sha = repo.commit(pages, message)
    if push and (sha or repo.unpushed()):
        repo.push()
    return sha


def _render_and_commit(
    db: Database,
    settings: Settings,
    mlist: ListSettings,
    slugs: Iterable[str] | None,
    message: str,
    extra: Callable[[dict[str, str | None], list[str]], None] | None = None,
) -> str | None:
    repo = repo_for(settings, mlist)
    with repo.lock():
        pages, rendered = render_list(db, settings, mlist, slugs)
        if extra is not None:
            extra(pages, rendered)
        return write_and_commit(repo, pages, message, settings.site.push)


def publish_pending(db: Database, settings: Settings) -> list[str]:
    """Render and commit every change not yet on the site; the commit ids made.

    A comment is marked published only once the commit that shows it exists. When git fails
    (another git holding index.lock for longer than the waits, say), that list's rows stay
    unpublished, one line is logged, and the next call tries again; the other lists go on."""
    with db.transaction() as session:
        rows = session.execute(
            select(Comment.id, Comment.list_address, Comment.post_slug, Comment.display_name, Comment.status)
            .where(Comment.published.is_(False))
            .order_by(Comment.id)
        ).all()
    if not rows:
        if settings.site.push:
            _retry_pushes(settings)
        return []
    commits = []
    by_list: dict[str, list[_Change]] = defaultdict(list)
    for row in rows:
        by_list[row.list_address].append(row)
    for list_address, changes in by_list.items():
        mlist = settings.list_for(list_address)
        if mlist is None:
            continue
        slugs = {c.post_slug for c in changes if c.post_slug}
        try:
            sha = _render_and_commit(db, settings, mlist, slugs, commit_message(changes))
        except SITE_ERRORS as exc:
            log.warning(
                "the site commit for %s failed, %d change(s) stay pending and will be retried: %s",
                list_address,
                len(changes),
                failurelog.summary(exc),
            )
            continue
        with db.transaction() as session:
            session.execute(
                update(Comment)
                .where(Comment.id.in_([c.id for c in changes]))
                .values(published=True)
                .execution_options(synchronize_session=False)
            )
        if sha:
            commits.append(sha)
            log.info("site commit %s: %s", sha[:10], commit_message(changes))
    return commits


def has_pending(db: Database) -> bool:
    """True while some comment's current state is not committed to the site yet."""
    with db.transaction() as session:
        return bool(session.scalar(select(exists().where(Comment.published.is_(False)))))


def republish(db: Database, settings: Settings, touched: dict[str, set[str]], message: str) -> list[str]:
    """Render and commit the given posts of each list (after a deletion, say)."""
    commits = []
    for list_address, slugs in touched.items():
        mlist = settings.list_for(list_address)
        if mlist is None:
            continue
        sha = _render_and_commit(db, settings, mlist, slugs, message)
        if sha:
            commits.append(sha)
    return commits


def rebuild(db: Database, settings: Settings, progress: Callable[[int], None] | None = None) -> list[str]:
    """Render every list's whole archive from the database; commit only what differs from HEAD.
    Each list's stale pages are deleted in its own folder only (see stale_pages)."""
    commits = []
    for mlist in (m for m in settings.lists if not m.status_only):  # a status list has no archive

        def drop_stale(pages: dict[str, str | None], slugs: list[str], mlist: ListSettings = mlist) -> None:
            if progress:
                progress(len(slugs))
            for stale in stale_pages(Path(settings.site.repo), mlist, pages):
                pages[stale] = None

        sha = _render_and_commit(db, settings, mlist, None, "Rebuild the comment archive", drop_stale)
        if sha:
            commits.append(sha)
    return commits


def stale_pages(repo: Path, mlist: ListSettings, pages: dict[str, str | None]) -> list[str]:
    """The `.gmi` (and `.html`) files directly in the list's comments folder that its render did
    not produce: pages of posts that lost their comments. Nothing in another list's folder or in
    a sub-folder is ever one."""
    folder = repo / mlist.comments_dir
    if not folder.is_dir():
        return []
    suffixes = (".gmi", ".html") if any(p.endswith(".html") for p in pages) else (".gmi",)
    found = (p.relative_to(repo).as_posix() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in suffixes)
    return [path for path in found if path not in pages]


def _retry_pushes(settings: Settings) -> None:
    for mlist in settings.lists[:1]:  # one repo for all lists
        repo = repo_for(settings, mlist)
        if repo.unpushed():
            with repo.lock():
                repo.push()


def commit_message(changes: Sequence[_Change]) -> str:
    """`Comment 12 on <slug>`, or a count when several changes go in one commit. No name: git
    history outlives `forget`, and a commit message is the hardest part of it to rewrite."""
    if len(changes) == 1:
        c = changes[0]
        verb = "Comment" if c.status == APPROVED else f"{c.status.capitalize()} comment"
        return f"{verb} {c.id} on {c.post_slug}"
    slugs = sorted({c.post_slug for c in changes if c.post_slug})
    return f"{len(changes)} comments on {', '.join(slugs[:3])}{' …' if len(slugs) > 3 else ''}"
