"""The README's first command: `listbridge serve` on its embedded defaults, as a new user runs it."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from helpers import PG_URL


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.skipif(bool(PG_URL), reason="the embedded defaults are SQLite; this test runs in the SQLite pass")
def test_serve_on_defaults_then_sigterm(tmp_path: Path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8025)) == 0:
            pytest.fail("port 8025 (the default) is busy: stop what listens there to run this test")
    env = {k: v for k, v in os.environ.items() if k != "LISTBRIDGE_CONFIG"}
    server = subprocess.Popen(
        [sys.executable, "-m", "listbridge", "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_port(8025)
        with smtplib.SMTP("127.0.0.1", 8025, timeout=10) as client:
            refused = client.sendmail(
                "zoe@example.org",
                ["bla+subscribe@localhost"],
                "From: zoe@example.org\r\nSubject: subscribe\r\n\r\nplease\r\n",
            )
            assert refused == {}
            client.mail("zoe@example.org")
            code, _ = client.rcpt("someone@elsewhere.example")
            assert code == 550  # never an open relay
        assert (tmp_path / "site" / ".git").is_dir()
        engine = create_engine(f"sqlite:///{tmp_path / 'listbridge.sqlite3'}")
        with engine.connect() as conn:
            kinds = conn.execute(text("SELECT kind FROM outbox_messages")).scalars().all()
        engine.dispose()
        assert kinds == ["confirm_subscribe"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=40) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.stderr is not None
    log = server.stderr.read()
    assert "Traceback" not in log
    assert "listening on 127.0.0.1:8025" in log and "subscribe sent to zoe@example.org" in log
    # aiosmtpd's per-command lines (and its start-up probe, which reads as a lost connection)
    # only with -v
    assert "mail.log" not in log and "EOF received" not in log
