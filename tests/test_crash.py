"""Nothing lost: a real `listbridge serve` is SIGKILLed in the middle of a burst. Every message
that got a 250 must be in the database after the restart, and the outbox rows the dead process
had in flight ('sending' on SQLite, held locked on PostgreSQL) must be queued again and
delivered."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from listbridge.db import Database
from listbridge.models import QUEUED, SENDING, SENT, Comment, Confirmation, OutboxRecipient

from helpers import free_port, wait_for

LIST = "bla@bla.example.org"
SUBSCRIBE = "bla+subscribe@bla.example.org"
CLIENTS = 6
KILL_AFTER = 40  # accepted messages before the SIGKILL


def write_config(path: Path, url: str, port: int, relay_port: int) -> None:
    path.write_text(
        f'[database]\nurl = "{url}"\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[relay]\nhost = "127.0.0.1"\nport = {relay_port}\nconnections = 2\ntimeout = 60\n\n'
        f'[site]\nrepo = "{path.parent / "site"}"\n\n'
        f'[[lists]]\naddress = "{LIST}"\ntitle = "bla"\nowner = "owner@example.org"\nlanguage = "en"\n',
        encoding="utf-8",
    )


class Server:
    """`listbridge --config X serve` as a child process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.out = open(log, "ab")  # noqa: SIM115  (the server writes to it until stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listbridge", "--config", str(config), "serve"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited early:\n{log.read_text()}"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                    if client.noop()[0] == 250:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"serve did not answer:\n{log.read_text()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.out.close()


def post(port: int, to: str, sender: str, subject: str, message_id: str) -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content("burst\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.send_message(msg)  # raises unless the message got its 250


class Burst:
    """Client threads sending until stopped; remembers exactly what got a 250."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.posts: list[str] = []  # Message-IDs of accepted list posts
        self.subscribers: list[str] = []  # senders of accepted +subscribe requests
        self.errors = 0
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]

    def _client(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            key = f"c{n}m{i}"
            try:
                if i % 2:
                    post(self.port, LIST, "carole@example.net", f"burst {key}", f"<{key}@burst.example.net>")
                    with self.lock:
                        self.posts.append(f"<{key}@burst.example.net>")
                else:
                    post(self.port, SUBSCRIBE, f"{key}@burst.example.net", "subscribe", f"<{key}@burst.example.net>")
                    with self.lock:
                        self.subscribers.append(f"{key}@burst.example.net")
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.errors += 1
                time.sleep(0.05)

    def accepted(self) -> int:
        with self.lock:
            return len(self.posts) + len(self.subscribers)


def locked_rows(db: Database) -> set[int]:
    """PostgreSQL: the queued outbox rows that some other transaction holds locked (in flight)."""
    queued = select(OutboxRecipient.id).where(OutboxRecipient.state == QUEUED)
    with db.engine.connect() as conn, conn.begin():
        return set(conn.scalars(queued)) - set(conn.scalars(queued.with_for_update(skip_locked=True)))


@pytest.fixture
def tarpit():
    """A relay that accepts TCP connections and never says a word: deliveries hang in 'sending'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def test_sigkill_mid_burst_loses_nothing(tmp_path, db_url, sink, tarpit):
    port = free_port()
    config = tmp_path / "listbridge.toml"
    write_config(config, db_url, port, tarpit)
    log = tmp_path / "serve.log"
    server = Server(config, port, log)
    db = Database(db_url)
    postgres = db.engine.dialect.name == "postgresql"
    try:
        burst = Burst(port)
        for thread in burst.threads:
            thread.start()
        wait_for(lambda: burst.accepted() >= KILL_AFTER, timeout=60)
        if postgres:  # in-flight rows are held locked by the live server's transactions
            wait_for(lambda: locked_rows(db), timeout=30)
            stranded = locked_rows(db)
        server.kill()
        time.sleep(0.3)  # clients now hit a dead port
        burst.stop.set()
        for thread in burst.threads:
            thread.join(timeout=30)
        assert burst.errors > 0, "the kill did not land in the middle of the burst"
        assert burst.posts and burst.subscribers

        # The dead process left claimed rows behind, stuck on the silent relay.
        if postgres:  # its transactions died with it: the rows it held are simply queued
            with db.transaction() as session:
                assert set(session.scalars(select(OutboxRecipient.state).where(OutboxRecipient.id.in_(stranded)))) == {
                    QUEUED
                }
        else:
            with db.transaction() as session:
                stranded = set(
                    session.scalars(
                        select(OutboxRecipient.id).where(
                            OutboxRecipient.state == SENDING, OutboxRecipient.claimed_by.like(f"%:{server.proc.pid}:%")
                        )
                    )
                )
        assert stranded, "no outbox row was in flight at the kill"

        # Restart against the real relay.
        write_config(config, db_url, port, sink.port)
        server = Server(config, port, log)

        with db.transaction() as session:
            held = set(session.scalars(select(Comment.message_id)))
            confirmations = set(session.scalars(select(Confirmation.address)))
        assert set(burst.posts) - held == set()
        assert set(burst.subscribers) - confirmations == set()

        # The restarted server answers and stores.
        post(port, LIST, "dave@example.net", "after restart", "<after-restart@example.net>")
        with db.transaction() as session:
            assert session.scalars(select(Comment.id).where(Comment.message_id == "<after-restart@example.net>")).one()

        def delivered() -> bool:
            with db.transaction() as session:
                states = dict(session.execute(select(OutboxRecipient.id, OutboxRecipient.state)).all())
            return all(states[i] == SENT for i in stranded) and all(s == SENT for s in states.values())

        wait_for(delivered, timeout=60)
        got = {rcpt for r in sink.handler.received for rcpt in r.rcpt_tos}
        assert set(burst.subscribers) - got == set()  # every confirmation request went out
    finally:
        server.stop()
        db.dispose()
    text = log.read_text()
    assert "Traceback" not in text, text
    if not postgres:  # on PostgreSQL nothing needed queuing again: the locks died with the process
        assert f"queued again {len(stranded)} deliveries" in text, text


def test_sigterm_shuts_down_cleanly(tmp_path, db_url, sink):
    port = free_port()
    config = tmp_path / "listbridge.toml"
    write_config(config, db_url, port, sink.port)
    server = Server(config, port, tmp_path / "serve.log")
    try:
        post(port, SUBSCRIBE, "erin@example.net", "subscribe", "<sigterm@example.net>")
        wait_for(lambda: sink.handler.to("erin@example.net"))
        started = time.monotonic()
        server.proc.terminate()
        assert server.proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
    finally:
        server.stop()
    text = (tmp_path / "serve.log").read_text()
    assert "shutting down" in text and "Traceback" not in text, text


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path, db_url, sink):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "listbridge.toml"
        write_config(config, db_url, port, sink.port)
        result = subprocess.run(
            [sys.executable, "-m", "listbridge", "--config", str(config), "serve"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in last and "in use" in last, result.stderr
