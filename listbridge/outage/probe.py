"""Is the home MX up? One probe (TCP, 220 banner, EHLO, optionally STARTTLS), and the
hysteresis that turns probe results into "down" and "up" events.

The hysteresis is a pure function so flapping rules are tested without a network.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import IO

UP = "up"
DOWN = "down"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    step: str  # connect | banner | ehlo | starttls | done
    detail: str
    seconds: float


@dataclass(frozen=True)
class ProbeState:
    state: str = UP
    failures: int = 0  # consecutive failed probes
    successes: int = 0  # consecutive good probes


def next_state(current: ProbeState, ok: bool, failures: int, recoveries: int) -> tuple[ProbeState, str | None]:
    """Fold one probe result in; returns the new state and "down"/"up" when it flips.

    >>> s, e = next_state(ProbeState(), False, 3, 2); (s.failures, e)
    (1, None)
    >>> next_state(ProbeState(UP, 2, 0), False, 3, 2)[1]
    'down'
    >>> next_state(ProbeState(DOWN, 0, 1), True, 3, 2)[1]
    'up'
    """
    if ok:
        state = ProbeState(current.state, 0, current.successes + 1)
        if current.state == DOWN and state.successes >= recoveries:
            return ProbeState(UP, 0, state.successes), UP
        return state, None
    state = ProbeState(current.state, current.failures + 1, 0)
    if current.state == UP and state.failures >= failures:
        return ProbeState(DOWN, state.failures, 0), DOWN
    return state, None


def split_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    """'mx.example.org:25' -> ('mx.example.org', 25); '[::1]:25' works too."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value.strip("[]"), default_port
    return host.strip("[]"), int(port)


def _reply(reader: IO[bytes], deadline: float) -> tuple[int, str]:
    """Read one (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        line = reader.readline(4096)
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line.decode("utf-8", "replace").rstrip())
        if len(line) < 4 or line[3:4] != b"-":
            break
        if time.monotonic() > deadline:
            raise TimeoutError("reply too slow")
    code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else 0
    return code, " / ".join(lines)


def probe(mx: str, timeout: float = 10.0, starttls: bool = False, helo: str = "listbridge-watch") -> ProbeResult:
    """Connect to `mx` (HOST:PORT), expect a 220 banner and a 250 answer to EHLO; with
    `starttls`, also expect STARTTLS to be offered and the TLS handshake to succeed."""
    host, port = split_hostport(mx)
    started = time.monotonic()
    deadline = started + timeout
    step = "connect"

    def result(ok: bool, detail: str) -> ProbeResult:
        return ProbeResult(ok, step if not ok else "done", detail, round(time.monotonic() - started, 3))

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            step = "banner"
            code, text = _reply(reader, deadline)
            if code != 220:
                return result(False, f"banner {text!r}")
            step = "ehlo"
            sock.sendall(f"EHLO {helo}\r\n".encode())
            code, text = _reply(reader, deadline)
            if code != 250:
                return result(False, f"EHLO answered {text!r}")
            if starttls:
                step = "starttls"
                if "STARTTLS" not in text.upper():
                    return result(False, "STARTTLS not offered")
                sock.sendall(b"STARTTLS\r\n")
                code, text = _reply(reader, deadline)
                if code != 220:
                    return result(False, f"STARTTLS answered {text!r}")
                context = ssl.create_default_context()
                with context.wrap_socket(sock, server_hostname=host):
                    pass
            else:
                sock.sendall(b"QUIT\r\n")
            return result(True, "ok")
    except (OSError, ValueError, ssl.SSLError) as exc:
        return result(False, f"{type(exc).__name__}: {exc}")
