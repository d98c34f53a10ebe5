"""Archive benchmark: the cost of publishing one approved comment, and of a full rebuild.

    python benchmarks/archive.py                                   # SQLite, 1,000 posts x 10
    python benchmarks/archive.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/lb_e
    python benchmarks/archive.py --profile approve                 # cProfile of the big approvals

Two sites are built in a temporary folder, each a real git repo of posts under log/ with its
comments inserted in bulk (status approved, already published):

- small: 1 post x 10 comments
- big:   1,000 posts x 10 comments (10,000 comments)

On the big site `rebuild` is timed first from scratch (empty comments folder, first commit) and
again with nothing changed (it must make no commit). Then `--approvals` held comments are
approved one at a time on each site, alternating between the two (so that a change of
machine load hits both alike): comments.approve in a transaction, then
publish.publish_pending (render the post page + index + feed, write, git commit). The median
of the big site over the median of the small one must stay <= 1.5 (`--max-ratio`): the cost of
one approval must not grow with the archive. Exit status 1 when a target is missed.

With --database-url each site gets its own schema (bench_small, bench_big), dropped and
created again: give a database of your own.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

from listbridge.archive import publish
from listbridge.config import Settings, build_settings
from listbridge.db import Database
from listbridge.lists import comments as lb_comments
from listbridge.lists.context import ListContext
from listbridge.models import APPROVED, HELD, Comment

LIST = "bla@bla.example.org"
TEXT = (
    "Merci pour ce billet, et pour le récit de la panne.\n\n"
    "> une citation du billet\n\n"
    "Chez nous le même disque a lâché au bout de trois ans ; on a fini par tout migrer.\n"
) * 3
RAW = b"From: reader@example.net\r\nSubject: Re: x\r\n\r\n" + TEXT.encode() + b"\r\n"
BASE = dt.datetime(2020, 1, 1)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def reset_database(url: str | None, workdir: Path, name: str) -> str:
    """An empty, upgraded database for one site: a SQLite file in `workdir`, or on PostgreSQL
    a schema `bench_<name>` of `url` (dropped and created again), used through search_path."""
    if not url:
        url = f"sqlite:///{workdir / f'{name}.sqlite3'}"
    else:
        schema = f"bench_{name}"
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        engine.dispose()
        url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url


def make_site(workdir: Path, name: str, posts: int) -> Path:
    """A git repo with `posts` posts under log/, committed."""
    repo = workdir / name
    (repo / "log").mkdir(parents=True)
    for n in range(posts):
        (repo / "log" / f"post-{n:04d}.gmi").write_text(f"# Billet numéro {n}\n\nLe récit du jour {n}.\n")
    (repo / "index.gmi").write_text("# Le gemlog\n\n=> log/ Les billets\n")
    git(workdir, "init", "--quiet", str(repo))
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "posts")
    return repo


def make_settings(url: str, repo: Path) -> Settings:
    return build_settings(
        {
            "database": {"url": url},
            "relay": {"host": "127.0.0.1", "port": 9},  # never used: no subscribers
            "site": {"repo": str(repo), "base_url": "gemini://bla.example.org"},
            "lists": [
                {"address": LIST, "title": "bla", "owner": "owner@example.org", "language": "en", "moderation": "all"}
            ],
        }
    )


def comment_row(n: int, post: int, status: str, published: bool, when: dt.datetime) -> dict[str, object]:
    return {
        "list_address": LIST,
        "sender": f"reader{n % 97}@example.net",
        "display_name": f"Reader {n % 97}",
        "subject": f"Re: Billet numéro {post}",
        "message_id": f"<{n}.{post}@example.net>",
        "in_reply_to": "",
        "auto_submitted": False,
        "received_at": when,
        "status": status,
        "reason": "",
        "post_slug": f"post-{post:04d}",
        "post_title": f"Billet numéro {post}",
        "post_path": f"log/post-{post:04d}.gmi",
        "text": TEXT,
        "attachments": 0,
        "decided_at": when if status == APPROVED else None,
        "decided_by": "bench" if status == APPROVED else "",
        "published": published,
        "raw": RAW,
    }


def fill(db: Database, posts: int, per_post: int, held: int) -> list[int]:
    """`posts` x `per_post` approved (published) comments, plus `held` held ones spread over
    the posts (newest); the ids of the held ones."""
    rows = []
    n = 0
    for post in range(posts):
        for _ in range(per_post):
            rows.append(comment_row(n, post, APPROVED, True, BASE + dt.timedelta(minutes=n)))
            n += 1
    held_rows = []
    for k in range(held):
        post = (k * 37) % posts  # spread over the archive, not always the same page
        held_rows.append(comment_row(n, post, HELD, True, BASE + dt.timedelta(minutes=n)))
        n += 1
    with db.transaction() as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Comment), rows[start : start + 2000])
        if held_rows:
            session.execute(insert(Comment), held_rows)
    with db.transaction() as session:
        return list(session.scalars(select(Comment.id).where(Comment.status == HELD).order_by(Comment.id)))


def approve_one(db: Database, settings: Settings, comment_id: int) -> None:
    ctx = ListContext(settings, settings.lists[0])
    with db.transaction() as session:
        comment = session.get(Comment, comment_id)
        assert comment is not None
        lb_comments.approve(session, ctx, comment, actor="bench")
    commits = publish.publish_pending(db, settings)
    assert len(commits) == 1, commits


def time_approvals(db: Database, settings: Settings, ids: list[int], profiler: cProfile.Profile | None) -> list[float]:
    timings = []
    for comment_id in ids:
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        approve_one(db, settings, comment_id)
        timings.append(time.perf_counter() - t0)
        if profiler:
            profiler.disable()
    return timings


def timed_rebuild(db: Database, settings: Settings, profiler: cProfile.Profile | None) -> tuple[float, list[str]]:
    if profiler:
        profiler.enable()
    t0 = time.perf_counter()
    commits = publish.rebuild(db, settings)
    elapsed = time.perf_counter() - t0
    if profiler:
        profiler.disable()
    return elapsed, commits


def show_profile(profiler: cProfile.Profile, title: str) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
    print(f"\n--- profile: {title} ---\n{out.getvalue()}")


class Site:
    """One benchmark site: its database, git repo, settings and held comments to approve."""

    def __init__(self, args: argparse.Namespace, workdir: Path, name: str, posts: int) -> None:
        self.name = name
        url = reset_database(args.database_url, workdir, name)
        self.db = Database(url)
        self.repo = make_site(workdir, name, posts)
        self.settings = make_settings(url, self.repo)
        t0 = time.perf_counter()
        self.held = fill(self.db, posts, args.per_post, args.approvals + args.warmup)
        print(
            f"{name}: {posts} posts x {args.per_post} comments inserted in {time.perf_counter() - t0:.1f} s", flush=True
        )


def rebuilds(site: Site, profile: bool) -> tuple[float, float]:
    """Rebuild from scratch, then again unchanged: seconds (inf when the commits are wrong)."""
    prof = cProfile.Profile() if profile else None
    first, commits = timed_rebuild(site.db, site.settings, prof)
    pages = len(list((site.repo / site.settings.site.comments_dir).glob("*.gmi")))
    again, again_commits = timed_rebuild(site.db, site.settings, prof)
    print(
        f"{site.name}: rebuild from scratch {first:.2f} s ({len(commits)} commit, {pages} pages); "
        f"unchanged {again:.2f} s ({len(again_commits)} commit)",
        flush=True,
    )
    if prof:
        show_profile(prof, f"{site.name} rebuilds")
    if len(commits) != 1 or again_commits:
        print(f"  ERROR: expected 1 then 0 commits, got {len(commits)} then {len(again_commits)}")
        return float("inf"), float("inf")
    # A real site repo is a clone, its objects packed; this one was just written object by
    # object. Pack it like `git gc` would, or every approval pays a stat per loose object.
    git(site.repo, "repack", "-adq")
    return first, again


def approvals(args: argparse.Namespace, sites: list[Site], profile: bool) -> dict[str, list[float]]:
    """Approve the held comments one at a time, alternating between the sites so that a
    change of machine load affects both alike. Seconds per approval, per site."""
    for site in sites:
        publish.rebuild(site.db, site.settings)  # no-op on a site already rebuilt
        time_approvals(site.db, site.settings, site.held[: args.warmup], None)  # templates, caches
    prof = cProfile.Profile() if profile else None
    before = {s.name: int(git(s.repo, "rev-list", "--count", "HEAD")) for s in sites}
    timings: dict[str, list[float]] = {s.name: [] for s in sites}
    for k in range(args.warmup, args.warmup + args.approvals):
        for site in sites:
            p = prof if site is sites[-1] else None
            timings[site.name] += time_approvals(site.db, site.settings, [site.held[k]], p)
    for site in sites:
        made = int(git(site.repo, "rev-list", "--count", "HEAD")) - before[site.name]
        assert made == args.approvals, (site.name, made)
        ms = [t * 1000 for t in timings[site.name]]
        print(
            f"{site.name}: approve+publish median {statistics.median(ms):.1f} ms "
            f"(min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})",
            flush=True,
        )
    if prof:
        show_profile(prof, f"{sites[-1].name} approvals")
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="default: a SQLite file in the temp folder")
    parser.add_argument("--posts", type=int, default=1000, help="posts of the big site")
    parser.add_argument("--per-post", type=int, default=10, help="approved comments per post")
    parser.add_argument("--approvals", type=int, default=20, help="approvals timed per site")
    parser.add_argument("--warmup", type=int, default=2, help="approvals done first, not timed")
    parser.add_argument("--max-ratio", type=float, default=1.5)
    parser.add_argument("--max-rebuild", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--profile", choices=("approve", "rebuild"), help="cProfile the big site's approvals or rebuilds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="listbridge-archive-"))
    try:
        small, big = Site(args, workdir, "small", 1), Site(args, workdir, "big", args.posts)
        rebuild_s = rebuilds(big, args.profile == "rebuild")
        timings = approvals(args, [small, big], args.profile == "approve")
        small.db.dispose()
        big.db.dispose()
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
        else:
            print(f"kept {workdir}")
    small_ms, big_ms = statistics.median(timings["small"]) * 1000, statistics.median(timings["big"]) * 1000
    ratio = big_ms / small_ms
    ok_ratio, ok_rebuild = ratio <= args.max_ratio, max(rebuild_s) <= args.max_rebuild
    print()
    print(f"database: {args.database_url or 'sqlite (temp file)'}")
    print(
        f"approval median: small {small_ms:.1f} ms, big {big_ms:.1f} ms, ratio {ratio:.2f} "
        f"(target <= {args.max_ratio}) {'OK' if ok_ratio else 'MISSED'}"
    )
    print(
        f"rebuild: from scratch {rebuild_s[0]:.2f} s, unchanged {rebuild_s[1]:.2f} s "
        f"(target <= {args.max_rebuild} s) {'OK' if ok_rebuild else 'MISSED'}"
    )
    return 0 if ok_ratio and ok_rebuild else 1


if __name__ == "__main__":
    sys.exit(main())
