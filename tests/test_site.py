"""The site repo: real git work trees and a real bare remote in temp dirs."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from listbridge.archive.git import SiteRepo

from helpers import git


def test_commit_only_our_files_with_an_explicit_author(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no global git identity
    monkeypatch.delenv("GIT_AUTHOR_NAME", raising=False)
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@bla.example.org")
    (repo.path / "draft.gmi").write_text("maintainer's work in progress\n")
    assert repo.write("log/commentaires/a.gmi", "# A\n")
    sha = repo.commit(["log/commentaires/a.gmi"], "Comment by Carole on A")
    assert sha
    assert git(repo.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s").strip() == (
        "listbridge <bla@bla.example.org>|listbridge <bla@bla.example.org>|Comment by Carole on A"
    )
    assert git(repo.path, "show", "--name-only", "--format=", "HEAD").split() == ["log/commentaires/a.gmi"]
    assert "?? draft.gmi" in git(repo.path, "status", "--porcelain")


def test_unchanged_pages_make_no_commit(tmp_path: Path):
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    repo.write("a.gmi", "same\n")
    first = repo.commit(["a.gmi"], "one")
    assert repo.write("a.gmi", "same\n") is False
    assert repo.commit(["a.gmi"], "two") is None
    assert git(repo.path, "rev-parse", "HEAD").strip() == first


def test_a_staged_change_of_the_maintainer_is_not_committed(tmp_path: Path):
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    (repo.path / "theirs.gmi").write_text("theirs\n")
    git(repo.path, "add", "theirs.gmi")
    repo.write("ours.gmi", "ours\n")
    repo.commit(["ours.gmi"], "ours")
    assert git(repo.path, "show", "--name-only", "--format=", "HEAD").split() == ["ours.gmi"]
    assert "A  theirs.gmi" in git(repo.path, "status", "--porcelain")


def test_removed_page_is_committed(tmp_path: Path):
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    repo.write("a.gmi", "a\n")
    repo.commit(["a.gmi"], "add")
    assert repo.remove("a.gmi")
    assert repo.commit(["a.gmi"], "remove")
    assert git(repo.path, "ls-files").split() == []


def test_failed_push_is_retried_and_nothing_is_lost(tmp_path: Path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--bare", "--quiet", str(remote)], check=True)
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    git(repo.path, "remote", "add", "origin", str(remote))
    repo.write("a.gmi", "a\n")
    repo.commit(["a.gmi"], "first")
    assert repo.push()
    assert repo.unpushed() == 0

    remote.rename(tmp_path / "away.git")  # the remote is unreachable for a while
    repo.write("b.gmi", "b\n")
    repo.commit(["b.gmi"], "second")
    assert repo.push() is False
    assert repo.unpushed() == 1
    (tmp_path / "away.git").rename(remote)
    assert repo.push()
    assert repo.unpushed() == 0
    assert git(remote, "log", "--format=%s").split() == ["second", "first"]


def test_lock_serialises_writers(tmp_path: Path):
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    order: list[str] = []
    inside = threading.Event()

    def other() -> None:
        with SiteRepo(repo.path, "listbridge", "bla@x.org").lock():
            order.append("other")

    with repo.lock():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=0.3)
        order.append("first")
        inside.set()
    thread.join()
    assert order == ["first", "other"]


def test_a_commit_waits_while_another_git_holds_the_index(tmp_path: Path):
    """An admin's `git status` or a deploy hook's pull takes .git/index.lock for a moment: the
    commit waits for it instead of failing (and giving up until the next publish run)."""
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    repo.write("a.gmi", "first\n")
    lock = repo.path / ".git" / "index.lock"
    lock.write_text("")
    released = threading.Timer(0.5, lock.unlink)
    released.start()
    try:
        sha = repo.commit(["a.gmi"], "while locked")
    finally:
        released.join()
    assert sha and git(repo.path, "log", "-1", "--format=%s").strip() == "while locked"


def test_an_index_lock_that_stays_fails_with_gits_reason(tmp_path: Path):
    from listbridge.archive.git import GitError

    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    repo.write("a.gmi", "first\n")
    (repo.path / ".git" / "index.lock").write_text("")  # a crashed git left it behind
    with pytest.raises(GitError, match="index.lock"):
        repo.commit(["a.gmi"], "never")


def test_pages_are_written_as_git_would_under_the_umask(tmp_path: Path):
    """A Gemini or web server running as another user must be able to read the pages."""
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    previous = os.umask(0o022)
    try:
        repo.write("log/commentaires/a.gmi", "first\n")
        repo.write("log/commentaires/a.gmi", "second\n")  # replaced: a new file again
        os.umask(0o027)
        repo.write("log/commentaires/b.gmi", "b\n")
    finally:
        os.umask(previous)
    folder = repo.path / "log" / "commentaires"
    assert stat.S_IMODE((folder / "a.gmi").stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / "b.gmi").stat().st_mode) == 0o640
    assert not [p for p in folder.iterdir() if p.name.startswith(".listbridge-")]


def test_an_unchanged_page_an_older_version_wrote_0600_becomes_readable(tmp_path: Path):
    repo = SiteRepo(tmp_path / "site", "listbridge", "bla@x.org")
    previous = os.umask(0o022)
    try:
        repo.write("log/a.gmi", "same\n")
        (repo.path / "log" / "a.gmi").chmod(0o600)
        assert repo.write("log/a.gmi", "same\n") is False  # nothing to commit, yet fixed
    finally:
        os.umask(previous)
    assert stat.S_IMODE((repo.path / "log" / "a.gmi").stat().st_mode) == 0o644
    previous = os.umask(0o077)  # pages for their owner alone: nothing to fix, nothing rewritten
    try:
        (repo.path / "log" / "a.gmi").chmod(0o600)
        before = (repo.path / "log" / "a.gmi").stat().st_ino
        assert repo.write("log/a.gmi", "same\n") is False
        assert (repo.path / "log" / "a.gmi").stat().st_ino == before
    finally:
        os.umask(previous)
