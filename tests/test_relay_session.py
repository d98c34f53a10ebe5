"""The relay client's one session, reused: when the relay has closed it while idle (silently,
or with a 421 as Postfix does at smtpd_timeout), the next mail goes at once on a new session
instead of waiting for the outbox's first retry."""

from __future__ import annotations

import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from listbridge.config import build_settings
from listbridge.outbound.relay import RelayClient, RelayError

from helpers import SinkHandler, free_port, wait_for

MESSAGE = b"From: a@d.example\r\nSubject: s\r\n\r\nbody\r\n"


class SaysGoodbye(SMTP):
    """Closes an idle session with 421 first, as Postfix does."""

    def _timeout_cb(self) -> None:
        self._writer.write(b"421 4.4.2 Error: timeout exceeded\r\n")
        super()._timeout_cb()


class IdleTimeout(Controller):
    def __init__(self, handler: SinkHandler, port: int, polite: bool) -> None:
        self.polite = polite
        super().__init__(handler, hostname="127.0.0.1", port=port, timeout=0.5)

    def factory(self) -> SMTP:
        return (SaysGoodbye if self.polite else SMTP)(self.handler, **self.SMTP_kwargs)


@pytest.mark.parametrize("polite", [False, True], ids=["silent close", "421 then close"])
def test_a_session_the_relay_closed_while_idle_is_opened_again(polite: bool) -> None:
    handler, port = SinkHandler(), free_port()
    relay = IdleTimeout(handler, port, polite)
    relay.start()
    try:
        client = RelayClient(build_settings({"relay": {"host": "127.0.0.1", "port": port, "timeout": 5}}).relay)
        assert client.send("bla+owner@d.example", ["b@y.example"], MESSAGE) == [(250, "OK queued")]
        time.sleep(1.5)  # the relay ends the idle session
        sent = list(client.send_many([("bla+owner@d.example", ["c@y.example"], MESSAGE)] * 2))
        assert sent == [[(250, "OK queued")]] * 2
        client.close()
    finally:
        relay.stop()
    wait_for(lambda: len(handler.received) == 3)
    assert [r.rcpt_tos for r in handler.received] == [["b@y.example"], ["c@y.example"], ["c@y.example"]]


def test_a_new_session_that_fails_is_still_an_error() -> None:
    """Only a reused session is tried again: a relay that drops a fresh one is down."""
    client = RelayClient(build_settings({"relay": {"host": "127.0.0.1", "port": free_port(), "timeout": 2}}).relay)
    with pytest.raises(RelayError, match="unreachable"):
        client.send("bla+owner@d.example", ["b@y.example"], MESSAGE)
