"""`listbridge watch`: probe the home MX, open and resolve incidents, deliver the notices.

Runs on another machine than home, with its own database, a roster snapshot and a relay
that does not go through home. The probe state is stored, so a restart of the watcher
neither repeats a notice nor forgets an outage.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from listbridge.config import Settings
from listbridge.db import Database
from listbridge.failurelog import FailureLog
from listbridge.models import RESOLVED, ProbeStatus, utcnow
from listbridge.outage import channels, incidents, roster
from listbridge.outage.probe import DOWN, UP, ProbeResult, ProbeState, next_state, probe
from listbridge.outbound import delivery, outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    """What one probe found and did."""

    mx: str
    ok: bool
    step: str
    detail: str
    seconds: float
    state: str
    failures: int
    successes: int
    event: str | None  # "down" or "up" when the state flipped

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Watcher:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._roster_mtime: float | None = None
        self.wakeup = threading.Event()  # set when mail waits in the outbox
        self.channel_wakeup = threading.Event()  # set when an event waits for its channels
        self._warned_at: dt.datetime | None = None

    def refresh_roster(self) -> None:
        """Import the roster snapshot when it changed (each export is a heartbeat): its mtime
        is remembered while this process runs, and its export time and count are compared with
        the last import, which a new process (`watch --once`) reads back."""
        path = Path(self.settings.watch.roster)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._roster_mtime:
            self._warn_if_stale()
            return
        try:
            snapshot = roster.read_meta(path)
            with self.db.transaction() as session:
                fresh = not roster.is_imported(session, snapshot)
                if fresh:
                    roster.import_(session, path)
        except roster.RosterError as exc:
            log.error("%s", exc)
        else:
            if fresh:
                log.info(
                    "roster imported: %d subscribers, exported %s UTC",
                    snapshot.subscribers,
                    snapshot.exported_at.isoformat(timespec="seconds"),
                )
            else:
                log.debug(
                    "roster unchanged since its import (exported %s UTC)",
                    snapshot.exported_at.isoformat(timespec="seconds"),
                )
                self._warn_if_stale()
        self._roster_mtime = mtime

    def _warn_if_stale(self) -> None:
        """Log (at most hourly) that home has not exported its roster for too long."""
        now = utcnow()
        if self._warned_at and now - self._warned_at < dt.timedelta(hours=1):
            return
        exported, too_old = roster_age(self.settings, self.db)
        if too_old:
            self._warned_at = now
            log.warning(
                "the roster was exported %s; older than %g h: is home exporting it?",
                exported.isoformat(timespec="seconds") + " UTC" if exported else "never",
                self.settings.watch.roster_max_age,
            )

    def tick(self, result: ProbeResult | None = None) -> Tick:
        """Probe once (or take `result`), fold it into the stored state, act on a flip."""
        self.refresh_roster()
        w = self.settings.watch
        result = result or probe(w.mx, timeout=w.timeout, starttls=w.starttls)
        with self.db.transaction() as session:
            row = session.get(ProbeStatus, 1, with_for_update=True)
            if row is None:
                row = ProbeStatus(id=1, state=UP, failures=0, successes=0)
                session.add(row)
            state, event = next_state(
                ProbeState(row.state, row.failures, row.successes), result.ok, w.failures, w.recoveries
            )
            row.state, row.failures, row.successes = state.state, state.failures, state.successes
            row.last_at, row.last_ok, row.last_detail = utcnow(), result.ok, f"{result.step}: {result.detail}"
            language = self.settings.lists[0].language
            page_message = ""
            # A planned window opening or closing (its reminder; its end, or its overrun).
            for planned in incidents.start_due(session, self.settings):
                page_message = f"Maintenance: {planned.nature}"
            ended = incidents.end_due(session, self.settings, result.ok, state.state == DOWN)
            if ended is not None:
                page_message = f"Maintenance {'over' if ended.status == RESOLVED else 'overrun'}: {ended.nature}"
            if event == DOWN and incidents.current(session) is None:
                nature = incidents.AUTOMATIC_NATURE.get(language, incidents.AUTOMATIC_NATURE["en"])
                incidents.declare(session, self.settings, nature, actor="watch", automatic=True)
                page_message = f"Outage: {nature}"
            elif event == UP:
                incident = incidents.resolve(session, self.settings, actor="watch", automatic_only=True)
                if incident is not None:
                    page_message = f"Resolved: {incident.nature}"
        if event:
            log.warning("MX %s is %s (%s: %s)", w.mx, event, result.step, result.detail)
        if page_message:  # after the commit: the notices are safe even if git fails
            publish_status_safely(self.db, self.settings, page_message)
            self.wakeup.set()  # notices, and posts, are waiting
            self.channel_wakeup.set()
        return Tick(
            w.mx,
            result.ok,
            result.step,
            result.detail,
            result.seconds,
            state.state,
            state.failures,
            state.successes,
            event,
        )

    def _post_channels(self, stop: threading.Event) -> None:
        """Post the outage events due to their channels, apart from mail and the probes."""
        failures = FailureLog(log, "channel posts failed; trying again", "channel posts work again")
        while not stop.is_set():
            self.channel_wakeup.wait(CHANNEL_POLL)
            self.channel_wakeup.clear()
            if stop.is_set():
                return
            try:
                channels.deliver_due(self.db, self.settings)
            except Exception as exc:  # the database, a notify_file gone: once, then one line
                failures.failed(exc)
            else:
                failures.succeeded()

    def run(self, stop: threading.Event) -> None:
        """Probe every `[watch] interval` seconds and deliver the outbox until `stop` is set."""
        wakeup = self.wakeup
        with self.db.transaction() as session:
            outbox.release_stale(session, outbox.CLAIM_LEASE)
        workers = delivery.run_workers(self.db, self.settings, stop, wakeup)
        poster = threading.Thread(target=self._post_channels, args=(stop,), name="channels", daemon=True)
        poster.start()
        workers.append(poster)
        failures = FailureLog(log, "probe cycle failed; trying again next interval", "probe cycles work again")
        try:
            while not stop.is_set():
                started = utcnow()
                try:
                    if self.tick().event:
                        wakeup.set()  # notices are waiting
                        self.channel_wakeup.set()
                except Exception as exc:
                    failures.failed(exc)
                else:
                    failures.succeeded()
                elapsed = (utcnow() - started).total_seconds()
                stop.wait(max(0.0, self.settings.watch.interval - elapsed))
        finally:
            stop.set()
            wakeup.set()
            self.channel_wakeup.set()
            for thread in workers:
                thread.join(timeout=self.settings.relay.timeout + 5)


CHANNEL_POLL = 10.0  # seconds between looks for channel posts due (retries, `outage` by hand)


def publish_status_safely(db: Database, settings: Settings, message: str) -> None:
    """Commit the status page; a git failure is logged, the next change writes it again."""
    try:
        with db.transaction() as session:
            incidents.publish_status(session, settings, message)
    except Exception:
        log.exception("could not write the status page")


def roster_age(settings: Settings, db: Database) -> tuple[dt.datetime | None, bool]:
    """When the newest imported roster was exported, and whether that is too old."""
    with db.transaction() as session:
        last = roster.last_import(session)
    if last is None:
        return None, True
    too_old = utcnow() - last.exported_at > dt.timedelta(hours=settings.watch.roster_max_age)
    return last.exported_at, too_old
