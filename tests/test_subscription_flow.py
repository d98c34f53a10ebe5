"""The 'done when' walk: subscribe, confirm by reply, receive, unsubscribe with List-Unsubscribe."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import Subscriber
from listbridge.service import Service

from helpers import send, wait_for


def subscribers(service) -> list[str]:
    with service.db.transaction() as session:
        return list(session.scalars(select(Subscriber.address)))


def test_subscribe_confirm_unsubscribe(service, sink):
    port = service.settings.smtp.port
    send(port, "bla+subscribe@bla.example.org", subject="subscribe")
    request = wait_for(lambda: sink.handler.to("carole@example.net"))[0]
    msg = request.message
    confirm_address = msg["Reply-To"]
    assert re.fullmatch(r"bla\+confirm-[a-z2-7]{26}@bla\.example\.org", confirm_address)
    assert re.fullmatch(r"bla\+bounces-[a-z2-7]+@bla\.example\.org", request.mail_from)  # its own (VERP)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["List-Id"] == "bla <bla.bla.example.org>"
    assert confirm_address in msg.get_content()
    assert subscribers(service) == []  # nothing before the confirmation

    send(port, confirm_address, subject="Re: " + msg["Subject"])
    welcome = wait_for(lambda: sink.handler.to("carole@example.net")[1:])[0].message
    assert subscribers(service) == ["carole@example.net"]
    assert "Welcome" in welcome["Subject"]
    found = re.search(r"bla\+unsubscribe-[a-z2-7]+@bla\.example\.org", welcome.get_content())
    assert found is not None
    unsubscribe = found.group(0)

    # The confirmation is single use.
    refused = _refusal(port, confirm_address)
    assert refused.startswith("550")

    send(port, unsubscribe, subject="unsubscribe")
    goodbye = wait_for(lambda: sink.handler.to("carole@example.net")[2:])[0].message
    assert subscribers(service) == []
    assert "left" in goodbye["Subject"]


def _refusal(port: int, to: str) -> str:
    import smtplib

    try:
        send(port, to)
    except smtplib.SMTPDataError as exc:
        assert isinstance(exc.smtp_error, bytes)
        return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    return "250"


@pytest.mark.parametrize(
    "language, already, not_subscribed",
    [
        ("en", "is already subscribed to bla", "is not subscribed to bla"),
        ("fr", "est déjà abonné à bla", "n'est pas abonné à bla"),
    ],
)
def test_resubscribe_and_a_strangers_unsubscribe_get_one_polite_reply(
    make_settings, sink, language, already, not_subscribed
):
    lists = [{"address": "bla@bla.example.org", "title": "bla", "owner": "owner@example.org", "language": language}]
    svc = Service(make_settings(lists=lists))
    svc.start()
    try:
        with svc.db.transaction() as session:
            subscribe(session, ListContext(svc.settings, svc.settings.lists[0]), "carole@example.net")
        port = svc.settings.smtp.port
        assert send(port, "bla+subscribe@bla.example.org") == {}  # 250, not 451
        assert send(port, "bla+unsubscribe@bla.example.org", sender="zoe@example.net", name="Zoé") == {}
        reply = wait_for(lambda: sink.handler.to("carole@example.net"))[0].message
        stranger = wait_for(lambda: sink.handler.to("zoe@example.net"))[0].message
        time.sleep(0.3)  # nothing more comes
        assert len(sink.handler.to("carole@example.net")) == len(sink.handler.to("zoe@example.net")) == 1
    finally:
        svc.stop()
    assert reply["Subject"] == f"carole@example.net {already}"
    assert "carole@example.net" in reply.get_content() and reply["Auto-Submitted"] == "auto-replied"
    assert stranger["Subject"] == f"zoe@example.net {not_subscribed}"
    assert "bla+unsubscribe@bla.example.org" in stranger.get_content()
