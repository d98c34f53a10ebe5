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
