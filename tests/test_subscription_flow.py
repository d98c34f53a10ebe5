"""The 'done when' walk: subscribe, confirm by reply, receive, unsubscribe with List-Unsubscribe."""

from __future__ import annotations

import re

from sqlalchemy import select

from listbridge.models import Subscriber

from conftest import send, wait_for


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
    assert request.mail_from == "bla+owner@bla.example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["List-Id"] == "bla <bla.bla.example.org>"
    assert confirm_address in msg.get_content()
    assert subscribers(service) == []  # nothing before the confirmation

    send(port, confirm_address, subject="Re: " + msg["Subject"])
    welcome = wait_for(lambda: sink.handler.to("carole@example.net")[1:])[0].message
    assert subscribers(service) == ["carole@example.net"]
    assert "Welcome" in welcome["Subject"]
    unsubscribe = re.search(r"bla\+unsubscribe-[a-z2-7]+@bla\.example\.org", welcome.get_content()).group(0)

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
        return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    return "250"
