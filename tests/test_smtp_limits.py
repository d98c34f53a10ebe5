"""What the listener announces and how long it lets one client hold it."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from importlib.metadata import version

from listbridge.inbound import dispatch
from listbridge.inbound.server import ListController, ListHandler
from listbridge.service import Service

from helpers import send

LIST = "bla@bla.example.org"


def _read_reply(stream) -> bytes:
    """One SMTP reply (all its lines) from a socket file."""
    lines = []
    while True:
        line = stream.readline()
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


def test_the_banner_names_listbridge_not_the_python_library(service):
    with socket.create_connection(("127.0.0.1", service.settings.smtp.port), timeout=10) as raw:
        banner = raw.makefile("rb").readline().decode()
    assert banner.startswith("220 ") and f" ESMTP listbridge {version('listbridge')}" in banner, banner
    assert "Python" not in banner


def test_a_trickling_data_is_cut_and_others_are_served_meanwhile(make_settings):
    svc = Service(make_settings(smtp={"data_timeout": 1.0}))
    svc.start()
    try:
        with socket.create_connection(("127.0.0.1", svc.settings.smtp.port), timeout=10) as slow:
            stream = slow.makefile("rb")
            _read_reply(stream)
            for command in (
                b"EHLO slow.example.net",
                b"MAIL FROM:<slow@example.net>",
                f"RCPT TO:<{LIST}>".encode(),
                b"DATA",
            ):
                slow.sendall(command + b"\r\n")
                reply = _read_reply(stream)
            assert reply.startswith(b"354")
            started = time.monotonic()
            results: list[object] = []
            fast = threading.Thread(target=lambda: results.append(send(svc.settings.smtp.port, LIST)))
            fast.start()
            closed_after = None
            try:
                for _ in range(50):  # a byte each 0.1 s: never idle, never done
                    slow.sendall(b"x")
                    time.sleep(0.1)
            except OSError:
                closed_after = time.monotonic() - started
            fast.join(10)
            final = _read_reply(stream)
    finally:
        svc.stop()
    assert results == [{}]  # the fast client got its 250 while the slow one trickled
    assert final.startswith(b"421 4.4.2"), final
    assert closed_after is not None and closed_after < 4.5


def test_replies_that_do_not_match_the_batch_get_451_not_silence(settings):
    async def short(batch: list[dispatch.Received]) -> dispatch.Accepted:
        return dispatch.Accepted([])  # one reply list too few: a store bug

    controller = ListController(ListHandler(settings, short), settings)
    controller.start()
    try:
        with smtplib.SMTP("127.0.0.1", settings.smtp.port, timeout=5) as client:
            client.ehlo()
            client.mail("carole@example.net")
            client.rcpt(LIST)
            code, _ = client.data(b"Subject: hi\r\n\r\nHello.\r\n")
    finally:
        controller.stop()
    assert code == 451
