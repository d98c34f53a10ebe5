"""Progress of `queue flush`: one line however many batches, redrawn in place on a terminal
(a real pty), a single final line elsewhere (CliRunner, a pipe)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from listbridge.cli import cli
from listbridge.config import build_settings
from listbridge.db import Database
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import request

ADDRESSES = ["ann@example.org", "bob@example.org", "chloe@example.org"]


@pytest.fixture
def config(tmp_path: Path, db_url: str, sink) -> Path:
    path = tmp_path / "lb.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n[relay]\nhost = "127.0.0.1"\nport = {sink.port}\nconnections = 2\n'
        '[[lists]]\naddress = "bla@bla.example.org"\ntitle = "bla"\nlanguage = "en"\n'
    )
    db = Database(db_url)
    db.upgrade()
    settings = build_settings(tomllib.loads(path.read_text()))
    with db.transaction() as session:  # three mails, delivered in three batches
        for address in ADDRESSES:
            request(session, ListContext(settings, settings.lists[0]), "subscribe", address, "")
    db.dispose()
    return path


def test_flush_off_a_terminal_prints_one_progress_line(config: Path, sink) -> None:
    result = CliRunner().invoke(cli, ["--config", str(config), "queue", "flush"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("delivering")] == ["delivering: 3/3 done"]
    assert "3 delivered or failed, 0 still queued" in result.output
    assert len(sink.handler.received) == 3


def test_flush_on_a_terminal_redraws_one_line(config: Path, sink) -> None:
    leader, follower = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "listbridge", "--config", str(config), "queue", "flush"],
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
            env={**os.environ, "COLUMNS": "80"},
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    screen = shown.decode()
    assert "delivering" in screen and "\r" in screen  # drawn in place
    assert screen.count("\n") <= 1, screen  # one line, ended once
    assert len(sink.handler.received) == 3
