"""The MX probe against real servers on loopback: SMTP, STARTTLS, silence, refusal."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from aiosmtpd.controller import Controller

from listbridge.outage.probe import DOWN, UP, ProbeState, next_state, probe

from helpers import SinkHandler, free_port


@pytest.fixture
def trusted(certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    return certificate


def serve(**kwargs) -> Controller:
    controller = Controller(SinkHandler(), hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


def test_a_working_mx_passes():
    controller = serve()
    try:
        result = probe(f"127.0.0.1:{controller.port}", timeout=2)
    finally:
        controller.stop()
    assert (result.ok, result.step, result.detail) == (True, "done", "ok")


def test_starttls_is_required_when_asked(trusted):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, trusted))
    with_tls, without = serve(tls_context=context), serve()
    try:
        good = probe(f"127.0.0.1:{with_tls.port}", timeout=2, starttls=True)
        plain = probe(f"127.0.0.1:{without.port}", timeout=2, starttls=True)
    finally:
        with_tls.stop()
        without.stop()
    assert good.ok, good
    assert (plain.ok, plain.step, plain.detail) == (False, "starttls", "STARTTLS not offered")


def test_untrusted_certificate_fails_the_probe(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    controller = serve(tls_context=context)
    try:
        result = probe(f"127.0.0.1:{controller.port}", timeout=2, starttls=True)
    finally:
        controller.stop()
    assert (result.ok, result.step) == (False, "starttls")


def test_a_silent_server_times_out_at_the_banner():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    started = time.monotonic()
    try:
        result = probe(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
    finally:
        for s in accepted:
            s.close()
        listener.close()
    assert (result.ok, result.step) == (False, "banner")
    assert time.monotonic() - started < 3


def test_a_refusing_banner_fails():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"554 5.3.2 not now\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        result = probe(f"127.0.0.1:{listener.getsockname()[1]}", timeout=2)
    finally:
        listener.close()
    assert (result.ok, result.step) == (False, "banner") and "554" in result.detail


def test_nothing_listening_fails_at_connect():
    result = probe(f"127.0.0.1:{free_port()}", timeout=1)
    assert (result.ok, result.step) == (False, "connect")


def test_hysteresis_absorbs_flapping():
    state, events = ProbeState(), []
    for ok in [False, False, True, False, False, True, True]:  # never 3 failures in a row
        state, event = next_state(state, ok, failures=3, recoveries=2)
        events.append(event)
    assert events == [None] * 7 and state.state == UP
    for ok, expected in [
        (False, None),
        (False, None),
        (False, DOWN),
        (False, None),
        (True, None),
        (False, None),
        (True, None),
        (True, UP),
    ]:
        state, event = next_state(state, ok, failures=3, recoveries=2)
        assert event == expected
