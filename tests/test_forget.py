"""`forget ADDRESS`: nothing of the person stays on the site's pages nor in the outbox, and a
comment the moderator refused never turns into a visible removal note. Real SMTP in, the
real CLI (subscribers, moderate, queue flush, forget), a real git site repo, the relay sink."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from listbridge.cli import cli
from listbridge.config import load_settings
from listbridge.db import Database
from listbridge.models import APPROVED, REMOVED, Comment, OutboxMessage, OutboxRecipient
from listbridge.service import Service

from helpers import PG_URL, free_port, git, send, site_repo, wait_for

LIST = "bla@bla.example.org"
SLUG = "un-billet"
CAROLE = "carole@example.net"
APPROVED_TEXT = "Mon avis approuvé, signé Carole."
REJECTED_TEXT = "Un avis refusé par la modération."
REMOVAL_NOTE = "retiré à la demande de son auteur"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return site_repo(tmp_path / "site", {f"log/{SLUG}.gmi": "# Un billet\n"})


@pytest.fixture
def config(tmp_path: Path, site: Path, db_url: str, sink) -> Path:
    path = tmp_path / "listbridge.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n[smtp]\nport = {free_port()}\n[relay]\nport = {sink.port}\n'
        f'[site]\nrepo = "{site}"\n'
        f'[[lists]]\naddress = "{LIST}"\ntitle = "bla"\nlanguage = "fr"\nmoderation = "all"\n'
        f'owner = "owner@example.org"\n',
        encoding="utf-8",
    )
    return path


def cli_run(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def traces(db: Database) -> list[str]:
    """Every outbox value that names Carole or carries her texts."""
    needles = [CAROLE.encode(), b"Carole", APPROVED_TEXT[:12].encode(), REJECTED_TEXT[:12].encode()]
    found = []
    with db.transaction() as session:
        for m in session.scalars(select(OutboxMessage)):
            decoded = m.body.replace(b"=\r\n", b"")  # quoted-printable soft breaks
            found += [f"message {m.id} ({m.kind}): {n!r}" for n in needles if n.lower() in decoded.lower()]
        for r in session.scalars(select(OutboxRecipient)):
            if "carole" in f"{r.address} {r.last_error}".lower():
                found.append(f"recipient {r.id} of message {r.message_id}")
    return found


def test_forget_leaves_no_trace_of_an_approved_and_a_rejected_comment(config, site, sink):
    settings = load_settings(config)
    db = Database(settings.database.url)
    cli_run(config, "subscribers", "add", f"Carole <{CAROLE}>", "dan@example.org")
    svc = Service(settings)
    svc.start()
    try:
        send(settings.smtp.port, LIST, subject=SLUG, body=APPROVED_TEXT + "\n")
        send(settings.smtp.port, LIST, subject=SLUG, body=REJECTED_TEXT + "\n")
        send(settings.smtp.port, "bla+owner@bla.example.org", subject="une question", body="Bonjour.\n")
        send(settings.smtp.port, "bla+help@bla.example.org", subject="aide", body="?\n")
        wait_for(lambda: len(db_comments(db)) == 2)
    finally:
        svc.stop()
    approved, rejected = (c.id for c in db_comments(db))
    cli_run(config, "moderate", "approve", str(approved))
    cli_run(config, "moderate", "reject", str(rejected), "--reason", "hors sujet", "--notify")
    cli_run(config, "queue", "flush")
    assert sink.handler.to(CAROLE) and sink.handler.to("dan@example.org") and sink.handler.to("owner@example.org")
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    assert APPROVED_TEXT in page.read_text()
    assert traces(db), "the test must start with Carole in the outbox"

    out = cli_run(config, "forget", CAROLE.upper())
    assert "1 subscription(s), 0 held, 1 rejected and 1 published comment(s)" in out

    # The pages: the approved comment is a note, the rejected one is nowhere, not even as a note.
    for path in git(site, "ls-files", "log/commentaires").split():
        text = (site / path).read_text()
        assert APPROVED_TEXT not in text and REJECTED_TEXT not in text and "Carole" not in text, path
        assert "carole" not in git(site, "show", f"HEAD:{path}").lower(), path
    assert page.read_text().count(REMOVAL_NOTE) == 1
    assert git(site, "status", "--porcelain") == ""
    assert "carole" not in git(site, "log", "--format=%an %ae %s %b").lower()  # no name in any commit
    if settings.database.url.startswith("sqlite:///"):  # nor in the file's free pages or its log
        files = Path(settings.database.url.removeprefix("sqlite:///")).parent.glob("*.sqlite3*")
        raw = b"".join(f.read_bytes() for f in files)
        assert APPROVED_TEXT.encode() not in raw and REJECTED_TEXT.encode() not in raw
    # The database: one removal note, erased and published; nothing of the rejected comment.
    (note,) = db_comments(db)
    assert (note.id, note.status, note.text, note.sender, note.raw, note.published) == (
        approved,
        REMOVED,
        "",
        "",
        b"",
        True,
    )
    # The outbox: no row addressed to her, no body naming her or carrying her texts.
    assert traces(db) == []
    with db.transaction() as session:
        kinds = sorted(m.kind for m in session.scalars(select(OutboxMessage)))
        threaded = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "comment")).one()
        assert (threaded.post_slug, threaded.header_message_id != "") == (SLUG, True)  # replies still thread
    assert kinds == ["comment"]  # her help reply, rejection notice and owner mail are gone
    db.dispose()


def test_forget_drops_held_comments_and_their_queued_broadcasts(config, site):
    """A held comment goes without a trace; a broadcast of hers not yet delivered is not sent."""
    settings = load_settings(config)
    db = Database(settings.database.url)
    cli_run(config, "subscribers", "add", "dan@example.org")
    svc = Service(settings)
    svc.start()
    try:
        send(settings.smtp.port, LIST, subject=SLUG, body=APPROVED_TEXT + "\n")
        send(settings.smtp.port, LIST, subject=SLUG, body="Encore en attente.\n")
        wait_for(lambda: len(db_comments(db)) == 2)
    finally:
        svc.stop()
    cli_run(config, "moderate", "approve", str(db_comments(db)[0].id))  # queued for dan, not flushed
    out = cli_run(config, "forget", CAROLE, "--delete")
    assert "0 subscription(s), 1 held, 0 rejected and 1 published comment(s)" in out
    assert db_comments(db) == [] and traces(db) == []
    with db.transaction() as session:
        assert session.scalars(select(OutboxRecipient)).all() == []  # dan will not get her comment
    assert REMOVAL_NOTE not in (site / "log" / "commentaires" / "index.gmi").read_text()
    assert not (site / "log" / "commentaires" / f"{SLUG}.gmi").exists()
    db.dispose()


def db_comments(db: Database) -> list[Comment]:
    with db.transaction() as session:
        return list(session.scalars(select(Comment).order_by(Comment.id)))


def test_forget_while_git_fails_says_so_and_the_note_is_committed_later(config, site):
    from listbridge.archive import publish
    from listbridge.models import APPROVED

    settings = load_settings(config)
    db = Database(settings.database.url)
    db.upgrade()
    with db.transaction() as session:
        session.add(
            Comment(
                list_address=LIST,
                sender=CAROLE,
                display_name="Carole",
                subject=SLUG,
                status=APPROVED,
                post_slug=SLUG,
                post_title="Un billet",
                text=APPROVED_TEXT,
                published=False,
                raw=b"x",
            )
        )
    assert publish.publish_pending(db, settings)
    (site / ".git" / "index.lock").write_text("")
    result = CliRunner().invoke(cli, ["--config", str(config), "forget", CAROLE])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
    assert "index.lock" in result.output and "archive rebuild" in result.output
    assert APPROVED_TEXT in git(site, "show", f"HEAD:log/commentaires/{SLUG}.gmi")  # not committed yet
    assert [c.published for c in db_comments(db)] == [False]
    (site / ".git" / "index.lock").unlink()
    assert publish.publish_pending(db, settings)  # what serve does on its next attempt
    assert APPROVED_TEXT not in git(site, "show", f"HEAD:log/commentaires/{SLUG}.gmi")
    assert [c.published for c in db_comments(db)] == [True]
    db.dispose()


@pytest.mark.skipif(not PG_URL, reason="row locks: PostgreSQL (SQLite's forget holds the write lock before it reads)")
def test_forget_waits_for_an_approval_in_flight_and_sees_it(config, site):
    """An approval not yet committed when forget reads her comments: forget must see it as
    approved (a removal note, its broadcast emptied), not delete it as the held one it was."""
    settings = load_settings(config)
    db = Database(settings.database.url)
    svc = Service(settings)
    svc.start()
    try:
        send(settings.smtp.port, LIST, subject=SLUG, body=APPROVED_TEXT + "\n")
        wait_for(lambda: len(db_comments(db)) == 1)
    finally:
        svc.stop()
    (held,) = db_comments(db)
    with db.engine.connect() as approving:  # an approval under way, its row lock held
        approving.execute(update(Comment).where(Comment.id == held.id).values(status=APPROVED))
        result: dict[str, str] = {}
        forgetting = threading.Thread(target=lambda: result.update(out=cli_run(config, "forget", CAROLE)))
        forgetting.start()
        time.sleep(1.0)  # forget now waits on the row (or, without a lock, has read it as held)
        approving.commit()
    forgetting.join(30)
    assert "0 held, 0 rejected and 1 published comment(s)" in result["out"], result
    (note,) = db_comments(db)
    assert note.status == REMOVED and note.text == ""
    db.dispose()
