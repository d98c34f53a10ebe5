"""The fast path for MAIL FROM / RCPT TO arguments reads every argument exactly as aiosmtpd's
own RFC 5322 parser does, or leaves it to that parser; what that parser trips over is a
malformed address, not an internal error."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from listbridge.inbound.server import _LongLinesLMTP, _LongLinesSMTP, plain_path


def stock(limit: int) -> SMTP:
    server = SMTP.__new__(SMTP)  # _getaddr reads only local_part_limit
    server.local_part_limit = limit
    return server


def ours(cls: type[SMTP], limit: int) -> SMTP:
    server = cls.__new__(cls)
    server.local_part_limit = limit
    return server


PIECES = st.sampled_from(
    [
        "<",
        ">",
        "@",
        ".",
        " ",
        "\t",
        "(",
        ")",
        '"',
        "\\",
        ",",
        ":",
        "[",
        "]",
        "=",
        "SIZE=10",
        "a",
        "Zz",
        "0",
        "+tag",
        "-",
        "_",
        "é",
        "~",
        "bla",
        "example.org",
        "BODY=8BITMIME",
    ]
)


def reading(server: SMTP, arg: str) -> object:
    """What the server makes of `arg`: its result, or the kind of error it raises (the stock
    parser raises IndexError on some truncated paths, such as a lone "<")."""
    try:
        return server._getaddr(arg)
    except Exception as exc:
        return type(exc)


NOISE = st.lists(PIECES, max_size=12).map("".join)
# Mostly well-formed paths with a piece of noise somewhere, so that both sides of the fast
# path's border are explored, not only strings no parser accepts.
WORD = st.lists(
    st.sampled_from(["a", "Zz", "0", "+tag", "-", "_", "~", "!", "é", '"', " ", "(", ".", "\\"]), min_size=1, max_size=5
).map("".join)
PATHS = st.builds(
    lambda before, local, domain, after, rest: f"{before}<{local}@{domain}>{after}{rest}",
    st.sampled_from(["", "", " ", "("]),
    st.lists(WORD, min_size=1, max_size=3).map(".".join),
    st.lists(WORD, min_size=1, max_size=3).map(".".join),
    st.sampled_from(["", " ", "  ", "\t", " (c) ", "(c)", ">"]),
    NOISE,
)
ARGS = st.one_of(NOISE, PATHS)


@settings(max_examples=2000, deadline=None)
@given(ARGS, st.sampled_from([0, 3, 64]))
def test_same_reading_as_aiosmtpd(arg: str, limit: int) -> None:
    expected = reading(stock(limit), arg)
    if isinstance(expected, type):  # where the stock parser raises, ours says "no address"
        expected = (None, None)
    assert reading(ours(_LongLinesSMTP, limit), arg) == expected
    assert reading(ours(_LongLinesLMTP, limit), arg) == expected


@pytest.mark.parametrize(
    "arg",
    [
        "<reader@example.net>",
        "<reader+tag@mail.example.net> SIZE=1500 BODY=8BITMIME",
        "<a.b-c_d@x.y>  SMTPUTF8",
        "<bla+confirm-Abc_12-x@bla.example.org>",
    ],
)
def test_everyday_paths_take_the_fast_path(arg: str) -> None:
    assert plain_path(arg) is not None
    assert ours(_LongLinesSMTP, 64)._getaddr(arg) == stock(64)._getaddr(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "<>",
        '<"a b"@example.net>',
        "<a@example.net> (comment) SIZE=1",
        "<a@[127.0.0.1]>",
        "<@relay.example:a@example.net>",
        " <a@example.net>",
        "a@example.net",
        "<a..b@example.net>",
        "<réne@example.net>",
    ],
)
def test_anything_else_goes_to_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) is None
    assert ours(_LongLinesSMTP, 64)._getaddr(arg) == stock(64)._getaddr(arg)
