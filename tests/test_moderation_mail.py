"""Moderation by mail, over real SMTP to a real `serve`, with a real git site repo and the sink
as relay: a held comment brings its moderators a notice; a moderator's reply approves
(published, committed, broadcast) or rejects it; strangers, spent tokens and automatic
replies do nothing."""

from __future__ import annotations

import datetime as dt
import doctest
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from listbridge.cli import cli
from listbridge.config import Settings
from listbridge.db import Database
from listbridge.lists import comments, moderation
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import APPROVED, HELD, REJECTED, Comment, ModerationMail, ModerationToken, OutboxMessage
from listbridge.service import Service

from helpers import PG_URL, Received, Sink, db_count, git, send, site_repo, wait_for

LIST = "bla@bla.example.org"
OWNER = "owner@example.org"
MODERATOR = "ann@example.org"
READER = "reader@example.net"
PAGE = "log/commentaires/un-billet.gmi"


@pytest.fixture
def running(make_settings, tmp_path: Path) -> Iterator[tuple[Settings, Service]]:
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    settings = make_settings(
        site={"repo": str(site), "base_url": "gemini://bla.example.org"},
        lists=[
            {
                "address": LIST,
                "title": "bla",
                "owner": OWNER,
                "moderators": [MODERATOR],
                "language": "en",
                "moderation": "all",
            }
        ],
    )
    svc = Service(settings)
    svc.start()
    with svc.db.transaction() as session:
        subscribe(session, ListContext(settings, settings.lists[0]), READER, name="Reader")
    yield settings, svc
    svc.stop()


def notices(sink: Sink, to: str) -> list[Received]:
    return [r for r in sink.handler.to(to) if "held" in r.message["Subject"]]


def held_comment(settings: Settings, sink: Sink, body: str = "Great post, thanks.\n") -> tuple[str, str]:
    """Send a comment, wait for both notices; the notice's approve and reject addresses."""
    before = len(notices(sink, MODERATOR))
    send(settings.smtp.port, LIST, subject="Re: Un billet", body=body + "\n-- \nCarole, Lyon\n")
    wait_for(lambda: len(notices(sink, MODERATOR)) > before and len(notices(sink, OWNER)) > before)
    message = notices(sink, MODERATOR)[-1].message
    text = message.get_content()
    approve = re.search(r"bla\+approve-[a-z2-7]+@bla\.example\.org", text)
    reject = re.search(r"bla\+reject-[a-z2-7]+@bla\.example\.org", text)
    assert approve and reject, text
    assert message["Reply-To"] == approve.group(0)
    return approve.group(0), reject.group(0)


def comment(db: Database) -> Comment:
    with db.transaction() as session:
        found = session.scalars(select(Comment).order_by(Comment.id.desc())).first()
        assert found is not None
        return found


def token(db: Database) -> ModerationToken:
    with db.transaction() as session:
        found = session.scalars(select(ModerationToken).order_by(ModerationToken.comment_id.desc())).first()
        assert found is not None
        return found


def committed_page(settings: Settings) -> str:
    """The post's comment page as last committed ("" before the first commit has it)."""
    try:
        return git(Path(settings.site.repo), "show", f"HEAD:{PAGE}")
    except subprocess.CalledProcessError:
        return ""


def broadcasts(sink: Sink) -> list[Received]:
    return [r for r in sink.handler.to(READER) if r.message["Subject"] == "[bla] Un billet"]


def test_held_comment_brings_a_notice_and_a_reply_publishes_it(running, sink: Sink):
    settings, svc = running
    approve, _ = held_comment(settings, sink)
    for to in (OWNER, MODERATOR):
        (notice,) = notices(sink, to)
        message = notice.message
        assert message["Auto-Submitted"] == "auto-generated"
        text = message.get_content()
        assert "every comment is moderated" in text  # the reason
        assert "Un billet" in text  # the post
        assert "Carole <carole@example.net>" in text  # the author's name and address
        assert "Great post, thanks." in text and "Lyon" not in text  # cleaned as it will be published
        # Mail about the list, not of it: "reply to list" must not post it, nor an unsubscribe
        # button unsubscribe a moderator who reads the list too.
        assert not [name for name in message if name.lower().startswith("list-")], message.items()
        assert message["X-Loop"] == LIST and message["Precedence"] is None
    assert comment(svc.db).status == HELD
    assert broadcasts(sink) == []

    send(settings.smtp.port, approve, sender=MODERATOR, name="Ann", subject="Re: held", body="ok\n")
    wait_for(lambda: "Great post, thanks." in committed_page(settings), timeout=15)
    wait_for(lambda: broadcasts(sink))
    done = comment(svc.db)
    assert (done.status, done.decided_by) == (APPROVED, MODERATOR)
    assert "Great post, thanks." in broadcasts(sink)[0].message.get_content()

    # The token is spent: a second reply does nothing, and nothing is sent back (a 250 comes
    # once the work is committed, so the outbox is final when it does).
    queued = db_count(svc.db, OutboxMessage)
    assert send(settings.smtp.port, approve, sender=MODERATOR, body="ok\n") == {}
    assert send(settings.smtp.port, approve.replace("approve-", "reject-"), sender=MODERATOR) == {}
    with svc.db.transaction() as session:
        assert session.scalar(select(Comment.status)) == APPROVED
    assert db_count(svc.db, OutboxMessage) == queued
    assert db_count(svc.db, OutboxMessage, OutboxMessage.kind == "comment") == 1


def test_a_strangers_reply_does_nothing(running, sink: Sink):
    settings, svc = running
    approve, reject = held_comment(settings, sink)
    queued = db_count(svc.db, OutboxMessage)
    for address in (approve, reject):
        assert send(settings.smtp.port, address, sender="eve@example.com", name="Eve", body="ok\n") == {}
    # An automatic reply from a moderator (a vacation notice to the Reply-To) does nothing either.
    send(settings.smtp.port, approve, sender=MODERATOR, headers={"Auto-Submitted": "auto-replied"}, body="Away.\n")
    assert comment(svc.db).status == HELD  # a 250 comes once the work is committed
    assert token(svc.db).used_at is None
    assert db_count(svc.db, OutboxMessage) == queued  # no reply to anyone
    # The token still works for a moderator: nothing was spent.
    send(settings.smtp.port, approve, sender=OWNER, body="ok\n")
    wait_for(lambda: comment(svc.db).status == APPROVED)
    assert comment(svc.db).decided_by == OWNER


def test_a_reject_by_mail_records_the_reason(running, sink: Sink):
    settings, svc = running
    _, reject = held_comment(settings, sink)
    body = "\nOff topic, sorry.\n\nOn 2 May 2026, bla <bla+owner@bla.example.org> wrote:\n> Great post\n-- \nAnn\n"
    send(settings.smtp.port, reject, sender="someone@elsewhere.org", envelope_from=MODERATOR, body=body)
    wait_for(lambda: comment(svc.db).status == REJECTED)
    done = comment(svc.db)
    assert (done.reason, done.decided_by) == ("Off topic, sorry.", MODERATOR)
    assert broadcasts(sink) == []


def test_a_cli_decision_kills_the_token(running, sink: Sink):
    settings, svc = running
    _, reject = held_comment(settings, sink)
    held = comment(svc.db)
    result = CliRunner().invoke(cli, ["--config", write_config(settings), "moderate", "approve", str(held.id)])
    assert result.exit_code == 0, result.output
    assert token(svc.db).used_at is not None
    queued = db_count(svc.db, OutboxMessage)
    assert send(settings.smtp.port, reject, sender=MODERATOR, body="No.\n") == {}
    done = comment(svc.db)
    assert (done.status, done.reason) == (APPROVED, "every comment is moderated")
    assert db_count(svc.db, OutboxMessage) == queued


def test_an_unknown_token_gets_250_and_does_nothing(running, sink: Sink):
    settings, svc = running
    held_comment(settings, sink)
    queued = db_count(svc.db, OutboxMessage)
    assert send(settings.smtp.port, "bla+approve-aaaaaaaaaaaaaaaaaaaaaaaaaa@bla.example.org", sender=MODERATOR) == {}
    assert comment(svc.db).status == HELD
    assert token(svc.db).used_at is None
    assert db_count(svc.db, OutboxMessage) == queued


def write_config(settings: Settings) -> str:
    """A listbridge.toml for the CLI with this test's database, site and list."""
    path = Path(settings.site.repo).parent / "listbridge.toml"
    path.write_text(
        f'[database]\nurl = "{settings.database.url}"\n[site]\nrepo = "{settings.site.repo}"\n'
        f"[relay]\nport = {settings.relay.port}\n"
        f'[[lists]]\naddress = "{LIST}"\nowner = "{OWNER}"\nmoderators = ["{MODERATOR}"]\n'
    )
    return str(path)


# --- the notices' rules, with time moved by the test --------------------------------------


def hold(db: Database, settings: Settings, count: int, reason: str = "first post", at: dt.datetime | None = None):
    with db.transaction() as session:
        for n in range(count):
            session.add(
                Comment(
                    list_address=LIST,
                    sender=f"c{n}@example.net",
                    subject=f"comment {n}",
                    status=HELD,
                    reason=reason,
                    post_slug="un-billet",
                    post_title="Un billet",
                    text=f"text {n}",
                    raw=b"",
                    received_at=at or dt.datetime(2026, 5, 1, 12, 0),
                    notice_due=reason != comments.AUTOMATIC,  # as comments.receive marks it
                )
            )


def sent(db: Database, kind: str) -> int:
    return db_count(db, OutboxMessage, OutboxMessage.kind == kind)


def test_past_ten_notices_an_hour_one_summary(make_settings, db: Database):
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER, "moderators": [MODERATOR]}])
    now = dt.datetime(2026, 5, 1, 12, 0)
    hold(db, settings, 13)
    with db.transaction() as session:
        assert moderation.notify_held(session, settings, now) == 10
    assert (sent(db, "held"), sent(db, "held_summary")) == (20, 2)  # owner and moderator
    hold(db, settings, 2)
    with db.transaction() as session:  # still within the hour: no notice, no second summary
        assert moderation.notify_held(session, settings, now + dt.timedelta(minutes=30)) == 0
    assert (sent(db, "held"), sent(db, "held_summary")) == (20, 2)
    hold(db, settings, 1)
    with db.transaction() as session:  # the next hour: notices again
        assert moderation.notify_held(session, settings, now + dt.timedelta(minutes=61)) == 1
    assert sent(db, "held") == 22
    # Tokens for the notices only: the reminder makes the others' (test_the_daily_reminder).
    assert db_count(db, ModerationToken) == 11


def test_a_list_with_nobody_to_tell_keeps_its_comments_waiting(make_settings, db: Database):
    """No owner yet, or a list no longer configured: its comments wait, untouched, and take
    no place in the batch of the lists that have moderators."""
    other = "autre@bla.example.org"
    settings = make_settings(lists=[{"address": LIST}, {"address": other, "owner": OWNER, "comments_dir": "x"}])
    hold(db, settings, 3)  # on LIST, which has no owner yet
    with db.transaction() as session:
        session.add(
            Comment(
                list_address=other,
                sender="d@example.net",
                subject="s",
                status=HELD,
                reason="first post",
                text="t",
                raw=b"",
                received_at=dt.datetime(2026, 5, 1),
                notice_due=True,
            )
        )
    with db.transaction() as session:
        assert moderation.notify_held(session, settings) == 1  # the other list's one comment
    assert db_count(db, ModerationToken) == 1
    owned = make_settings(
        lists=[{"address": LIST, "owner": OWNER}, {"address": other, "owner": OWNER, "comments_dir": "x"}]
    )
    with db.transaction() as session:  # LIST gets its owner: its comments get their notices now
        assert moderation.notify_held(session, owned) == 3


@pytest.mark.skipif(not PG_URL, reason="two writers at once: PostgreSQL (SQLite serialises them)")
def test_two_nodes_send_one_reminder(make_settings, db: Database):
    """Two serve processes on one database, the same day: one reminder, though the second read
    the last one's time before the first sent it."""
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER}])
    now = dt.datetime(2026, 5, 3, 12, 0)
    hold(db, settings, 1, at=now - dt.timedelta(hours=30))
    with db.transaction() as session:
        assert moderation.remind(session, settings, now) == 1
    later = now + dt.timedelta(days=1)
    with db.transaction() as second:
        assert second.get(ModerationMail, (LIST, "reminder")) is not None  # read before the first sends
        with db.transaction() as first:
            sent_by = [moderation.remind(first, settings, later)]
        sent_by.append(moderation.remind(second, settings, later))
    assert sent_by == [1, 0] and sent(db, "held_reminder") == 2


def test_automatic_messages_bring_no_notice(make_settings, db: Database):
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER}])
    hold(db, settings, 2, reason=comments.AUTOMATIC)
    with db.transaction() as session:
        assert moderation.notify_held(session, settings) == 0
    assert sent(db, "held") == 0


def test_comments_decided_before_their_notice_take_no_room(make_settings, db: Database):
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER}])
    hold(db, settings, 3)
    ctx = ListContext(settings, settings.lists[0])
    with db.transaction() as session:  # two rejected on the command line before serve's pass
        for comment in session.scalars(select(Comment).where(Comment.id <= 2)):
            comments.reject(session, ctx, comment, "cli", "spam")
    with db.transaction() as session:
        assert moderation.notify_held(session, settings, limit=2) == 1
    assert (sent(db, "held"), sent(db, "held_summary")) == (1, 0)


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL's limit of 65,535 parameters a statement")
def test_a_backlog_of_sixty_thousand_comments_is_one_pass(make_settings, db: Database):
    """Months of held comments with no owner set, then an owner: ten notices and a summary."""
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER}])
    hold(db, settings, 1)
    columns = ", ".join(c.name for c in Comment.__table__.columns if c.name != "id")
    with db.transaction() as session:
        for _ in range(16):  # 2**16 comments
            session.execute(text(f"INSERT INTO comments ({columns}) SELECT {columns} FROM comments"))
    with db.transaction() as session:
        assert moderation.notify_held(session, settings) == 10
    assert sent(db, "held_summary") == 1 and db_count(db, Comment, Comment.notice_due) == 0


def test_automatic_messages_stay_out_of_the_reminder(make_settings, db: Database):
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER}])
    now = dt.datetime(2026, 5, 3, 12, 0)
    hold(db, settings, 2, reason=comments.AUTOMATIC, at=now - dt.timedelta(hours=30))
    with db.transaction() as session:
        assert moderation.remind(session, settings, now) == 0
    assert sent(db, "held_reminder") == 0


@pytest.mark.skipif(bool(PG_URL), reason="SQLite's one write lock, which the intake waits for")
def test_the_notices_render_before_the_write_lock_is_taken(make_settings, db: Database, monkeypatch):
    """While notices render, another connection (the intake) writes without waiting."""
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER, "moderators": [MODERATOR]}])
    hold(db, settings, 3)
    writes: list[int] = []
    render = moderation.render

    def render_and_write(*args, **kwargs):
        with db.engine.connect() as other:
            other.exec_driver_sql("PRAGMA busy_timeout = 0")  # a lock held would fail this at once
            other.exec_driver_sql("UPDATE comments SET subject = subject WHERE id = 1")
            other.commit()
        writes.append(1)
        return render(*args, **kwargs)

    monkeypatch.setattr(moderation, "render", render_and_write)
    with db.transaction() as session:
        assert moderation.notify_held(session, settings) == 3
    assert len(writes) == 6 and sent(db, "held") == 6


@pytest.mark.skipif(not PG_URL, reason="two writers at once: PostgreSQL (SQLite serialises them)")
def test_two_nodes_send_one_first_reminder(make_settings, db: Database):
    """The list's first reminder: the second node's insert waits for the first's, and yields."""
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER}])
    now = dt.datetime(2026, 5, 3, 12, 0)
    hold(db, settings, 1, at=now - dt.timedelta(hours=30))
    result: list[int] = []
    with db.transaction() as first:
        result.append(moderation.remind(first, settings, now))

        def second() -> None:
            with db.transaction() as session:
                result.append(moderation.remind(session, settings, now))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting on the first's row
    thread.join(10)
    assert result == [1, 0] and sent(db, "held_reminder") == 1


def test_the_daily_reminder(make_settings, db: Database):
    settings = make_settings(lists=[{"address": LIST, "owner": OWNER, "moderators": [MODERATOR]}])
    now = dt.datetime(2026, 5, 3, 12, 0)
    with db.transaction() as session:
        assert moderation.remind(session, settings, now) == 0  # nothing held: nothing sent
    hold(db, settings, 1, at=now - dt.timedelta(hours=2))
    with db.transaction() as session:
        assert moderation.remind(session, settings, now) == 0  # held, but not for a day yet
    hold(db, settings, 2, at=now - dt.timedelta(hours=30))
    with db.transaction() as session:
        # Past the hourly limit the two old ones get no notice, hence no token: the reminder
        # makes theirs.
        assert moderation.notify_held(session, settings, now, limit=1) == 1
        assert moderation.remind(session, settings, now) == 1
    assert sent(db, "held_reminder") == 2  # owner and moderator
    with db.transaction() as session:
        body = session.scalars(select(OutboxMessage.body).where(OutboxMessage.kind == "held_reminder")).first()
    assert body is not None and b"comment 1" in body and b"comment 0" in body and b"2 comments held" in body
    assert body.count(b"+approve-") == 2 and body.count(b"+reject-") == 2
    assert db_count(db, ModerationToken) == 3
    with db.transaction() as session:  # at most once a day, restarts included (it is stored)
        assert moderation.remind(session, settings, now + dt.timedelta(hours=23)) == 0
        assert moderation.remind(session, settings, now + dt.timedelta(hours=24)) == 1
    assert sent(db, "held_reminder") == 4


def test_an_automatic_message_is_held_without_a_notice(running, sink: Sink):
    settings, svc = running
    send(settings.smtp.port, LIST, subject="Re: Un billet", headers={"Auto-Submitted": "auto-replied"}, body="Away.\n")
    held_comment(settings, sink)  # a notice for the next comment, none for the automatic one
    with svc.db.transaction() as session:
        rows = session.execute(select(Comment.reason, Comment.notice_due).order_by(Comment.id)).all()
    assert [tuple(row) for row in rows] == [(comments.AUTOMATIC, False), ("every comment is moderated", False)]
    assert len(notices(sink, OWNER)) == 1


def test_the_reason_is_the_first_line_of_the_reply():
    assert moderation.reason_from("") == ""
    assert moderation.reason_from("> quoted\n\n  Spam, plainly.  \nmore\n") == "Spam, plainly."
    assert moderation.reason_from("x" * 900) == "x" * moderation.REASON_CHARS


def test_doctests_of_the_module_pass():
    result = doctest.testmod(moderation)
    assert result.attempted and not result.failed
