"""Fuzz target for the parse step: generated headers (From, Reply-To, Subject, References with
nesting, encoded words, quotes, comments) and HTML bodies (tag soup of the hostile shapes) go
through inbound.parse.parse as raw bytes. Each input must parse within a second and raise nothing
but IntakeError.

The normal suite runs a few hundred examples. For longer, give a time budget in seconds:

    LISTBRIDGE_FUZZ_SECONDS=60 pytest -q tests/test_fuzz_parse.py

which keeps drawing examples until the budget is spent (Hypothesis has no time budget of
its own: the test is run again, with fresh examples, until the time is up).
"""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listbridge.inbound.parse import IntakeError, parse
from listbridge.message import Incoming

SECONDS = float(os.environ.get("LISTBRIDGE_FUZZ_SECONDS", "0"))
PER_INPUT = 1.0
ROUND = 300  # examples per Hypothesis run

_word = st.sampled_from(
    [
        "Carole",
        "Renée",
        "a",
        "x@example.net",
        "<x@example.net>",
        "=?utf-8?q?Ren=C3=A9e?=",
        "=?utf-8?b?w6k=?=",
        "=?x?q?a?=",
        "=?",
        "?=",
        '"',
        "\\",
        "(",
        ")",
        "<",
        ">",
        "@",
        ",",
        ";",
        ":",
        ".",
        "[",
        "]",
        " ",
        "\t",
        "\r\n ",
        "é",
        "\x00",
        "\x7f",
    ]
)
_nested = st.integers(0, 800).flatmap(
    lambda n: st.sampled_from(["(", '"', "<", "[", "a:", "<@a,@b:", "(a", "=?utf-8?q?(?="]).map(lambda u: u * n)
)
_value = st.lists(st.one_of(_word, _nested), max_size=12).map("".join)
_msg_ids = st.lists(st.sampled_from(["<a@b>", "<", ">", " ", "(c)", "<" + "x" * 990, "\r\n "]), max_size=50).map(
    "".join
)
_tag = st.sampled_from(
    [
        "<head ",
        "<title",
        "<template",
        "<script",
        "<script>",
        "</script>",
        "<style>",
        "<!--",
        "-->",
        "<![CDATA[",
        "]]>",
        "<scr",
        "ipt>",
        "<",
        "<a ",
        '<a b="',
        "<a b='",
        "=",
        "<p>",
        "</p>",
        "<div>",
        "<br/>",
        "&amp;",
        "&#",
        "&#x",
        "1" * 50,
        "text ",
        "</",
        "<!",
        "<?",
        ">",
    ]
)
_soup = st.tuples(st.lists(_tag, max_size=30), st.integers(1, 2000)).map(lambda t: "".join(t[0]) * t[1])


def _header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    head = b"".join(
        [
            _header("From", draw(_value)),
            _header("Reply-To", draw(_value)),
            _header("Subject", draw(_value)),
            _header("Message-ID", draw(_msg_ids)),
            _header("References", draw(_msg_ids)),
            b"MIME-Version: 1.0\r\n",
            _header("Content-Type", draw(st.sampled_from(["text/html; charset=utf-8", "text/plain", "text/html"]))),
        ]
    )
    body = draw(_soup).encode("utf-8", "surrogateescape")
    return head + b"\r\n" + body


@settings(
    max_examples=ROUND,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_messages())
def _one_round(raw: bytes) -> None:
    started = time.monotonic()
    try:
        incoming = parse(raw, "env@example.net")
    except IntakeError:
        incoming = None
    took = time.monotonic() - started
    assert took < PER_INPUT, f"{took:.2f} s for {raw[:300]!r}…"
    assert incoming is None or isinstance(incoming, Incoming)


def test_parse_is_bounded_and_raises_only_intake_error() -> None:
    end = time.monotonic() + SECONDS
    _one_round()
    while time.monotonic() < end:
        _one_round()
