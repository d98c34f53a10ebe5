"""DATA read in bulk (listbridge.smtpdata) answers every byte stream exactly as aiosmtpd's own
line-by-line DATA does: the same replies, the same stored bytes, and not one byte read past
the terminating line. Both servers run side by side on loopback and get the same bytes, sent
in the same pieces (how the server's reads cut them is up to TCP: the DataAssembler tests
below fix the cuts)."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from typing import Any
from unittest import mock

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from listbridge.inbound.server import _BulkData
from listbridge.inbound.smtpdata import LINE_TOO_LONG, TOO_MUCH_DATA, DataAssembler, read_data

from helpers import free_port

# (line limit, data size limit): small ones, so that generated blocks cross them and the
# reader's buffer limit (the line limit) often cuts a block; and the receiver's own.
LIMITS = [(40, 300), (64 * 1024, None)]


class Capture:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.contents.append(envelope.original_content)
        return "250 stored"


class _Server(Controller):
    def __init__(self, cls: type[SMTP], line_limit: int, size_limit: int | None) -> None:
        self.cls = type(cls.__name__, (cls,), {"line_length_limit": line_limit})
        self.capture = Capture()
        super().__init__(self.capture, hostname="127.0.0.1", port=free_port(), data_size_limit=size_limit)

    def factory(self) -> SMTP:
        return self.cls(self.handler, **self.SMTP_kwargs)


@pytest.fixture(scope="module")
def servers() -> Any:
    pairs = {}
    for limits in LIMITS:
        pair = (_Server(SMTP, *limits), _Server(_BulkData, *limits))
        for server in pair:
            server.start()
        pairs[limits] = pair
    yield pairs
    for pair in pairs.values():
        for server in pair:
            server.stop()


def transcript(port: int, pieces: list[bytes]) -> bytes:
    """Everything the server says in a session that sends `pieces` after DATA's 354, then
    NOOP and QUIT, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece sent as it is
        said = bytearray()

        def reply() -> None:  # up to the end of the next final reply line
            while not said.endswith(b"\r\n") or said.rsplit(b"\r\n", 2)[-2][3:4] == b"-":
                chunk = sock.recv(65536)
                assert chunk, f"the server closed the connection: {bytes(said)!r}"
                said.extend(chunk)

        reply()
        for command in (
            b"EHLO client.example\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<b@example.org>\r\n",
            b"DATA\r\n",
        ):
            sock.sendall(command)
            reply()
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.001)  # lets the server read each piece on its own
        sock.sendall(b"NOOP\r\nQUIT\r\n")
        while chunk := sock.recv(65536):  # a server that waits for more DATA times out here
            said.extend(chunk)
        return bytes(said)


TOKENS = st.sampled_from(
    [
        b".",
        b"..",
        b"x",
        b"Merci.",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n.",
        b".\r\n",
        b"\r\n.\r\n",
        b"\xff\x00",
        b"x" * 37,
        b"y" * 41,
        b"z" * 70,
    ]
)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[tuple[int, int | None], list[bytes]]:
    """Limits, and a DATA block cut into pieces: any bytes, ended by CRLF "." CRLF. A "." line
    inside is stuffed, as a client would: what follows an early end is read as commands, and
    the server may hang up on those (the explicit examples cover that, within its patience)."""
    limits = draw(st.sampled_from(LIMITS))
    body = b"".join(draw(st.lists(TOKENS, max_size=40)))
    body = body + b"\r\n" if body and not body.endswith(b"\r\n") else body
    while b"\r\n.\r\n" in b"\r\n" + body:
        body = (b"\r\n" + body).replace(b"\r\n.\r\n", b"\r\n..\r\n")[2:]
    block = body + b".\r\n"
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(block) - 1)), max_size=6)))
    pieces = [block[a:b] for a, b in zip([0, *cuts], [*cuts, len(block)], strict=True) if block[a:b]]
    return limits, pieces


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions())
@example(((40, 300), [b".\r\n"]))  # an empty message
@example(((40, 300), [b"a\r\n", b".\r\n"]))  # the "." line alone in its piece, right after a line
@example(((40, 300), [b"..\r\n.\r\n"]))  # a stuffed "." line
@example(((40, 300), [b"a\r", b"\n.\r\n"]))  # the CRLF before "." cut in two
@example(((40, 300), [b"x" * 41 + b"\r\n.\r\n"]))  # one line over the limit
@example(((40, 300), [b"x" * 40 + b"\r\n" + b"ab\r\n" * 80 + b".\r\n"]))  # at the line limit, over the size
@example(((40, 300), [b"ab\r\n" * 70, b"x" * 40 + b"\r", b"\n.\r\n"]))  # cut on the CR of a line at the limit
@example(((40, 300), [b"a\r\n.\r\nb\r\n.\r\n"]))  # a second "." line: the rest is commands
@example(((64 * 1024, None), [b"From: a\r\n\r\n" + b"Merci.\r\n" * 30 + b".\r\n"]))
def test_bulk_data_reads_every_block_as_aiosmtpd_does(servers: Any, session: Any) -> None:
    limits, pieces = session
    stock, bulk = servers[limits]
    stock.capture.contents.clear()
    bulk.capture.contents.clear()
    assert transcript(bulk.port, pieces) == transcript(stock.port, pieces)
    assert bulk.capture.contents == stock.capture.contents


def test_the_bulk_reader_refuses_to_decode_data() -> None:
    with pytest.raises(ValueError, match="decode_data"):
        _BulkData(Capture(), decode_data=True)


def test_a_block_past_the_reader_limit_is_read_in_parts_and_whole(servers: Any) -> None:
    """5 MB: many times the reader's 64 KiB limit, so the bulk read overruns and goes on."""
    stock, bulk = servers[(64 * 1024, None)]
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. .. .\r\n"
    block = b"." + line * 80_000 + b".\r\n"
    bulk.capture.contents.clear()
    reply = transcript(bulk.port, [block])
    assert b"250 stored" in reply
    assert bulk.capture.contents == [line * 80_000]  # the first dot unstuffed, no other


def test_the_assembler_refuses_bytes_after_the_terminating_line() -> None:
    block = DataAssembler(None, 1000)
    with pytest.raises(ValueError):
        block.feed(b"a\r\n.\r\nNOOP\r\n")
    block = DataAssembler(None, 1000)
    block.feed(b".\r\n")
    with pytest.raises(ValueError):
        block.feed(b"x")


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        ([b"x" * 9, b"\r\n.\r\n"], LINE_TOO_LONG),  # 11 bytes with its CRLF
        ([b"x" * 8 + b"\r\n.\r\n"], None),
        ([b"x" * 5, b"x" * 20, b"x" * 30 + b"\r\n", b".\r\n"], LINE_TOO_LONG),  # dropped as it comes
        ([b"abcd\r\n" * 3, b"x" * 11 + b"\r\n.\r\n"], TOO_MUCH_DATA),  # the size went over first
        ([b"abcd\r\n", b"x" * 11 + b"\r\n", b"abcd\r\n" * 3 + b".\r\n"], LINE_TOO_LONG),
        # A line just over the limit by its CRLF is counted before it is found too long ...
        ([b"abcd\r\n" * 2, b"x" * 9 + b"\r\n.\r\n"], TOO_MUCH_DATA),
        # ... one over the limit without it is refused before it is counted.
        ([b"abcd\r\n" * 2, b"x" * 11 + b"\r\n.\r\n"], LINE_TOO_LONG),
        # A piece that ends on the CR of a line at the limit: not yet known to be over it.
        ([b"abcd\r\n" * 2, b"x" * 10 + b"\r", b"\n.\r\n"], TOO_MUCH_DATA),
        # A refused long line ending in "." (or cut on its CR) does not end the block.
        ([b"x" * 20 + b".", b"\r\na\r\n.\r\n"], LINE_TOO_LONG),
        ([b"x" * 20 + b"\r", b"\n.\r\n"], LINE_TOO_LONG),
    ],
)
def test_the_assembler_reports_the_first_limit_crossed(pieces: list[bytes], error: str | None) -> None:
    block = DataAssembler(17, 10)
    for piece in pieces:
        block.feed(piece)
    assert block.done and block.error == error


def test_an_everyday_message_is_read_in_one_go_and_not_one_byte_further() -> None:
    """The point of the module: one bulk read, not a read per line; and the client's next
    command, already sent, is left for the command loop."""

    async def read() -> tuple[DataAssembler, bytes, int]:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(b"From: a\r\n\r\n" + b"Merci.\r\n" * 40 + b".\r\nNOOP\r\n")
        reader.feed_eof()
        block = DataAssembler(None, 64 * 1024)
        with mock.patch.object(reader, "readuntil", wraps=reader.readuntil) as readuntil:
            await read_data(reader, block)
        return block, await reader.read(), readuntil.await_count

    block, rest, calls = asyncio.run(read())
    assert block.content() == b"From: a\r\n\r\n" + b"Merci.\r\n" * 40
    assert rest == b"NOOP\r\n"
    assert calls == 1


def test_a_huge_line_is_drained_in_bounded_memory() -> None:
    block = DataAssembler(None, 64 * 1024)
    piece = b"x" * 65536
    tracemalloc.start()
    try:
        for _ in range(320):  # 20 MB, no CRLF
            block.feed(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    block.feed(b"\r\n.\r\n")
    assert block.done and block.error == LINE_TOO_LONG
    assert peak < 1_000_000, peak
