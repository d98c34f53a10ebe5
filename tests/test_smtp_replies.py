"""Replies over real SMTP, against a real in-process `serve`: none to automatic mail, a cap
per address, confirmations that expire, help in the list's language, +owner forwarded with
X-Loop, held posts, and one action per recipient however often it is given."""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from listbridge.cli import cli
from listbridge.models import Comment, Confirmation, OutboxRecipient, Subscriber

from helpers import data_transaction, db_count, outbox_to, raw_message, running, send, wait_for

LIST = "bla@bla.example.org"
SUBSCRIBE = "bla+subscribe@bla.example.org"
HELP = "bla+help@bla.example.org"
OWNER = "bla+owner@bla.example.org"


# --- no automatic reply to automatic mail -------------------------------------------------------

AUTOMATED = [
    ("auto1@example.net", "auto1@example.net", {"Auto-Submitted": "auto-replied"}),
    ("auto2@example.net", "auto2@example.net", {"Auto-Submitted": "auto-generated; x=1"}),
    ("bulk@example.net", "bulk@example.net", {"Precedence": "bulk"}),
    ("junk@example.net", "junk@example.net", {"Precedence": "junk"}),
    ("loop@example.net", "loop@example.net", {"X-Loop": LIST}),
    ("null@example.net", "", {}),
]


@pytest.mark.parametrize("to", [SUBSCRIBE, HELP])
def test_no_reply_to_automatic_mail(service, sink, to):
    port = service.settings.smtp.port
    for sender, envelope, headers in AUTOMATED:
        assert send(port, to, sender=sender, envelope_from=envelope, headers=headers) == {}
    send(port, to, sender="human@example.net", headers={"Auto-Submitted": "no"})
    wait_for(lambda: sink.handler.to("human@example.net"))
    time.sleep(0.5)
    for sender, _, _ in AUTOMATED:
        assert sink.handler.to(sender) == [], sender
        assert outbox_to(service.db, sender) == 0, sender
    assert db_count(service.db, Confirmation, Confirmation.address != "human@example.net") == 0


def test_request_replies_are_limited_per_address(service, sink):
    port = service.settings.smtp.port
    limit = service.settings.subscriptions.confirm_limit
    assert limit == 3
    for to in [SUBSCRIBE, HELP, SUBSCRIBE, HELP, SUBSCRIBE]:
        assert send(port, to) == {}  # accepted, answered or not
    send(port, SUBSCRIBE, sender="other@example.net")
    wait_for(lambda: sink.handler.to("other@example.net"))
    wait_for(lambda: len(sink.handler.to("carole@example.net")) >= limit)
    time.sleep(0.5)
    assert len(sink.handler.to("carole@example.net")) == limit
    assert outbox_to(service.db, "carole@example.net") == limit


# --- confirmations, help, owner, held posts -------------------------------------------------------


def test_expired_confirmation_is_refused(service, sink):
    port = service.settings.smtp.port
    send(port, SUBSCRIBE)
    with service.db.transaction() as session:
        token = session.scalars(select(Confirmation.token)).one()
        session.execute(update(Confirmation).values(expires_at=dt.datetime(2000, 1, 1)))
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(port, f"bla+confirm-{token}@bla.example.org")
    assert info.value.smtp_code == 550
    assert db_count(service.db, Subscriber) == 0


def test_help_is_in_the_list_language(make_settings, sink):
    lists = [{"address": LIST, "title": "bla", "owner": "owner@example.org", "language": "fr"}]
    with running(make_settings(lists=lists)) as svc:
        send(svc.settings.smtp.port, HELP)
        reply = wait_for(lambda: sink.handler.to("carole@example.net"))[0].message
    assert reply["Subject"] == "Aide de la liste bla"
    body = reply.get_content()
    assert "s'abonner" in body and SUBSCRIBE in body
    assert reply["Auto-Submitted"] == "auto-replied"


def test_owner_mail_is_forwarded_with_x_loop(service, sink):
    port = service.settings.smtp.port
    send(port, OWNER, subject="a question for the owner")
    got = wait_for(lambda: sink.handler.to("owner@example.org"))[0]
    assert got.message["Subject"] == "a question for the owner"
    assert got.message.get_all("X-Loop") == [LIST]
    assert got.mail_from in ("", "<>")  # null sender: a bounce of the forward cannot come back here

    send(port, OWNER, subject="looping", headers={"X-Loop": LIST})
    send(port, OWNER, subject="after the loop")
    wait_for(lambda: len(sink.handler.to("owner@example.org")) >= 2)
    time.sleep(0.3)
    assert [r.message["Subject"] for r in sink.handler.to("owner@example.org")] == [
        "a question for the owner",
        "after the loop",
    ]


def test_post_is_held_and_listed_for_moderation(service, sink, tmp_path: Path):
    send(service.settings.smtp.port, LIST, sender="dave@example.net", name="Dave Été", subject="Comment-sur-le-billet")
    config = tmp_path / "moderate.toml"
    config.write_text(
        f'[database]\nurl = "{service.settings.database.url}"\n\n[site]\nrepo = "{tmp_path / "site"}"\n\n'
        f'[[lists]]\naddress = "{LIST}"\nowner = "owner@example.org"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "moderate", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert {"id", "sender", "name", "subject", "received", "message_id"} <= row.keys()
    assert (row["sender"], row["name"], row["subject"]) == ("dave@example.net", "Dave Été", "Comment-sur-le-billet")
    assert row["message_id"].endswith("@example.net>")
    dt.datetime.fromisoformat(row["received"])
    assert sink.handler.to("dave@example.net") == []  # a post gets no automatic reply


def test_request_without_any_sender_address_is_refused_not_deferred(service):
    # No From, and an envelope sender that is no address: nobody to answer, and retrying won't help.
    port = service.settings.smtp.port
    for to in (SUBSCRIBE, HELP):
        _, (code, msg) = data_transaction(port, [to], b"Subject: who am I\r\n\r\nhi\r\n", sender="foo")
        assert code == 550, msg
    assert db_count(service.db, OutboxRecipient) == 0


def test_same_recipient_twice_is_acted_on_once(service):
    replies, (code, _) = data_transaction(
        service.settings.smtp.port, [LIST, "BLA@Bla.Example.org"], raw_message(subject="twice")
    )
    assert [c for c, _ in replies] == [250, 250] and code == 250
    assert db_count(service.db, Comment, Comment.subject == "twice") == 1


def test_lmtp_stays_in_step_when_a_template_is_broken(make_settings, tmp_path):
    broken = tmp_path / "templates" / "mail" / "en"
    broken.mkdir(parents=True)
    (broken / "help.txt").write_text("Subject: {% if %}\n\nbroken\n", encoding="utf-8")
    lists = [{"address": LIST, "title": "bla", "owner": "owner@example.org", "templates": str(tmp_path / "templates")}]
    with running(make_settings(smtp={"lmtp": True}, lists=lists)) as svc:
        client = smtplib.LMTP("127.0.0.1", svc.settings.smtp.port, timeout=10)
        try:
            client.ehlo()
            client.mail("carole@example.net")
            client.rcpt(LIST)
            client.rcpt(HELP)
            first = client.data(raw_message(subject="broken template"))
            second = client.getreply()
            assert (first[0], second[0]) == (451, 451)  # the MTA keeps it until the admin fixes it
            assert client.noop()[0] == 250
        finally:
            client.quit()
        assert db_count(svc.db, Comment) == 0  # all or nothing


def test_a_failing_message_in_a_group_leaves_the_others_committed(make_settings, db, tmp_path):
    """Group commit: when one message of a batch breaks, each is tried alone; the good ones are
    stored and answered 250, the bad one alone gets 451 (here: a broken override template)."""
    from listbridge.inbound import dispatch

    broken = tmp_path / "templates" / "mail" / "en"
    broken.mkdir(parents=True)
    (broken / "help.txt").write_text("Subject: {{ oops\n\nbody\n")
    settings = make_settings(
        lists=[{"address": "bla@bla.example.org", "language": "en", "templates": str(tmp_path / "templates")}]
    )

    def message(rcpt: str, subject: str) -> dispatch.Received:
        raw = f"From: a@example.org\r\nSubject: {subject}\r\n\r\nok\r\n".encode()
        return dispatch.Received(raw, "a@example.org", (rcpt,))

    batch = [
        message("bla@bla.example.org", "one"),
        message("bla+help@bla.example.org", "help"),
        message("bla@bla.example.org", "two"),
    ]
    replies = dispatch.accept_many(db, settings, batch, lambda: {}).replies
    assert [r[0].code for r in replies] == [250, 451, 250]
    with db.transaction() as session:
        assert sorted(session.scalars(select(Comment.subject))) == ["one", "two"]
