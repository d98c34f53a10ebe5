"""Publishing when git fails: a real site repo whose index.lock another git holds, a real
`serve`, the real CLI. A comment is marked published only once its commit exists."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from listbridge.archive import publish
from listbridge.cli import cli
from listbridge.db import Database
from listbridge.models import APPROVED, Comment
from listbridge.service import PUBLISH_EVERY, PUBLISH_RETRY, Service, next_retry

from helpers import git, send, site_repo, wait_for

SLUG = "un-billet"
LIST = "bla@bla.example.org"
PAGE = f"log/commentaires/{SLUG}.gmi"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return site_repo(tmp_path / "site", {f"log/{SLUG}.gmi": "# Un billet\n\nLe récit.\n"})


@pytest.fixture
def settings(make_settings, site):
    return make_settings(site={"repo": str(site)}, lists=[{"address": LIST, "language": "en", "moderation": "none"}])


def published_flags(db: Database) -> list[bool]:
    with db.transaction() as session:
        return list(session.scalars(select(Comment.published).order_by(Comment.id)))


def approved_comment(db: Database, text: str) -> None:
    """An approved comment not yet on the site, as moderation leaves it."""
    with db.transaction() as session:
        session.add(
            Comment(
                list_address=LIST,
                sender="carole@example.net",
                display_name="Carole",
                subject=SLUG,
                status=APPROVED,
                post_slug=SLUG,
                post_title="Un billet",
                post_path=f"log/{SLUG}.gmi",
                text=text,
                published=False,
                raw=b"x",
            )
        )


def config_file(settings, tmp_path: Path) -> Path:
    path = tmp_path / "lb.toml"
    path.write_text(
        f'[database]\nurl = "{settings.database.url}"\n[site]\nrepo = "{settings.site.repo}"\n'
        f'[[lists]]\naddress = "{LIST}"\nlanguage = "en"\n'
    )
    return path


def test_serve_commits_a_comment_once_the_index_lock_is_gone(settings, site, caplog):
    """An admin's git holds index.lock longer than the waits: the page is written but nothing is
    committed and nothing marked published; once the lock goes, serve commits on its own."""
    head = git(site, "rev-parse", "HEAD")
    lock = site / ".git" / "index.lock"
    lock.write_text("")
    svc = Service(settings)
    svc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="listbridge.archive.publish"):
            send(settings.smtp.port, LIST, subject=SLUG, body="Stranded?\n")
            wait_for(lambda: "stay pending" in caplog.text, timeout=20)
        assert "Stranded?" in (site / PAGE).read_text()  # written...
        assert git(site, "rev-parse", "HEAD") == head  # ...not committed
        assert published_flags(svc.db) == [False]
        assert "Traceback" not in caplog.text and len(caplog.records) >= 1
        lock.unlink()
        wait_for(lambda: published_flags(svc.db) == [True], timeout=30)  # no new mail needed
    finally:
        svc.stop()
    assert git(site, "log", "-1", "--format=%s").startswith("Comment ") and "Carole" not in git(site, "log")
    assert git(site, "status", "--porcelain") == ""


def test_a_failed_commit_is_committed_by_the_next_publish_and_by_rebuild(settings, site, tmp_path):
    db = Database(settings.database.url)
    db.upgrade()
    head = git(site, "rev-parse", "HEAD")
    lock = site / ".git" / "index.lock"
    approved_comment(db, "Premier.\n")
    previous = os.umask(0o022)
    try:
        lock.write_text("")
        assert publish.publish_pending(db, settings) == []
        assert published_flags(db) == [False] and git(site, "rev-parse", "HEAD") == head
        lock.unlink()
        (sha,) = publish.publish_pending(db, settings)  # the files on disk are already right
    finally:
        os.umask(previous)
    assert published_flags(db) == [True]
    assert git(site, "show", "--name-only", "--format=", sha).split() == sorted(
        ["log/commentaires/atom.xml", "log/commentaires/index.gmi", PAGE]
    )
    # Readable by a Gemini or web server running as another user, as git itself would write it.
    assert {stat.S_IMODE((site / p).stat().st_mode) for p in git(site, "ls-files", "log/commentaires").split()} == {
        0o644
    }

    approved_comment(db, "Second.\n")
    lock.write_text("")
    publish.publish_pending(db, settings)
    lock.unlink()
    assert "Second." in (site / PAGE).read_text() and git(site, "status", "--porcelain") != ""
    result = CliRunner().invoke(
        cli, ["--config", str(config_file(settings, tmp_path)), "archive", "rebuild"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "site commit" in result.output  # judged against HEAD, not against the work tree
    assert git(site, "status", "--porcelain") == "" and "Second." in git(site, "show", f"HEAD:{PAGE}")
    head = git(site, "rev-parse", "HEAD")
    assert publish.publish_pending(db, settings) == [] and published_flags(db) == [True, True]
    assert git(site, "rev-parse", "HEAD") == head
    db.dispose()


def test_rebuild_while_git_fails_is_one_sentence(settings, site, tmp_path):
    db = Database(settings.database.url)
    db.upgrade()
    approved_comment(db, "Premier.\n")
    (site / ".git" / "index.lock").write_text("")
    result = CliRunner().invoke(cli, ["--config", str(config_file(settings, tmp_path)), "archive", "rebuild"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
    (line,) = [x for x in result.output.splitlines() if "rendering" not in x]
    assert "index.lock" in line and "Traceback" not in result.output
    db.dispose()


def test_the_retry_backs_off_up_to_the_usual_tick():
    waits = [next_retry(0.0)]
    while waits[-1] < PUBLISH_EVERY:
        waits.append(next_retry(waits[-1]))
    assert waits[0] == PUBLISH_RETRY and waits == sorted(waits) and next_retry(PUBLISH_EVERY) == PUBLISH_EVERY
