"""The relay client against real aiosmtpd servers that demand STARTTLS, SSL and AUTH."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from listbridge.config import build_settings
from listbridge.outbound.relay import RelayClient, RelayError, prepare

from helpers import SinkHandler, free_port

MESSAGE = prepare(b"From: a@x.example\r\nTo: b@y.example\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n")


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = data.login == b"lists" and data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


def relay_settings(tmp_path: Path, port: int, security: str, password: str = "s3cret"):
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)  # a secret readable by others is refused
    return build_settings(
        {
            "relay": {
                "host": "127.0.0.1",
                "port": port,
                "security": security,
                "username": "lists",
                "password_file": str(secret),
                "timeout": 5,
            }
        }
    ).relay


@pytest.fixture
def trusted(certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    return certificate


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    return context


def test_starttls_and_auth(trusted, tmp_path):
    handler, port = SinkHandler(), free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context(trusted),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        client = RelayClient(relay_settings(tmp_path, port, "starttls"))
        assert client.send("bla+owner@d.example", ["b@y.example", "c@y.example"], MESSAGE) == [(250, "OK queued")] * 2
        assert client.send("bla+owner@d.example", ["d@y.example"], MESSAGE) == [(250, "OK queued")]  # reused
        client.close()
    finally:
        controller.stop()
    assert [r.rcpt_tos for r in handler.received] == [["b@y.example", "c@y.example"], ["d@y.example"]]
    assert b"\r\n.leading dot\r\n" in handler.received[0].data  # dot-stuffing undone by the server


def test_ssl(trusted, tmp_path):
    handler, port = SinkHandler(), free_port()
    # aiosmtpd does not see implicit TLS as TLS, hence auth_require_tls=False (the socket is TLS).
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ssl_context=server_context(trusted),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        client = RelayClient(relay_settings(tmp_path, port, "ssl"))
        assert client.send("bla+owner@d.example", ["b@y.example"], MESSAGE) == [(250, "OK queued")]
        client.close()
    finally:
        controller.stop()
    assert len(handler.received) == 1


def test_wrong_password_is_a_relay_error(trusted, tmp_path):
    port = free_port()
    controller = Controller(
        SinkHandler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context(trusted),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        client = RelayClient(relay_settings(tmp_path, port, "starttls", password="wrong"))
        with pytest.raises(RelayError, match="refused"):
            client.send("bla+owner@d.example", ["b@y.example"], MESSAGE)
    finally:
        controller.stop()


def test_untrusted_certificate_is_refused(certificate, tmp_path):
    port = free_port()
    controller = Controller(
        SinkHandler(), hostname="127.0.0.1", port=port, tls_context=server_context(certificate), require_starttls=True
    )
    controller.start()
    try:
        with pytest.raises(RelayError):
            RelayClient(relay_settings(tmp_path, port, "starttls")).send("a@d.example", ["b@y.example"], MESSAGE)
    finally:
        controller.stop()


def test_unreachable_relay_is_a_relay_error(tmp_path):
    with pytest.raises(RelayError, match="unreachable"):
        RelayClient(relay_settings(tmp_path, free_port(), "none")).send("a@d.example", ["b@y.example"], MESSAGE)
