"""`listbridge deliver` as an MTA pipe runs it: a real subprocess, the message on stdin, and
sysexits codes (0 stored, 65 bad message, 67 unknown address, 75 try again later)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from listbridge.models import Comment, Confirmation, OutboxRecipient

from helpers import db_count, free_port

LIST = "bla@bla.example.org"


def write_config(path: Path, url: str, **smtp: object) -> Path:
    smtp_lines = "".join(f"{k} = {v!r}\n" for k, v in smtp.items())
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[smtp]\n{smtp_lines}\n[site]\nrepo = "{path.parent / "site"}"\n\n'
        f'[[lists]]\naddress = "{LIST}"\nowner = "owner@example.org"\n',
        encoding="utf-8",
    )
    return path


def deliver(
    config: Path, message: bytes, *recipients: str, sender: str = "carole@example.net", cwd: Path | None = None
):
    args = [sys.executable, "-m", "listbridge", "--config", str(config), "deliver", "-f", sender]
    for rcpt in recipients:
        args += ["-r", rcpt]
    return subprocess.run(args, input=message, capture_output=True, timeout=60, cwd=cwd)


def message(subject: str = "hello", sender: str = "carole@example.net") -> tuple[str, bytes]:
    mid = f"<{time.time_ns()}.deliver@example.net>"
    return mid, f"From: Carole <{sender}>\nTo: {LIST}\nSubject: {subject}\nMessage-ID: {mid}\n\nA comment.\n".encode()


def assert_one_clean_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert "Traceback" not in stderr.decode()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def config(tmp_path: Path, db) -> Path:
    return write_config(tmp_path / "listbridge.toml", db.url)


def test_post_is_stored_and_exits_0(config, db, tmp_path):
    mid, raw = message("Comment-sur-un-billet")
    result = deliver(config, raw, LIST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with db.transaction() as session:
        held = session.scalars(select(Comment).where(Comment.message_id == mid)).one()
        assert (held.sender, held.subject, held.raw) == ("carole@example.net", "Comment-sur-un-billet", raw)


def test_subscribe_request_is_acted_on(config, db):
    _, raw = message("subscribe")
    result = deliver(config, raw, "bla+subscribe@bla.example.org")
    assert result.returncode == 0, result.stderr
    assert db_count(db, Confirmation, Confirmation.address == "carole@example.net") == 1
    assert db_count(db, OutboxRecipient, OutboxRecipient.address == "carole@example.net") == 1


@pytest.mark.parametrize("rcpt", ["other@elsewhere.example", "nolist@bla.example.org", "bla+nope@bla.example.org"])
def test_unknown_recipient_exits_67(config, db, rcpt):
    _, raw = message()
    result = deliver(config, raw, LIST, rcpt)
    assert result.returncode == 67, result.stderr
    assert rcpt in assert_one_clean_line(result.stderr)
    assert db_count(db, Comment) == 0  # nothing kept for the known one either: the MTA bounces it whole


def test_unparseable_message_exits_65(config, db):
    result = deliver(config, b"no header at all, only text\n", LIST)
    assert result.returncode == 65, result.stderr
    assert "554" in result.stderr.decode()
    assert db_count(db, Comment) == 0


def test_message_over_the_size_limit_exits_65(tmp_path, db):
    config = write_config(tmp_path / "small.toml", db.url, max_message_size=1000)
    _, raw = message()
    result = deliver(config, raw + b"x" * 2000 + b"\n", LIST)
    assert result.returncode == 65
    assert "552" in assert_one_clean_line(result.stderr)


def test_expired_or_unknown_confirmation_is_a_permanent_failure(config, db):
    _, raw = message("Re: confirm")
    result = deliver(config, raw, "bla+confirm-aaaaaaaaaaaaaaaaaaaaaaaaaa@bla.example.org")
    assert result.returncode in (65, 67)
    assert "550" in result.stderr.decode()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-listbridge-dir/sub/listbridge.sqlite3",
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/lb",
    ],
    ids=["sqlite-missing-dir", "postgresql-closed-port"],
)
def test_database_unavailable_exits_75_with_one_line(tmp_path, url):
    config = write_config(tmp_path / "down.toml", url)
    _, raw = message()
    result = deliver(config, raw, LIST)
    assert result.returncode == 75, result.stderr
    line = assert_one_clean_line(result.stderr)
    assert line.startswith("listbridge deliver: 451"), line


def test_database_error_while_storing_exits_75(config, db):
    with db.engine.begin() as conn:
        # CASCADE on PostgreSQL: moderation_tokens refers to it.
        conn.execute(text("DROP TABLE comments" + (" CASCADE" if conn.dialect.name == "postgresql" else "")))
    _, raw = message()
    result = deliver(config, raw, "bla+subscribe@bla.example.org", LIST)
    assert result.returncode == 75, result.stderr
    assert "Traceback" not in result.stderr.decode()
    assert db_count(db, Confirmation) == 0  # the +subscribe part was rolled back with the rest


def test_missing_configuration_exits_75(tmp_path):
    _, raw = message()
    result = deliver(tmp_path / "no-such.toml", raw, LIST)
    assert result.returncode == 75  # the admin fixes the file; the MTA keeps the mail meanwhile
    assert "no-such.toml" in assert_one_clean_line(result.stderr)


def test_a_stray_unsubscribe_exits_0_with_one_reply_queued(config, db):
    _, raw = message("unsubscribe", sender="zoe@example.net")
    result = deliver(config, raw, "bla+unsubscribe@bla.example.org", sender="zoe@example.net")
    assert result.returncode == 0, result.stderr  # not 75: the MTA would retry for days
    assert db_count(db, OutboxRecipient, OutboxRecipient.address == "zoe@example.net") == 1
