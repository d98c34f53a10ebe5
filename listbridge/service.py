"""`listbridge serve`: the SMTP/LMTP listener, its store process and the outbox workers."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

from listbridge.archive import publish
from listbridge.config import Settings
from listbridge.db import MAIL_QUEUED, Database, effects
from listbridge.failurelog import FailureLog
from listbridge.inbound.server import ListController, ListHandler
from listbridge.inbound.worker import StoreProcess
from listbridge.lists import bounces, moderation
from listbridge.outbound import delivery, outbox
from listbridge.web import unsubscribe
from listbridge.web.server import WebServer

log = logging.getLogger(__name__)

PUBLISH_EVERY = 30.0  # seconds; an intake that stores an approval wakes it at once
JANITOR_EVERY = 60.0  # seconds
PUBLISH_RETRY = 2.0  # seconds before a failed site commit is first tried again
MODERATION_EVERY = 60.0  # seconds between reminder checks; a held comment wakes the notices at once
MODERATION_GATHER = 2.0  # seconds from that wake to the pass, which takes what came meanwhile


class ListenError(Exception):
    """The SMTP/LMTP socket cannot be opened; the text is one sentence for the admin."""


class Service:
    """Everything `serve` runs; start() returns once listening, stop() shuts down cleanly."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db or Database(settings.database.url)
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.published = threading.Event()  # set when an approval waits to be rendered
        self.held = threading.Event()  # set when a held comment waits for its notice
        self.store = StoreProcess(settings)
        handler = ListHandler(
            settings, self.store.accept_many, self.wakeup, on_stored=self.published.set, on_held=self.held.set
        )
        self.controller = ListController(handler, settings)
        self.threads: list[threading.Thread] = []
        self.web: WebServer | None = None

    def start(self) -> None:
        if not self.db.is_current():
            self.db.upgrade()
        with self.db.transaction() as session:
            released = outbox.release_stale(session, outbox.CLAIM_LEASE)
        if released:
            log.info("queued again %d deliveries left in flight by a stopped process", released)
        self.store.start()
        try:
            self.controller.start()
        except OSError as exc:  # port taken, address not local, no permission
            self.store.stop()
            s = self.settings.smtp
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {s.host}:{s.port}: {reason}.") from exc
        if self.settings.web.listen:
            self._start_web()
        self.threads = delivery.run_workers(self.db, self.settings, self.stopping, self.wakeup)
        self.held.set()  # comments held while no serve ran
        for target, name in (
            (self._janitor, "janitor"),
            (self._publisher, "publisher"),
            (self._moderation, "moderation"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        s = self.settings.smtp
        log.info("listening on %s:%d (%s)", s.host, s.port, "LMTP" if s.lmtp else "SMTP")

    def _start_web(self) -> None:
        host, port = self.settings.web.address()
        self.web = WebServer(unsubscribe.make_app(self.db, self.settings, on_mail=self.wakeup.set), host, port)
        try:
            self.web.start()
        except OSError as exc:
            self.controller.stop()
            self.store.stop()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {host}:{port} ([web] listen): {reason}.") from exc

    def _publisher(self) -> None:
        """Render and commit approved comments (and retry pushes) a few seconds after intake.
        While changes stay pending (a failed commit: publish_pending logs one line), it tries
        again sooner, with a backoff from PUBLISH_RETRY up to PUBLISH_EVERY."""
        failures = FailureLog(log, "could not publish to the site repo; will retry", "publishing works again")
        retry = 0.0  # 0: nothing left pending after the last attempt
        while not self.stopping.is_set():
            self.published.wait(retry or PUBLISH_EVERY)
            self.published.clear()
            if self.stopping.is_set():
                return
            try:
                publish.publish_pending(self.db, self.settings)
                stuck = publish.has_pending(self.db)
            except Exception as exc:  # the database, say: the traceback once, then one line
                failures.failed(exc)
                stuck = True
            else:
                failures.succeeded()
            retry = next_retry(retry) if stuck else 0.0

    def _moderation(self) -> None:
        """Send the notices of newly held comments, and each list's daily reminder."""
        failures = FailureLog(log, "could not send moderation notices; will retry", "moderation notices sent again")
        reminded_at = -math.inf  # monotonic time of the last reminder pass
        while not self.stopping.is_set():
            self.held.wait(MODERATION_EVERY)
            # A burst of held comments makes one pass, not one per intake batch.
            if self.stopping.wait(MODERATION_GATHER):
                return
            self.held.clear()
            remind = time.monotonic() - reminded_at >= MODERATION_EVERY
            # Two transactions: a reminder that fails keeps no notice from going out.
            passes = [("notices", moderation.notify_held)] + ([("reminders", moderation.remind)] if remind else [])
            done: dict[str, int] = {}
            for name, step in passes:
                try:
                    with self.db.transaction() as session:
                        done[name] = step(session, self.settings)
                        queued = MAIL_QUEUED in effects(session)
                except Exception as exc:
                    failures.failed(exc)
                    break
                if queued:
                    self.wakeup.set()
            else:
                failures.succeeded()
                if remind:
                    reminded_at = time.monotonic()
            if done.get("notices") or done.get("reminders"):
                log.info(
                    "moderators told of %d held comments; %d daily reminders",
                    done.get("notices", 0),
                    done.get("reminders", 0),
                )

    def _janitor(self) -> None:
        """Every minute: queue again the claims of a dead process, count the mail the relay
        refused for good, and send the bounce warnings and removals that are due."""
        failures = FailureLog(log, "could not release stale outbox claims", "stale claims released again")
        bounce_failures = FailureLog(log, "could not follow up on bounces; will retry", "bounce follow-up works again")
        while not self.stopping.wait(JANITOR_EVERY):
            try:
                with self.db.transaction() as session:
                    outbox.release_stale(session, outbox.CLAIM_LEASE)
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            self._follow_up_bounces(bounce_failures)

    def _follow_up_bounces(self, failures: FailureLog) -> None:
        try:
            with self.db.transaction() as session:
                for done in bounces.refused(session, self.settings):
                    log.info("refused by the relay: %s", done)
                warned, removed = bounces.follow_up(session, self.settings)
                queued = MAIL_QUEUED in effects(session)
        except Exception as exc:
            failures.failed(exc)
            return
        failures.succeeded()
        if warned or removed:
            log.info("bounces: %d warnings sent, %d subscribers removed", warned, removed)
        if queued:
            self.wakeup.set()

    def stop(self) -> None:
        # Queued before the controller's own stop, so it runs on the loop first.
        self.controller.loop.call_soon_threadsafe(self.store.close_channel)
        self.controller.stop()
        if self.web is not None:
            self.web.stop()
        self.store.stop()
        self.stopping.set()
        self.wakeup.set()
        self.published.set()
        self.held.set()
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


def next_retry(previous: float) -> float:
    """The wait before the next publish attempt while one keeps failing.

    >>> [next_retry(w) for w in (0.0, 2.0, 16.0, 30.0)]
    [2.0, 4.0, 30.0, 30.0]
    """
    return min(PUBLISH_EVERY, previous * 2) if previous else PUBLISH_RETRY
