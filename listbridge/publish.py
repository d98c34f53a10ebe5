"""Database -> site repo: render the pages that changed, commit them, push.

Only the pages a change touches are rendered: the post's comment page, the index and the
feed. `rebuild` renders everything and commits only what differs, so an unchanged archive
makes no commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import func, select, update

from . import archive
from .archive import PostSummary, PublishedComment
from .config import ListSettings, Settings
from .models import APPROVED, REMOVED, Comment
from .site import SiteRepo
from .store import Database

log = logging.getLogger(__name__)

SHOWN = (APPROVED, REMOVED)  # a removed comment leaves a note in its place


def repo_for(settings: Settings, mlist: ListSettings) -> SiteRepo:
    """The site repo, committing as `listbridge <LIST@DOMAIN>`."""
    return SiteRepo(settings.site.repo, "listbridge", mlist.address)


def _comments(session, list_address: str, slug: str) -> list[PublishedComment]:  # type: ignore[no-untyped-def]
    rows = session.execute(
        select(Comment.id, Comment.display_name, Comment.received_at, Comment.text, Comment.attachments, Comment.status)
        .where(Comment.list_address == list_address, Comment.post_slug == slug, Comment.status.in_(SHOWN))
        .order_by(Comment.received_at, Comment.id)
    )
    return [PublishedComment(i, name, when, text, n, status == REMOVED) for i, name, when, text, n, status in rows]


def _summaries(session, list_address: str) -> dict[str, PostSummary]:  # type: ignore[no-untyped-def]
    """One line per post with shown comments (an aggregate: cheap whatever the archive size)."""
    rows = session.execute(
        select(Comment.post_slug, func.max(Comment.post_title), func.max(Comment.post_path),
               func.max(Comment.received_at), func.count())
        .where(Comment.list_address == list_address, Comment.status.in_(SHOWN), Comment.post_slug.is_not(None))
        .group_by(Comment.post_slug)
    )
    return {slug: PostSummary(slug, title or slug, path or "", last, count) for slug, title, path, last, count in rows}


def _latest(session, list_address: str, posts: dict[str, PostSummary]) -> list[tuple[PostSummary, PublishedComment]]:  # type: ignore[no-untyped-def]
    rows = session.execute(
        select(Comment.id, Comment.post_slug, Comment.display_name, Comment.received_at, Comment.text,
               Comment.attachments, Comment.status)
        .where(Comment.list_address == list_address, Comment.status == APPROVED, Comment.post_slug.is_not(None))
        .order_by(Comment.received_at.desc(), Comment.id.desc())
        .limit(archive.FEED_ENTRIES)
    )
    return [
        (posts[slug], PublishedComment(i, name, when, text, n, status == REMOVED))
        for i, slug, name, when, text, n, status in rows
        if slug in posts
    ]


def render_list(
    db: Database, settings: Settings, mlist: ListSettings, slugs: Iterable[str] | None
) -> tuple[dict[str, str | None], list[str]]:
    """Pages to write for `slugs` (None: every post) plus index and feed: {path: content or
    None to delete}. Also the slugs rendered."""
    pages: dict[str, str | None] = {}
    with db.transaction() as session:
        posts = _summaries(session, mlist.address)
        wanted = sorted(posts) if slugs is None else sorted(set(slugs))
        for slug in wanted:
            path = archive.page_path(settings.site, slug)
            if slug in posts:
                pages[path] = archive.post_page(mlist, settings.site, posts[slug], _comments(session, mlist.address, slug))
            else:
                pages[path] = None  # no comment left on that post
        pages[archive.index_path(settings.site)] = archive.index_page(mlist, settings.site, list(posts.values()))
        pages[archive.feed_path(settings.site)] = archive.atom_feed(mlist, settings.site, _latest(session, mlist.address, posts))
    return pages, wanted


def write_and_commit(repo: SiteRepo, pages: dict[str, str | None], message: str, push: bool) -> str | None:
    """Write pages under the repo lock and commit them; push when asked. The commit id or None."""
    with repo.lock():
        changed = []
        for path, content in pages.items():
            if content is None:
                if repo.remove(path):
                    changed.append(path)
            elif repo.write(path, content):
                changed.append(path)
        sha = repo.commit(changed, message)
        if push and (sha or repo.unpushed()):
            repo.push()
    return sha


def publish_pending(db: Database, settings: Settings) -> list[str]:
    """Render and commit every change not yet on the site; the commit ids made."""
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
    by_list: dict[str, list] = defaultdict(list)
    for row in rows:
        by_list[row.list_address].append(row)
    for list_address, changes in by_list.items():
        mlist = settings.list_for(list_address)
        if mlist is None:
            continue
        slugs = {c.post_slug for c in changes if c.post_slug}
        pages, _ = render_list(db, settings, mlist, slugs)
        sha = write_and_commit(repo_for(settings, mlist), pages, commit_message(changes), settings.site.push)
        with db.transaction() as session:
            session.execute(
                update(Comment).where(Comment.id.in_([c.id for c in changes])).values(published=True)
                .execution_options(synchronize_session=False)
            )
        if sha:
            commits.append(sha)
            log.info("site commit %s: %s", sha[:10], commit_message(changes))
    return commits


def republish(db: Database, settings: Settings, touched: dict[str, set[str]], message: str) -> list[str]:
    """Render and commit the given posts of each list (after a deletion, say)."""
    commits = []
    for list_address, slugs in touched.items():
        mlist = settings.list_for(list_address)
        if mlist is None:
            continue
        pages, _ = render_list(db, settings, mlist, slugs)
        sha = write_and_commit(repo_for(settings, mlist), pages, message, settings.site.push)
        if sha:
            commits.append(sha)
    return commits


def rebuild(db: Database, settings: Settings, progress: Callable[[int], None] | None = None) -> list[str]:
    """Render the whole archive from the database; commit only what differs."""
    commits = []
    for mlist in settings.lists:
        pages, slugs = render_list(db, settings, mlist, None)
        if progress:
            progress(len(slugs))
        folder = Path(settings.site.repo) / settings.site.comments_dir
        ours = {archive.page_path(settings.site, s) for s in slugs} | {archive.index_path(settings.site)}
        for stale in sorted(folder.glob("*.gmi")) if folder.is_dir() else []:
            relative = stale.relative_to(settings.site.repo).as_posix()
            if relative not in ours:
                pages[relative] = None
        sha = write_and_commit(repo_for(settings, mlist), pages, "Rebuild the comment archive", settings.site.push)
        if sha:
            commits.append(sha)
    return commits


def _retry_pushes(settings: Settings) -> None:
    for mlist in settings.lists[:1]:  # one repo for all lists
        repo = repo_for(settings, mlist)
        if repo.unpushed():
            with repo.lock():
                repo.push()


def commit_message(changes: list) -> str:  # type: ignore[type-arg]
    """`Comment by Carole on <slug>`, or a count when several changes go in one commit."""
    if len(changes) == 1:
        c = changes[0]
        who = c.display_name or "Anonymous"
        verb = "Comment by" if c.status == APPROVED else f"{c.status.capitalize()} comment by"
        return f"{verb} {who} on {c.post_slug}"
    slugs = sorted({c.post_slug for c in changes if c.post_slug})
    return f"{len(changes)} comments on {', '.join(slugs[:3])}{' …' if len(slugs) > 3 else ''}"
