"""The site's posts, read from the repo, so that a comment's subject can find its post.

Reads files only (no writes, no git). Every post is keyed by the slug of its file name and by
the slug of its first `# ` heading; both keys point to the same `Post`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path

from listbridge.archive.slugs import slugify, subject_key
from listbridge.config import Settings

SUFFIXES = (".gmi", ".md")
SKIPPED_NAMES = frozenset({"index.gmi", "index.md"})
DATE_LINES = 10
"""How many first lines of a post are searched for a date when the file name has none."""

_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")


@dataclass(frozen=True)
class Post:
    slug: str  # the file name stem as written, e.g. "Comment-les-3hg-ont-réparé-le-CHATONS"
    title: str  # the first "# " heading, else the stem
    path: str  # relative to the repo, with '/', e.g. "log/Comment-les-3hg-ont-réparé-le-CHATONS.gmi"
    date: str | None  # "YYYY-MM-DD" from the file name or the first lines, else None


def find_date(text: str) -> str | None:
    """The first valid YYYY-MM-DD date in `text`, or None."""
    for match in _DATE.finditer(text):
        try:
            return Date(*(int(part) for part in match.groups())).isoformat()
        except ValueError:
            continue
    return None


def first_heading(lines: list[str]) -> str:
    """The text of the first `# ` heading outside preformatted blocks, or ''."""
    preformatted = False
    for line in lines:
        if line.startswith("```"):
            preformatted = not preformatted
        elif not preformatted and line.startswith("# ") and line[2:].strip():
            return line[2:].strip()
    return ""


def read_post(repo: Path, file: Path) -> Post:
    """One post from its file (undecodable bytes are replaced, never fatal)."""
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    title = first_heading(lines)
    date = find_date(file.stem) or find_date("\n".join(lines[:DATE_LINES]))
    return Post(slug=file.stem, title=title or file.stem, path=file.relative_to(repo).as_posix(), date=date)


def _post_files(repo: Path, posts_dir: str, comments_dirs: Iterable[str]) -> list[Path]:
    """The post files under `posts_dir`, sorted; hidden entries, every comments folder and the
    index pages skipped; symlinked directories not followed."""
    top = repo / posts_dir
    skipped = {(repo / d).resolve() for d in comments_dirs}
    found: list[Path] = []
    for root, dirs, files in os.walk(top):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skipped)
        found.extend(
            here / name
            for name in files
            if name.endswith(SUFFIXES) and name not in SKIPPED_NAMES and not name.startswith(".")
        )
    return sorted(found)


def scan_posts(repo: Path, posts_dir: str, comments_dirs: str | Iterable[str]) -> dict[str, Post]:
    """Every post under `repo/posts_dir`, keyed by slugify(stem) and slugify(title); the
    comments folders (one, or every list's) are not posts.

    On a clash the file-name key wins over a title key, then the first path in sorted order.
    """
    folders = (comments_dirs,) if isinstance(comments_dirs, str) else tuple(comments_dirs)
    posts = [read_post(repo, file) for file in _post_files(repo, posts_dir, folders)]
    by_key: dict[str, Post] = {}
    for post in posts:
        key = slugify(post.slug)
        if key:
            by_key.setdefault(key, post)
    for post in posts:
        key = slugify(post.title)
        if key:
            by_key.setdefault(key, post)
    return by_key


def find_post(posts: dict[str, Post], subject: str) -> Post | None:
    """The post a comment's subject points at, or None."""
    key = subject_key(subject)
    return posts.get(key) if key else None


class PostCache:
    """scan_posts() remembered for `ttl` seconds, so a burst of comments scans the site once."""

    def __init__(self, repo: Path, posts_dir: str, comments_dirs: str | Iterable[str], ttl: float = 30.0) -> None:
        self.repo, self.posts_dir, self.ttl = repo, posts_dir, ttl
        self.comments_dirs = (comments_dirs,) if isinstance(comments_dirs, str) else tuple(comments_dirs)
        self._posts: dict[str, Post] = {}
        self._at = float("-inf")
        self._lock = threading.Lock()

    def get(self) -> dict[str, Post]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._posts = scan_posts(self.repo, self.posts_dir, self.comments_dirs)
                self._at = time.monotonic()
            return self._posts


def site_posts(settings: Settings) -> dict[str, Post]:
    """The posts of the site repo, to attach comments to."""
    return scan_posts(Path(settings.site.repo), settings.site.posts, settings.comments_dirs)
