"""The database as a file and as a URL: a new SQLite database (and its -wal/-shm) is readable by
its owner only, an existing one open to others is reported once, and a URL that cannot be used
is one sentence naming the key, through the real CLI."""

from __future__ import annotations

import os
import signal
import smtplib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from listbridge.db import Database

from helpers import PG_URL, free_port, wait_for


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder: Path, name: str) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.glob(f"{name}*")}


def listbridge(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "lb.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    return subprocess.run(
        [sys.executable, "-m", "listbridge", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_a_new_database_and_its_wal_are_private(tmp_path: Path, umask_022: None) -> None:
    db = Database(f"sqlite:///{tmp_path / 'lb.sqlite3'}")
    try:
        db.upgrade()
        with db.engine.connect() as connection:  # -wal and -shm exist while a connection is open
            connection.execute(
                text("INSERT INTO moderation_events (action, actor, at, detail) VALUES ('x', 'y', '2026-01-01', '')")
            )
            connection.commit()
            assert modes(tmp_path, "lb.sqlite3") == {
                "lb.sqlite3": 0o600,
                "lb.sqlite3-wal": 0o600,
                "lb.sqlite3-shm": 0o600,
            }
    finally:
        db.dispose()


def test_an_existing_database_open_to_others_is_reported_once(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "lb.sqlite3"
    sqlite3.connect(path).close()  # as an older listbridge left it: 0644
    assert modes(tmp_path, "lb.sqlite3") == {"lb.sqlite3": 0o644}
    result = listbridge(tmp_path, f"sqlite:///{path}", "subscribers", "list")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "other users" in line]
    assert "WARNING" in line and "mode 644" in line and f"chmod 600 {path}" in line
    path.chmod(0o640)  # its group can read it too
    grouped = listbridge(tmp_path, f"sqlite:///{path}", "subscribers", "list")
    assert "mode 640" in grouped.stderr, grouped.stderr
    path.chmod(0o600)
    again = listbridge(tmp_path, f"sqlite:///{path}", "subscribers", "list")
    assert again.returncode == 0 and "other users" not in again.stderr


def test_serve_reports_an_exposed_database_once(tmp_path: Path, umask_022: None) -> None:
    """`serve` opens the database twice (itself and its store process): one warning."""
    path = tmp_path / "lb.sqlite3"
    sqlite3.connect(path).close()
    port = free_port()
    config = tmp_path / "lb.toml"
    site = tmp_path / "site"
    config.write_text(
        f'[database]\nurl = "sqlite:///{path}"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n[site]\nrepo = "{site}"\n'
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "listbridge", "--config", str(config), "serve"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _stores_a_mail(port), timeout=20)  # a 250: the store process is up
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=40)
    assert server.stderr is not None
    warnings = [line for line in server.stderr.read().splitlines() if "other users" in line]
    assert len(warnings) == 1, warnings


def _stores_a_mail(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            return (
                client.sendmail(
                    "zoe@example.org", ["bla+subscribe@localhost"], "From: zoe@example.org\r\n\r\nplease\r\n"
                )
                == {}
            )
    except OSError:
        return False


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("nonsense://x", "names no known database, 'nonsense'"),
        ("mysql://lb:s3cret@db.example.org/lb", "needs the mysql driver, which is not installed"),
        ("not a url at all", "is not a database URL"),
    ],
)
def test_an_unusable_database_url_is_one_sentence(tmp_path: Path, url: str, said: str) -> None:
    result = listbridge(tmp_path, url, "subscribers", "list")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("listbridge: error: [database] url ") and said in line and line.endswith("."), line
    assert "s3cret" not in line


@pytest.mark.skipif(not PG_URL, reason="a URL with a password needs a server that takes it: PostgreSQL pass")
def test_db_upgrade_does_not_print_the_password(tmp_path: Path) -> None:
    url = make_url(PG_URL).set(password="s3cret-pw")  # trust authentication ignores it
    result = listbridge(tmp_path, url.render_as_string(hide_password=False), "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr and "***" in result.stdout
