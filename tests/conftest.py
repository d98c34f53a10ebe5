"""Shared fixtures: a fresh database (SQLite, or PostgreSQL when LISTBRIDGE_TEST_DATABASE_URL is
set), a real aiosmtpd sink standing in for the relay, and a real `serve` on a loopback port."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text

from listbridge.config import Settings, build_settings
from listbridge.db import Database
from listbridge.service import Service

PG_URL = os.environ.get("LISTBRIDGE_TEST_DATABASE_URL", "")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def git(path: Path, *args: str) -> str:
    """Run git in `path`; its standard output."""
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout


def site_repo(repo: Path, posts: dict[str, str]) -> Path:
    """A site repo at `repo` whose first commit holds `posts` (path in the repo -> text)."""
    for name, content in posts.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
    git(repo.parent, "init", "--quiet", str(repo))
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "posts")
    return repo


@contextmanager
def database_write_lock(db: Database) -> Iterator[None]:
    """Hold the lock a comment's insert needs, from another connection, until the block ends:
    a batch in the store process waits, and what arrives meanwhile makes one next batch."""
    with db.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.begin()
            conn.execute(text("LOCK TABLE comments IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A URL to an empty database of its own."""
    if not PG_URL:
        return f"sqlite:///{tmp_path / 'listbridge.sqlite3'}"
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        # A connection left open by an earlier test (a thread still winding down) must not
        # block the reset: end them, and never wait on a lock for long.
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        conn.execute(text("SET lock_timeout = '20s'"))
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return PG_URL


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return BytesParser(policy=default_policy).parsebytes(self.data)  # type: ignore[return-value]


@dataclass
class SinkHandler:
    """Records every message; `reply` can be set to make it refuse (e.g. '451 busy')."""

    received: list[Received] = field(default_factory=list)
    reply: str | None = None
    rcpt_reply: Callable[[str], str | None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.rcpt_reply is not None:
            refusal = self.rcpt_reply(address)
            if refusal:
                return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply:
            return self.reply
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK queued"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.rcpt_tos]


class Sink:
    """A real SMTP server on loopback, standing in for the relay; can be stopped and restarted."""

    def __init__(self) -> None:
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str, sink: Sink) -> Callable[..., Settings]:
    """Settings for one test: its own database, listening port, relay = the sink, site repo."""

    def make(**sections: Any) -> Settings:
        data: dict[str, Any] = {
            "database": {"url": db_url},
            "smtp": {"host": "127.0.0.1", "port": free_port()},
            "relay": {"host": "127.0.0.1", "port": sink.port, "connections": 2, "timeout": 10},
            "site": {"repo": str(tmp_path / "site")},
            "lists": [
                {"address": "bla@bla.example.org", "title": "bla", "owner": "owner@example.org", "language": "en"}
            ],
        }
        for name, value in sections.items():
            if isinstance(value, dict):
                data[name] = {**data.get(name, {}), **value}
            else:
                data[name] = value
        return build_settings(data)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    svc = Service(settings)
    svc.start()
    yield svc
    svc.stop()


def send(
    port: int,
    to: str | list[str],
    *,
    sender: str = "carole@example.net",
    name: str = "Carole",
    subject: str = "hello",
    body: str = "Hello list.\n",
    headers: dict[str, str] | None = None,
    envelope_from: str | None = None,
) -> dict[str, tuple[int, bytes]]:
    """Send one message over real SMTP; returns smtplib's refused-recipients dict."""
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>" if name else sender
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@example.net>"
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.send_message(msg, from_addr=sender if envelope_from is None else envelope_from, to_addrs=to)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until predicate() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")
