"""The watcher as cron runs it (`watch --once`, a real relay sink, an MX port nobody listens
on) and the roster export that feeds it, through the CLI."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from listbridge.cli import cli
from listbridge.config import build_settings
from listbridge.db import Database
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import RosterImport, Subscriber, utcnow
from listbridge.outage import roster

from helpers import free_port

LIST = "bla@bla.example.org"
READERS = ["ann@example.org", "bob@example.net", "chloe@example.fr"]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Database]:
    """The home instance's database with its subscribers."""
    db = Database(f"sqlite:///{tmp_path / 'home.sqlite3'}")
    db.upgrade()
    settings = build_settings({"lists": [{"address": LIST, "language": "en"}]})
    with db.transaction() as session:
        for address in READERS:
            subscribe(session, ListContext(settings, settings.lists[0]), address)
    yield db
    db.dispose()


def run(config: Path, *args: str):
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def watcher_config(tmp_path: Path, db_url: str, relay_port: int) -> Path:
    path = tmp_path / "watch.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n'
        f'[relay]\nhost = "127.0.0.1"\nport = {relay_port}\nconnections = 1\ntimeout = 5\n'
        f'[site]\nrepo = "{tmp_path / "site"}"\n'
        f'[[lists]]\naddress = "{LIST}"\ntitle = "bla"\nlanguage = "en"\nowner = "owner@example.org"\n'
        f'[watch]\nmx = "127.0.0.1:{free_port()}"\nfailures = 3\ntimeout = 1.0\n'
        f'roster = "{tmp_path / "roster.sqlite3"}"\n'
    )
    return path


def imports(db_url: str) -> int:
    db = Database(db_url)
    try:
        with db.transaction() as session:
            return session.scalar(select(func.count()).select_from(RosterImport)) or 0
    finally:
        db.dispose()


def test_watch_once_from_cron_sends_the_notices_it_queues(tmp_path, db_url, sink, home):
    config = watcher_config(tmp_path, db_url, sink.port)
    with home.transaction() as session:
        roster.export(session, tmp_path / "roster.sqlite3")
    ticks = []
    for _ in range(3):  # the MX port is closed: three failed probes open the outage
        result = run(config, "watch", "--once", "--json")
        assert result.exit_code == 0, result.output
        ticks.append(json.loads(result.output))
        assert imports(db_url) == 1  # read once; the next runs find the same export
    assert [(t["ok"], t["failures"], t["event"]) for t in ticks] == [
        (False, 1, None),
        (False, 2, None),
        (False, 3, "down"),
    ]
    received = Counter(a for r in sink.handler.received for a in r.rcpt_tos)
    assert received == {a: 1 for a in [*READERS, "owner@example.org"]}  # delivered before exiting
    assert (ticks[-1]["mail_sent"], ticks[-1]["mail_queued"]) == (len(READERS) + 1, 0)
    text = run(config, "watch", "--once")
    assert text.exit_code == 0 and "DOWN at connect" in text.output and "mail:" not in text.output
    assert len(sink.handler.received) == len(READERS) + 1  # nothing sent twice

    with home.transaction() as session:  # a new export is a new heartbeat: read again
        roster.export(session, tmp_path / "roster.sqlite3")
    assert run(config, "watch", "--once").exit_code == 0 and imports(db_url) == 2


def test_roster_export_to_a_directory_is_one_sentence(tmp_path, db_url):
    config = tmp_path / "lb.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    folder = tmp_path / "exports"
    folder.mkdir()
    result = CliRunner().invoke(cli, ["--config", str(config), "roster", "export", str(folder)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {folder} is a directory: give the roster's file name, such as {folder / 'roster.sqlite3'}."
    )
    assert list(folder.iterdir()) == []  # no temporary file left behind


def test_a_subscriber_turned_off_by_bounces_is_left_out_of_the_roster(tmp_path, home):
    with home.transaction() as session:
        session.execute(update(Subscriber).where(Subscriber.address == READERS[1]).values(disabled_at=utcnow()))
        snapshot = roster.export(session, tmp_path / "roster.sqlite3")
    with sqlite3.connect(tmp_path / "roster.sqlite3") as out:
        exported = [row[0] for row in out.execute("SELECT address FROM subscribers ORDER BY address")]
    assert snapshot.subscribers == 2 and exported == [READERS[0], READERS[2]]
