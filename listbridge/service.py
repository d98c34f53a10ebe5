"""`listbridge serve`: the SMTP/LMTP listener and the outbox workers in one process."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time

from . import delivery, outbox
from .config import Settings
from .smtp import ListController, ListHandler
from .store import Database

log = logging.getLogger(__name__)

CLAIM_LEASE = dt.timedelta(minutes=10)


class ListenError(Exception):
    """The SMTP/LMTP socket cannot be opened; the text is one sentence for the admin."""


class Service:
    """Everything `serve` runs; start() returns once listening, stop() shuts down cleanly."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db or Database(settings.database.url)
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.controller = ListController(ListHandler(self.db, settings, self.wakeup), settings)
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if not self.db.is_current():
            self.db.upgrade()
        with self.db.transaction() as session:
            released = outbox.release_stale(session, CLAIM_LEASE)
        if released:
            log.info("queued again %d deliveries left in flight by a stopped process", released)
        try:
            self.controller.start()
        except OSError as exc:  # port taken, address not local, no permission
            s = self.settings.smtp
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {s.host}:{s.port}: {reason}.") from exc
        self.threads = delivery.run_workers(self.db, self.settings, self.stopping, self.wakeup)
        janitor = threading.Thread(target=self._janitor, name="janitor", daemon=True)
        janitor.start()
        self.threads.append(janitor)
        s = self.settings.smtp
        log.info("listening on %s:%d (%s)", s.host, s.port, "LMTP" if s.lmtp else "SMTP")

    def _janitor(self) -> None:
        while not self.stopping.wait(60):
            try:
                with self.db.transaction() as session:
                    outbox.release_stale(session, CLAIM_LEASE)
            except Exception:
                log.exception("could not release stale outbox claims")

    def stop(self) -> None:
        self.controller.stop()
        self.stopping.set()
        self.wakeup.set()
        # One deadline for all: a worker stuck on a silent relay must not hold up the others'
        # shutdown one by one. Whatever it had claimed is queued again by the next start.
        deadline = time.monotonic() + self.settings.relay.timeout + 5
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.db.dispose()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        log.info("shutting down")
        self.stop()
