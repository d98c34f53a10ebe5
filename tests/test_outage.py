"""The outage channel: roster from home, a watcher probing a real loopback MX, notices through
a real relay sink, the status page committed to a real git repo."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from sqlalchemy import select

from listbridge.cli import cli
from listbridge.db import Database
from listbridge.models import OutboxMessage, Subscriber
from listbridge.outage import incidents
from listbridge.outage.watch import Watcher

from helpers import LIST, READERS, SinkHandler, db_count, export_roster, free_port, git, wait_for, watcher_config


class MX:
    """A real SMTP server on loopback that the test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(SinkHandler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def mx():
    server = MX()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def watcher_settings(tmp_path, db_url, sink, mx):
    return watcher_config(tmp_path, db_url, sink.port, f"127.0.0.1:{mx.port}")


def notices(sink, kind: str) -> Counter:
    """How many notices of one kind (by subject) each address received."""
    marker = {"down": "Panne :", "resolved": "Retour à la normale"}[kind]
    return Counter(a for r in sink.handler.received if marker in r.message["Subject"] for a in r.rcpt_tos)


def test_full_drill(home, watcher_settings, mx, sink):
    export_roster(home, watcher_settings.watch.roster)
    db = Database(watcher_settings.database.url)
    db.upgrade()
    watcher, stop = Watcher(watcher_settings, db), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    site = Path(watcher_settings.site.repo)
    try:
        wait_for(lambda: db_count(db, Subscriber) == len(READERS))
        time.sleep(1.5)
        mx.stop()
        dark = time.monotonic()
        wait_for(lambda: set(notices(sink, "down")) >= set(READERS) | {"owner@example.org"}, timeout=30)
        seconds = time.monotonic() - dark
        print(f"\nMX dark -> last subscriber notified: {seconds:.2f} s (interval 1, failures 3)")
        status = (site / "status.gmi").read_text()
        assert "## Panne en cours" in status and "le serveur de courrier ne répond pas" in status
        assert "status.gmi" in git(site, "show", "--name-only", "--format=%s", "HEAD")
        mx.start()
        wait_for(lambda: set(notices(sink, "resolved")) >= set(READERS), timeout=30)
        time.sleep(1.5)  # a few more probes: nothing more may be sent
    finally:
        stop.set()
        thread.join()
        db.dispose()
    assert set(notices(sink, "down").values()) == {1} and set(notices(sink, "resolved").values()) == {1}
    assert "## Tout va bien" in (site / "status.gmi").read_text()
    # The unsubscribe link in the notice is the subscriber's own token from home.
    with home.transaction() as session:
        token = session.scalar(select(Subscriber.token).where(Subscriber.address == READERS[0]))
    first = next(r for r in sink.handler.received if READERS[0] in r.rcpt_tos)
    assert first.message["List-Unsubscribe"] == f"<mailto:bla+unsubscribe-{token}@bla.example.org>"
    assert first.message["Auto-Submitted"] == "auto-generated" and first.message["Precedence"] == "bulk"
    assert "gemini://bla.example.org/status.gmi" in first.message.get_content()


def test_flapping_sends_nothing_and_a_restart_repeats_nothing(home, watcher_settings, mx, sink):
    export_roster(home, watcher_settings.watch.roster)
    db = Database(watcher_settings.database.url)
    db.upgrade()
    watcher = Watcher(watcher_settings, db)
    assert watcher.tick().ok
    mx.stop()
    assert [watcher.tick().event for _ in range(2)] == [None, None]  # fewer than `failures`
    mx.start()
    assert watcher.tick().ok
    assert db_count(db, OutboxMessage) == 0

    mx.stop()
    events = [watcher.tick().event for _ in range(3)]
    assert events == [None, None, "down"]
    opened = db_count(db, OutboxMessage, OutboxMessage.kind == "outage-opened")
    assert opened == 1
    restarted = Watcher(watcher_settings, db)  # a new process, same database
    assert [restarted.tick().event for _ in range(3)] == [None, None, None]
    assert db_count(db, OutboxMessage, OutboxMessage.kind == "outage-opened") == 1
    mx.start()
    assert [restarted.tick().event for _ in range(3)] == [None, "up", None]
    assert db_count(db, OutboxMessage, OutboxMessage.kind == "outage-resolved") == 1
    db.dispose()


def test_maintainer_declares_updates_and_resolves(tmp_path, watcher_settings, home, sink):
    export_roster(home, watcher_settings.watch.roster)
    config = tmp_path / "w.toml"
    s = watcher_settings
    config.write_text(
        f'[database]\nurl = "{s.database.url}"\n[relay]\nport = {s.relay.port}\nconnections = 1\n'
        f'[site]\nrepo = "{s.site.repo}"\nbase_url = "{s.site.base_url}"\n'
        f'[[lists]]\naddress = "{LIST}"\nlanguage = "en"\nowner = "owner@example.org"\n'
        f'[watch]\nroster = "{s.watch.roster}"\nmx = "{s.watch.mx}"\n'
    )

    def run(*args: str):
        return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)

    assert run("roster", "import", s.watch.roster).exit_code == 0
    result = run(
        "outage", "declare", "--nature", "power cut at home", "--eta", "tonight 20:00", "--status", "identified"
    )
    assert result.exit_code == 0, result.output
    assert run("outage", "declare", "--nature", "again").exit_code != 0  # one open outage at a time
    assert run("outage", "update", "--message", "The ISP is on site.", "--status", "monitoring").exit_code == 0
    data = json.loads(run("outage", "status", "--json").output)
    assert data["outage"]["status"] == "monitoring" and data["outage"]["eta"] == "tonight 20:00"
    assert [u["kind"] for u in data["outage"]["updates"]] == ["opened", "updated"]
    assert data["roster"]["stale"] is False
    assert run("outage", "resolve", "--message", "Power is back.").exit_code == 0
    assert "No outage is open." in run("outage", "status").output
    assert run("outage", "resolve").exit_code != 0
    assert run("queue", "flush").exit_code == 0
    subjects = Counter(r.message["Subject"] for r in sink.handler.received for _ in r.rcpt_tos)
    assert subjects == {
        "[bla] Outage: power cut at home": len(READERS) + 1,
        "[bla] Outage update: power cut at home": len(READERS) + 1,
        "[bla] Back to normal: power cut at home": len(READERS) + 1,
    }
    site = Path(s.site.repo)
    assert "power cut at home (resolved)" in (site / "status.gmi").read_text()
    assert "The ISP is on site." in (site / "status" / "1.gmi").read_text()
    import feedparser

    feed = feedparser.parse((site / "status.xml").read_text())
    assert not feed.bozo and len(feed.entries) == 3


def test_stale_roster_is_reported(tmp_path, watcher_settings, home):
    export_roster(home, watcher_settings.watch.roster)
    db = Database(watcher_settings.database.url)
    db.upgrade()
    import datetime as dt

    from listbridge.models import RosterImport
    from listbridge.outage.watch import roster_age

    Watcher(watcher_settings, db).refresh_roster()
    assert roster_age(watcher_settings, db)[1] is False
    with db.transaction() as session:
        for row in session.scalars(select(RosterImport)):
            row.exported_at -= dt.timedelta(hours=49)
    assert roster_age(watcher_settings, db)[1] is True
    db.dispose()


def test_watch_once_prints_the_probe(tmp_path, watcher_settings, mx):
    config = tmp_path / "w.toml"
    config.write_text(
        f'[database]\nurl = "{watcher_settings.database.url}"\n[site]\nrepo = "{watcher_settings.site.repo}"\n'
        f'[watch]\nmx = "{watcher_settings.watch.mx}"\ntimeout = 1.0\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "watch", "--once", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tick = json.loads(result.output)
    assert tick["ok"] is True and tick["step"] == "done" and tick["state"] == "up"
    mx.stop()
    tick = json.loads(CliRunner().invoke(cli, ["--config", str(config), "watch", "--once", "--json"]).output)
    assert tick["ok"] is False and tick["step"] == "connect" and tick["failures"] == 1


def test_the_watcher_logs_a_stale_roster(watcher_settings, home, caplog):
    import datetime as dt
    import logging

    from listbridge.models import RosterImport

    export_roster(home, watcher_settings.watch.roster)
    db = Database(watcher_settings.database.url)
    db.upgrade()
    watcher = Watcher(watcher_settings, db)
    watcher.refresh_roster()
    with caplog.at_level(logging.WARNING, logger="listbridge.outage.watch"):
        watcher.refresh_roster()
        assert "roster" not in caplog.text
        with db.transaction() as session:
            for row in session.scalars(select(RosterImport)):
                row.exported_at -= dt.timedelta(hours=49)
        watcher.refresh_roster()
        watcher.refresh_roster()  # once an hour, not at every probe
    assert caplog.text.count("is home exporting it?") == 1
    db.dispose()


def test_a_probe_cycle_that_keeps_failing_logs_one_traceback(watcher_settings, caplog):
    import logging

    from listbridge.models import ProbeStatus

    db = Database(watcher_settings.database.url)
    db.upgrade()
    with db.engine.begin() as conn:  # every cycle now fails on the missing table, for real
        ProbeStatus.__table__.drop(conn)
    watcher, stop = Watcher(watcher_settings, db), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    caplog.set_level(logging.INFO, logger="listbridge.outage.watch")
    thread.start()
    try:
        wait_for(lambda: caplog.text.count("probe cycle failed") >= 3, timeout=15)
        with db.engine.begin() as conn:
            ProbeStatus.__table__.create(conn)
        wait_for(lambda: "probe cycles work again" in caplog.text, timeout=15)
    finally:
        stop.set()
        thread.join(15)
        db.dispose()
    failed = [r for r in caplog.records if "probe cycle failed" in r.getMessage()]
    assert sum(1 for r in failed if r.exc_info) == 1
    assert all("probe_status" in r.getMessage() for r in failed), failed[0].getMessage()
    assert caplog.text.count("probe cycles work again") == 1


def test_an_owner_of_two_lists_gets_each_notice_once(make_settings, db):
    from listbridge.models import OutboxRecipient
    from listbridge.outage import incidents

    lists = [
        {"address": LIST, "owner": "owner@example.org"},
        {"address": "autre@bla.example.org", "owner": "Owner@example.org", "comments_dir": "log/autre"},
    ]
    settings = make_settings(lists=lists)
    with db.transaction() as session:
        incidents.declare(session, settings, "power cut", actor="admin")
    assert db_count(db, OutboxRecipient, OutboxRecipient.address.in_(["owner@example.org", "Owner@example.org"])) == 1


def test_mailboxes_on_the_dark_mx_get_only_the_resolution(home, watcher_settings, mx, sink):
    """A roster with home-domain and outside addresses: only the outside ones are told of the
    outage; everyone is told it is over, with what happened."""
    settings = dataclasses.replace(
        watcher_settings, watch=dataclasses.replace(watcher_settings.watch, home_domains=("example0.org",))
    )
    dark = {a for a in READERS if a.endswith("@example0.org")}
    export_roster(home, settings.watch.roster)
    db = Database(settings.database.url)
    db.upgrade()
    watcher, stop = Watcher(settings, db), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: db_count(db, Subscriber) == len(READERS))
        mx.stop()
        wait_for(lambda: set(notices(sink, "down")) >= set(READERS) - dark, timeout=30)
        with db.transaction() as session:
            assert incidents.unreachable_count(session, settings) == len(dark)
        mx.start()
        wait_for(lambda: set(notices(sink, "resolved")) >= set(READERS), timeout=30)
    finally:
        stop.set()
        thread.join()
        db.dispose()
    assert not dark & set(notices(sink, "down"))
    resolved = next(r for r in sink.handler.received if sorted(dark)[0] in r.rcpt_tos)
    assert "Ce qui s'est passé :" in resolved.message.get_content()
