"""Bad input at the real CLI (a subprocess given raw bytes in argv): an id too large for the
database, and text that is not UTF-8, are one sentence on stderr and a non-zero exit, and
change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listbridge.db import Database
from listbridge.models import HELD, Comment, Subscriber, utcnow

LIST = "bla@bla.example.org"
HUGE = b"99999999999999999999999"


@pytest.fixture
def config(tmp_path: Path, db: Database) -> Path:
    path = tmp_path / "lb.toml"
    path.write_text(
        f'[database]\nurl = "{db.url}"\n[site]\nrepo = "{tmp_path / "site"}"\n'
        f'[[lists]]\naddress = "{LIST}"\ntitle = "bla"\nlanguage = "en"\n'
    )
    return path


@pytest.fixture
def held(db: Database) -> int:
    with db.transaction() as session:
        comment = Comment(
            list_address=LIST,
            sender="carole@example.net",
            subject="s",
            received_at=utcnow(),
            status=HELD,
            reason="every comment is moderated",
            post_slug="un-billet",
            text="t",
            raw=b"",
        )
        session.add(comment)
        session.flush()
        return comment.id


def listbridge(config: Path, *args: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"listbridge", b"--config", bytes(config), *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        [b"moderate", b"approve", HUGE],
        [b"moderate", b"show", HUGE],
        [b"moderate", b"reject", HUGE],
        [b"moderate", b"reject", b"ID", b"--reason", b"hors sujet \xe9t\xe9"],  # Latin-1, not UTF-8
        [b"moderate", b"approve", b"ID", b"--post", b"billet-\xff"],
        [b"subscribers", b"add", b"caf\xe9@example.org"],
        [b"subscribers", b"remove", b"\xff@example.org"],
        [b"forget", b"caf\xe9@example.org"],
    ],
    ids=["approve-huge", "show-huge", "reject-huge", "reject-reason", "approve-post", "add", "remove", "forget"],
)
def test_bad_input_is_one_sentence_and_changes_nothing(
    config: Path, db: Database, held: int, args: list[bytes]
) -> None:
    args = [str(held).encode() if a == b"ID" else a for a in args]
    result = listbridge(config, *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "rejected:" not in result.stdout and "approved:" not in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and line.endswith("."), line
    assert "no comment with id 99999999999999999999999" in line or "is not UTF-8 text: " in line, line
    with db.transaction() as session:
        assert session.scalar(select(Comment.status).where(Comment.id == held)) == HELD
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_a_path_may_be_any_bytes(config: Path, tmp_path: Path) -> None:
    """File names are bytes on POSIX: they are not held to UTF-8."""
    odd = tmp_path / os.fsdecode(b"roster-\xff.sqlite3")
    result = listbridge(config, b"roster", b"export", os.fsencode(odd))
    assert result.returncode == 0, result.stderr
    assert odd.exists()
