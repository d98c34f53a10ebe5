"""Planned maintenance through the watcher's own ticks (probe results given, time moved by the
test): the announcement at once, the reminder as the window opens, no automatic outage while
the MX is down inside it, and at its end "maintenance over", or an outage when it overruns,
resolved once the MX answers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from listbridge.cli import cli
from listbridge.db import Database
from listbridge.models import MAINTENANCE, RESOLVED, Incident, OutboxMessage, utcnow
from listbridge.outage import incidents
from listbridge.outage.probe import ProbeResult
from listbridge.outage.watch import Watcher

from helpers import db_count, watcher_config

UP = ProbeResult(True, "done", "250", 0.01)
DOWN = ProbeResult(False, "connect", "refused", 0.01)


def kinds(db: Database) -> list[str]:
    with db.transaction() as session:
        return [k for (k,) in session.query(OutboxMessage.kind).order_by(OutboxMessage.id) if not k.endswith("-owner")]


@pytest.fixture
def watched(tmp_path: Path, db_url: str, sink):
    settings = watcher_config(tmp_path, db_url, sink.port, "127.0.0.1:9")
    db = Database(settings.database.url)
    db.upgrade()
    from listbridge.lists.context import ListContext
    from listbridge.lists.subscriptions import subscribe

    with db.transaction() as session:
        subscribe(session, ListContext(settings, settings.lists[0]), "zoe@elsewhere.example")
    yield settings, db, Watcher(settings, db)
    db.dispose()


def end_window_now(db: Database) -> None:
    with db.transaction() as session:
        session.execute(update(Incident).values(planned_end=utcnow() - dt.timedelta(seconds=1)))


def test_a_window_that_ends_on_time(watched):
    settings, db, watcher = watched
    now = utcnow()
    with db.transaction() as session:
        incidents.plan(session, settings, "new disks", now + dt.timedelta(minutes=1), now + dt.timedelta(hours=2))
        pages = incidents.render_status(session, settings)
    assert kinds(db) == ["outage-scheduled"]
    assert "## Maintenances prévues" in pages["status.gmi"] and "new disks" in pages["status.gmi"]
    assert "## Tout va bien" in pages["status.gmi"]  # scheduled is not under way
    with db.transaction() as session:
        session.execute(update(Incident).values(planned_start=utcnow() - dt.timedelta(seconds=1)))
    watcher.tick(UP)
    assert kinds(db) == ["outage-scheduled", "outage-started"]
    for _ in range(4):  # the MX down inside the window: no outage of its own
        watcher.tick(DOWN)
    with db.transaction() as session:
        ongoing = incidents.current(session)
        assert ongoing is not None and ongoing.status == MAINTENANCE
    end_window_now(db)
    watcher.tick(UP)
    with db.transaction() as session:
        assert session.query(Incident).one().status == RESOLVED
    assert kinds(db) == ["outage-scheduled", "outage-started", "outage-resolved"]
    with db.transaction() as session:
        body = session.query(OutboxMessage.body).filter(OutboxMessage.kind == "outage-resolved").scalar()
    assert body is not None and b"La maintenance est termin" in body  # not "the outage is over"


def test_a_window_that_overruns_becomes_an_outage(watched):
    settings, db, watcher = watched
    now = utcnow()
    with db.transaction() as session:
        incidents.plan(session, settings, "new disks", now - dt.timedelta(minutes=1), now + dt.timedelta(hours=2))
    for _ in range(settings.watch.failures):  # the MX down inside the window, long enough to count
        watcher.tick(DOWN)
    end_window_now(db)
    watcher.tick(DOWN)  # over, and the MX still silent
    with db.transaction() as session:
        incident = incidents.current(session)
        assert incident is not None and incident.automatic and incident.status == "identified"
        (news,) = [u for u in incidents.updates(session, incident) if u.kind == "updated"]
    assert news.message == "La maintenance dure plus longtemps que prévu."
    for _ in range(settings.watch.recoveries):
        watcher.tick(UP)
    with db.transaction() as session:
        assert session.query(Incident).one().status == RESOLVED
    assert kinds(db) == ["outage-scheduled", "outage-started", "outage-updated", "outage-resolved"]


def test_the_command_line_takes_local_times_and_refuses_bad_ones(tmp_path: Path, db_url: str):
    config = tmp_path / "w.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[site]\nrepo = "{tmp_path / "site"}"\n')
    run = lambda *a: CliRunner().invoke(cli, ["--config", str(config), "outage", "declare", *a])  # noqa: E731
    later = utcnow().astimezone() + dt.timedelta(days=1)
    start, end = later.strftime("%Y-%m-%d %H:%M"), (later + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    done = run("--planned", "--start", start, "--end", end, "--nature", "new disks")
    assert done.exit_code == 0, done.output
    assert "#1 scheduled: new disks" in done.output
    assert (
        run("--planned", "--start", "tomorrow", "--end", end, "--nature", "x")
        .output.strip()
        .endswith("is not a time: give 2026-12-05 22:00 or 2026-12-05T22:00+01:00.")
    )
    assert "needs --start and --end" in run("--planned", "--nature", "x").output
    assert "must end after it starts" in run("--planned", "--start", end, "--end", start, "--nature", "x").output
    db = Database(db_url)
    try:
        assert db_count(db, Incident) == 1
    finally:
        db.dispose()


def test_channel_texts_keep_their_lines(watched):
    """A line per sentence, as in the mail: none glued to the next by a template's tags."""
    from listbridge.outage import channels

    settings, db, watcher = watched
    with db.transaction() as session:
        incident = incidents.declare(session, settings, "power cut", actor="test")
        incidents.resolve(session, settings, actor="test")
        for change in incidents.updates(session, incident):
            title, body = channels.text(settings, incident, change)
            assert title and all(line.strip() for line in body.splitlines()), body
            assert not any(". " in line and line.rstrip().endswith(":") for line in body.splitlines())
            assert ".Historique" not in body and ".Suivre" not in body, body
