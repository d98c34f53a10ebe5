"""Shared fixtures: a fresh database (SQLite, or PostgreSQL when LISTBRIDGE_TEST_DATABASE_URL is
set), a real aiosmtpd sink standing in for the relay, and a real `serve` on a loopback port."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from listbridge.config import Settings, build_settings
from listbridge.db import Database
from listbridge.service import Service

from helpers import PG_URL, Sink, free_port, home_database


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


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Database]:
    """The home instance's database with its subscribers (helpers.READERS)."""
    yield from home_database(tmp_path)
