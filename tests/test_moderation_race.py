"""Moderators acting at once on the same held comment: real `listbridge` processes, each with
its own database connection, released together; exactly one decision wins and one broadcast
is queued, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listbridge.db import Database
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import APPROVED, HELD, REJECTED, Comment, ModerationEvent, OutboxMessage, utcnow

from helpers import site_repo

LIST = "bla@bla.example.org"
SLUG = "un-billet"
ROUNDS = 4  # rounds of racing processes; each round races on a comment of its own
RACERS = 6

# Each child imports the CLI, then waits for the go byte on stdin: the race starts once every
# process is ready, not staggered by interpreter start-up.
GATED_MAIN = "import sys, listbridge.cli as c; sys.stdin.buffer.read(1); sys.argv[0] = 'listbridge'; c.main()"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return site_repo(tmp_path / "site", {f"log/{SLUG}.gmi": "# Un billet\n"})


@pytest.fixture
def config(tmp_path: Path, db: Database, site: Path, sink) -> Path:
    path = tmp_path / "lb.toml"
    path.write_text(
        f'[database]\nurl = "{db.url}"\n[relay]\nport = {sink.port}\n[site]\nrepo = "{site}"\n'
        f'[[lists]]\naddress = "{LIST}"\ntitle = "bla"\nlanguage = "en"\nmoderation = "all"\n'
    )
    return path


def hold(db: Database, config: Path) -> int:
    """A held comment on the post, with one subscriber to broadcast it to; its id."""
    from listbridge.config import load_settings

    settings = load_settings(str(config))
    with db.transaction() as session:
        subscribe(session, ListContext(settings, settings.lists[0]), "ann@example.org")
        comment = Comment(
            list_address=LIST,
            sender="carole@example.net",
            display_name="Carole",
            subject=SLUG,
            received_at=utcnow(),
            status=HELD,
            reason="every comment is moderated",
            post_slug=SLUG,
            post_title="Un billet",
            text="Bravo.",
            raw=b"",
        )
        session.add(comment)
        session.flush()
        return comment.id


def race(config: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start one process per command, release them at once, and collect them."""
    env = {**os.environ, "USER": "moderator"}
    gate, go = os.pipe()  # each child reads one byte of it before it starts
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATED_MAIN, "--config", str(config), *command],
            env=env,
            stdin=gate,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    os.close(gate)
    os.write(go, b"g" * len(procs))
    os.close(go)
    done = []
    for p, command in zip(procs, commands, strict=True):
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(command, p.returncode, out, err))
    return done


def decisions(db: Database, comment_id: int) -> tuple[str | None, list[str], int | None]:
    """The comment's status, its logged decisions, and how many broadcasts are queued."""
    with db.transaction() as session:
        status = session.scalar(select(Comment.status).where(Comment.id == comment_id))
        events = list(session.scalars(select(ModerationEvent.action).where(ModerationEvent.comment_id == comment_id)))
        broadcasts = session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.kind == "comment")
        )
    return status, events, broadcasts


def test_concurrent_approvals_broadcast_once(db: Database, config: Path) -> None:
    for round_ in range(ROUNDS):
        comment_id = hold(db, config)
        results = race(config, [["moderate", "approve", str(comment_id)]] * RACERS)
        for r in results:
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert decisions(db, comment_id) == (APPROVED, [APPROVED], round_ + 1)
        winners = [r for r in results if f"approved: {comment_id}" in r.stdout.splitlines()]
        losers = [r for r in results if f"comment {comment_id} was already approved by moderator" in r.stdout]
        assert (len(winners), len(losers)) == (1, RACERS - 1), [r.stdout for r in results]


def test_approve_racing_reject_has_one_winner(db: Database, config: Path) -> None:
    approved = 0
    for _ in range(ROUNDS):
        comment_id = hold(db, config)
        half = RACERS // 2
        results = race(
            config,
            [["moderate", "approve", str(comment_id)]] * half
            + [["moderate", "reject", str(comment_id), "--reason", "no"]] * half,
        )
        for r in results:
            assert "Traceback" not in r.stderr, r.stderr
        status, events, broadcasts = decisions(db, comment_id)
        approved += status == APPROVED
        assert status in (APPROVED, REJECTED) and events == [status] and broadcasts == approved
        approvers, rejecters = results[:half], results[half:]
        winners, losers = (approvers, rejecters) if status == APPROVED else (rejecters, approvers)
        assert [r.returncode for r in winners] == [0] * half  # one decided, the others found it done
        for r in losers:
            assert r.returncode == 1, r
            (line,) = r.stderr.splitlines()
            assert line.startswith(f"Error: comment {comment_id} is no longer held: {status} by moderator at "), line


def test_a_published_comment_is_rejected_only_with_unpublish(db: Database, config: Path, site: Path) -> None:
    from click.testing import CliRunner

    from listbridge.cli import cli

    comment_id = hold(db, config)
    run = lambda *args: CliRunner().invoke(cli, ["--config", str(config), "moderate", *args])  # noqa: E731
    assert run("approve", str(comment_id)).exit_code == 0
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    assert "Bravo." in page.read_text()
    refused = run("reject", str(comment_id))
    assert refused.exit_code == 1 and "--unpublish" in refused.output and "no longer held: approved" in refused.output
    assert decisions(db, comment_id)[0] == APPROVED
    again = run("approve", str(comment_id))
    assert again.exit_code == 0 and f"comment {comment_id} was already approved" in again.output
    assert "approved: " not in again.output
    taken_down = run("reject", str(comment_id), "--unpublish")
    assert taken_down.exit_code == 0 and f"rejected: {comment_id}" in taken_down.output
    assert not page.exists()  # its only comment is gone
    assert decisions(db, comment_id) == (REJECTED, [APPROVED, REJECTED], 1)
    # A rejected comment is not approved back by mistake.
    late = run("approve", str(comment_id))
    assert late.exit_code == 1 and "no longer held: rejected" in late.output
