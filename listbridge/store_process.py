"""The receiving side's heavy half in its own process: parse, route and store each batch of
received messages (dispatch.accept_many), so that mail-parser and SQL run on another core than
the SMTP event loop instead of taking turns with it on one GIL.

One child per `serve`, fed one batch at a time over a pipe; it answers only after the batch is
committed, so a 250 still means "stored". If the child dies (a parser blowing up on hostile
mail, the OOM killer), the batch in flight gets 451 and the next batch starts a new child: the
server itself keeps answering. Children are forked from a forkserver that has listbridge
imported already, so a restart costs milliseconds, not a second of imports. As with any
multiprocessing program, a script that starts a Service must guard its top level with
`if __name__ == "__main__":` (the `listbridge` command does).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Sequence

from . import dispatch
from .config import Settings
from .posts import PostCache
from .store import Database

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([__name__])
READY = "ready"
# Far beyond any batch's work (SQLite waits 30 s for its lock): a child this late is wedged.
REPLY_TIMEOUT = 300.0


class StoreCrashed(Exception):
    """The child died while it had a batch: whether that batch was committed is unknown."""


class StoreProcess:
    """dispatch.accept_many() in a child process. Thread-safe: callers take turns."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    def start(self) -> None:
        """Start the child now (else the first batch does), and wait until it is ready."""
        with self._lock:
            self._ensure_child()

    def accept_many(self, batch: Sequence[dispatch.Received]) -> dispatch.Accepted:
        """Replies for `batch`, once the child has committed it. Raises StoreCrashed."""
        with self._lock:
            conn = self._ensure_child()
            try:
                conn.send(list(batch))
                if not conn.poll(REPLY_TIMEOUT):
                    self._kill_child()
                    raise StoreCrashed(f"the store process did not answer in {REPLY_TIMEOUT:.0f} s; it was killed")
                accepted: dispatch.Accepted = conn.recv()
                return accepted
            except (EOFError, OSError) as exc:
                code = self._end_child()
                raise StoreCrashed(f"the store process died with a batch in hand (exit code {code})") from exc

    def stop(self) -> None:
        """Let the child finish its batch and exit."""
        with self._lock:
            self._end_child()

    @property
    def pid(self) -> int | None:
        """The child's pid, if one is running."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def _ensure_child(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self._end_child()
        parent, child = _CONTEXT.Pipe()
        root = logging.getLogger()
        formats = [f for h in root.handlers if (f := getattr(h.formatter, "_fmt", None))]
        process = _CONTEXT.Process(
            target=_serve,
            args=(child, self.settings, os.getcwd(), root.level, formats[0] if formats else None),
            name="listbridge-store",
            daemon=True,
        )
        process.start()
        child.close()
        try:
            if parent.recv() != READY:
                raise EOFError
        except (EOFError, OSError) as exc:
            process.join(5)
            raise StoreCrashed(f"the store process did not start (exit code {process.exitcode})") from exc
        self._process, self._conn = process, parent
        return parent

    def _kill_child(self) -> None:
        if self._process is not None:
            self._process.kill()
        self._end_child()

    def _end_child(self) -> int | None:
        """Close the pipe (the child exits on EOF) and reap the child; its exit code."""
        if self._conn is not None:
            self._conn.close()
        process, self._process, self._conn = self._process, None, None
        if process is None:
            return None
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join(5)
        return process.exitcode


def _serve(conn: Connection, settings: Settings, cwd: str, level: int, log_format: str | None) -> None:
    """In the child: accept batches until the parent closes the pipe."""
    # Ctrl-C reaches the whole process group: the parent shuts down, and the child finishes the
    # batch in hand and leaves when the pipe closes. SIGTERM ends it at once (an open
    # transaction is rolled back, and its batch gets 451).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir(cwd)  # relative paths in the settings (a SQLite file, the site) are the parent's
    if log_format:
        logging.basicConfig(level=level, format=log_format)
    else:
        logging.getLogger().setLevel(level)
    db = Database(settings.database.url)
    site = settings.site
    posts = PostCache(Path(site.repo), site.posts, site.comments_dir)
    conn.send(READY)
    try:
        while True:
            try:
                batch: list[dispatch.Received] = conn.recv()
            except (EOFError, OSError):  # the parent closed the pipe, or died
                return
            try:
                accepted = dispatch.accept_many(db, settings, batch, posts.get)
            except Exception:  # a bug: the MTA keeps these messages; the child lives on
                log.exception("unexpected error while storing %d messages", len(batch))
                accepted = dispatch.Accepted([[dispatch.TEMPORARY_FAILURE] * len(m.recipients) for m in batch])
            try:
                conn.send(accepted)
            except OSError:  # the parent died: no one is waiting for these replies
                return
    finally:
        db.dispose()
