"""Helpers shared by the tests: real SMTP clients and servers on loopback, git, polling, and
the outage drills' home database and watcher settings. Fixtures are in conftest.py."""

from __future__ import annotations

import os
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

from aiosmtpd.controller import Controller
from sqlalchemy import func, select, text

from listbridge.config import build_settings
from listbridge.db import Database
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import OutboxRecipient
from listbridge.service import Service

PG_URL = os.environ.get("LISTBRIDGE_TEST_DATABASE_URL", "")


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


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return BytesParser(policy=default_policy).parsebytes(self.data)


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


# --- SMTP transactions against a running serve ----------------------------------------------


@contextmanager
def running(settings) -> Iterator[Service]:
    svc = Service(settings)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def raw_message(
    to: str = "bla@bla.example.org",
    sender: str = "carole@example.net",
    subject: str = "hello",
    extra: str = "",
    body: str = "Hello.\r\n",
) -> bytes:
    mid = f"<{time.time_ns()}@example.net>"
    return (
        f"From: Carole <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra}\r\n{body}"
    ).encode()


def transaction(
    port: int, rcpts: list[str], data: bytes, sender: str = "carole@example.net"
) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """One raw SMTP transaction: the RCPT replies, and the DATA reply (None when no RCPT passed)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.mail(sender)[0] == 250
        replies = [(c, m.decode()) for c, m in (client.rcpt(r) for r in rcpts)]
        if not any(c == 250 for c, _ in replies):
            return replies, None
        code, msg = client.data(data)
        return replies, (code, msg.decode())


def data_transaction(
    port: int, rcpts: list[str], data: bytes, sender: str = "carole@example.net"
) -> tuple[list[tuple[int, str]], tuple[int, str]]:
    """transaction() where a RCPT passes, so that DATA is sent: the RCPT and DATA replies."""
    replies, reply = transaction(port, rcpts, data, sender)
    assert reply is not None, replies
    return replies, reply


def outbox_to(db, address: str) -> int:
    return db_count(db, OutboxRecipient, OutboxRecipient.address == address)


def ensure_live(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.noop()[0] == 250


# --- raw mail for the parser's tests ---------------------------------------------------------

HEAD = b"From: Carole <carole@example.net>\r\nTo: bla@bla.example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"


def mail(headers: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return headers + b"\r\n" + body


def part(content_type: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"Content-Type: " + content_type + b"\r\n" + extra + b"\r\n" + body + b"\r\n"


def multipart(subtype: bytes, *parts: bytes, close: bool = True) -> bytes:
    body = b"This is a multi-part message in MIME format.\r\n"
    for p in parts:
        body += b"--BOUNDARY\r\n" + p
    if close:
        body += b"--BOUNDARY--\r\n"
    return mail(HEAD + b"Content-Type: multipart/" + subtype + b'; boundary="BOUNDARY"\r\n', body)


# --- the outage drills: home's database, the watcher's settings ---------------------------

LIST = "bla@bla.example.org"
READERS = [f"reader{i}@example{i % 3}.org" for i in range(12)]


def home_database(tmp_path: Path) -> Iterator[Database]:
    """The home instance's database (SQLite), with READERS subscribed to LIST in French."""
    db = Database(f"sqlite:///{tmp_path / 'home.sqlite3'}")
    db.upgrade()
    settings = build_settings({"lists": [{"address": LIST, "language": "fr"}]})
    with db.transaction() as session:
        for i, address in enumerate(READERS):
            subscribe(session, ListContext(settings, settings.lists[0]), address, name=f"Lecteur {i}")
    yield db
    db.dispose()


def watcher_config(tmp_path: Path, db_url: str, relay_port: int, mx: str):
    """A watcher's settings: its own database, relay = the sink, a fresh git site, the MX at
    `mx`, probing every second (3 failures down, 2 successes up)."""
    site = tmp_path / "site"
    subprocess.run(["git", "init", "--quiet", str(site)], check=True)
    return build_settings(
        {
            "database": {"url": db_url},
            "relay": {"host": "127.0.0.1", "port": relay_port, "connections": 2, "timeout": 5},
            "site": {"repo": str(site), "base_url": "gemini://bla.example.org"},
            "lists": [{"address": LIST, "title": "bla", "language": "fr", "owner": "owner@example.org"}],
            "watch": {
                "mx": mx,
                "interval": 1,
                "failures": 3,
                "recoveries": 2,
                "timeout": 1,
                "roster": str(tmp_path / "roster.sqlite3"),
            },
        }
    )


def export_roster(home: Database, path: str) -> None:
    from listbridge.outage import roster

    with home.transaction() as session:
        roster.export(session, path)


def db_count(db: Database, model, *where) -> int:
    with db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0
