"""The site repository: write our pages, commit them with an explicit author, push.

Only the files listbridge writes are staged, so a maintainer's uncommitted work in the same
tree is left alone. A lock file serialises git work between processes. A failed push is not
an error: the commit stays local and the next push() sends it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
# Waits (seconds) while another git process holds the index lock: about 3 s in all.
INDEX_LOCK_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class GitError(Exception):
    """A git command failed; the message holds git's own words."""


def ensure_repo(path: str | Path) -> Path:
    """Create the site's git work tree if it does not exist yet; return its path."""
    repo = Path(path)
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    return repo


class SiteRepo:
    """A git work tree that listbridge writes pages into, as `name <email>`."""

    def __init__(self, path: str | Path, name: str, email: str) -> None:
        self.path = ensure_repo(path)
        self.name = name
        self.email = email

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",  # our own reads never take index.lock from someone else
        }
        for wait in (*INDEX_LOCK_WAITS, None):
            result = subprocess.run(
                ["git", "-C", str(self.path), *args], env=env, capture_output=True, text=True, timeout=300
            )
            # Someone else's git (an admin's `git status`, a deploy hook's pull) holds the index
            # for a moment: wait for it rather than fail the whole publication.
            if result.returncode == 0 or wait is None or "index.lock': File exists" not in result.stderr:
                break
            time.sleep(wait)
        if check and result.returncode != 0:
            raise GitError(f"git {args[0]} failed: {(result.stderr or result.stdout).strip()}")
        return result

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the repository's listbridge lock (blocking) for a write-commit-push sequence."""
        with open(self.path / ".git" / "listbridge.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, relpath: str, content: str) -> bool:
        """Write a page atomically; False when it is unchanged. An unchanged page that lacks a
        read permission a new page would have is written again, which gives it that mode: a
        server running as another user must be able to read every page."""
        target = self.path / relpath
        data = content.encode("utf-8")
        unchanged = target.exists() and target.read_bytes() == data
        if unchanged and not _NEW_PAGE_READ & ~_umask() & ~target.stat().st_mode:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = _create_beside(target)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, target)
        except BaseException:
            os.unlink(temp)
            raise
        return not unchanged

    def remove(self, relpath: str) -> bool:
        target = self.path / relpath
        if not target.exists():
            return False
        target.unlink()
        return True

    def commit(self, paths: Iterable[str], message: str) -> str | None:
        """Commit exactly those of `paths` that differ from HEAD (added, changed or removed);
        None when none does. Judged against HEAD, not the work tree, so a page written by a
        run whose commit failed is committed by the next one."""
        paths = sorted(set(paths))
        if not paths:
            return None
        present = [p for p in paths if (self.path / p).exists()]
        gone = [p for p in paths if p not in present]
        if present:
            self.git("add", "--", *present)
        if gone:
            self.git("rm", "--cached", "--quiet", "--ignore-unmatch", "--", *gone)
        # Every staged path (not only ours), to know whether the maintainer has staged work too.
        everything = [
            p for p in self.git("diff", "--cached", "--no-renames", "--name-only", "-z").stdout.split("\0") if p
        ]
        wanted = set(paths)
        staged = [p for p in everything if p in wanted]
        if not staged:
            return None
        if len(staged) == len(everything):
            # Only our files differ from HEAD in the index: commit the index as it is. (A
            # pathspec commit builds a second index from HEAD and hashes every tree again.)
            self.git("commit", "--quiet", "--no-verify", "-m", message)
        else:
            # A pathspec commits only our files, leaving the maintainer's staged changes alone.
            self.git("commit", "--quiet", "--no-verify", "-m", message, "--", *staged)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def has_remote(self) -> bool:
        return bool(self.git("remote", check=False).stdout.split())

    def push(self, remote: str = "origin") -> bool:
        """Push the current branch; False (logged) when it fails, to be retried later."""
        if not self.has_remote():
            log.warning("site repo %s has no remote to push to", self.path)
            return False
        if self.git("rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
            return True  # nothing committed yet
        result = self.git("push", "--quiet", remote, "HEAD", check=False)
        if result.returncode != 0:
            log.warning("push of %s failed, will retry: %s", self.path, result.stderr.strip())
            return False
        return True

    def unpushed(self, remote: str = "origin") -> int:
        """How many local commits the remote's branch does not have (all of them if unknown)."""
        if self.git("rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
            return 0  # nothing committed yet
        branch = self.git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
        known = self.git("rev-parse", "--verify", "--quiet", f"{remote}/{branch}", check=False)
        spec = f"{remote}/{branch}..HEAD" if known.returncode == 0 else "HEAD"
        count = self.git("rev-list", "--count", spec, check=False)
        return int(count.stdout.strip() or 0) if count.returncode == 0 else 0


_NEW_PAGE_READ = 0o444  # the read bits of 0666, before the umask


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread
    meanwhile); 0o077 where /proc does not say, which asks for no change."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o077


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new temporary file next to `target`, created 0666 less the umask as git and a plain
    open() would (mkstemp makes 0600, which a web or Gemini server running as another user
    cannot read)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temp = target.parent / f".listbridge-{secrets.token_hex(6)}"
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
