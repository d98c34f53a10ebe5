"""The event loop's end of the store process's socket: replies cut from whatever reads bring."""

from __future__ import annotations

import asyncio
import socket

import pytest

from listbridge.store_process import _LENGTH, _frame, _ReplyChannel


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))


def channel() -> tuple[_ReplyChannel, Recorder]:
    a, b = socket.socketpair()
    a.close(), b.close()
    reply_channel, transport = _ReplyChannel(a), Recorder()
    reply_channel.connection_made(transport)
    return reply_channel, transport


def test_a_reply_arriving_in_pieces_is_whole_and_the_next_starts_clean() -> None:
    async def run() -> None:
        chan, transport = channel()
        for question, answer in ((b"q1", b"first reply" * 50), (b"q2", b"second")):
            asked = chan.ask(_frame(question))
            assert transport.written[-1] == _LENGTH.pack(len(question)) + question
            framed = _frame(answer)
            for i in range(len(framed)):  # one byte at a time, the length prefix cut too
                assert not asked.done()
                chan.data_received(framed[i : i + 1])
            assert asked.result() == answer
        assert not chan.received

    asyncio.run(run())


def test_a_reply_in_one_read_with_its_length_and_an_empty_one() -> None:
    async def run() -> None:
        chan, _ = channel()
        asked = chan.ask(_frame(b"q"))
        chan.data_received(_frame(b""))
        assert asked.result() == b""

    asyncio.run(run())


def test_the_child_gone_fails_the_question_in_hand_and_the_next() -> None:
    async def run() -> None:
        chan, transport = channel()
        asked = chan.ask(_frame(b"q"))
        chan.data_received(_frame(b"partial")[:5])
        chan.connection_lost(None)
        with pytest.raises(EOFError):
            await asyncio.wait_for(asked, 5)
        sent = len(transport.written)
        with pytest.raises(EOFError):
            await asyncio.wait_for(chan.ask(_frame(b"again")), 5)
        assert len(transport.written) == sent  # nothing written to a closed channel

    asyncio.run(run())


def test_a_reset_is_passed_on_as_it_came() -> None:
    async def run() -> None:
        chan, _ = channel()
        asked = chan.ask(_frame(b"q"))
        chan.connection_lost(ConnectionResetError(104, "reset"))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(asked, 5)

    asyncio.run(run())
