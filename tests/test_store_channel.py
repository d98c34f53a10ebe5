"""The event loop's end of the store process's socket: replies cut from whatever reads bring."""

from __future__ import annotations

import asyncio
import socket

import pytest

from listbridge.inbound.worker import _LENGTH, _frame, _ReplyChannel


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))


def channel() -> tuple[_ReplyChannel, Recorder]:
    a, b = socket.socketpair()
    a.close()
    b.close()
    reply_channel, transport = _ReplyChannel(a, b, asyncio.get_running_loop()), Recorder()
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


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_after_a_cancelled_exchange_the_next_child_is_heard(settings, kind, monkeypatch) -> None:
    """The cancelled exchange kills its child on the loop's own thread; the next child's socket
    may get the same number as the old one, and must still be read (stock asyncio kept the old
    number registered when the socket was closed under its transport)."""
    import os
    import signal
    import time

    from listbridge.inbound import worker
    from listbridge.inbound.server import new_event_loop

    monkeypatch.setattr(worker, "REPLY_TIMEOUT", 10.0)
    store = worker.StoreProcess(settings)
    store.start()
    loop = new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    fds = len(os.listdir("/proc/self/fd"))

    async def rounds() -> None:
        for _ in range(3):
            assert (await store.accept_many([])).replies == []
            child = store.pid
            assert child is not None
            os.kill(child, signal.SIGSTOP)  # alive, silent
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await store.accept_many([])
            started = time.monotonic()
            assert (await store.accept_many([])).replies == []  # a new child, heard at once
            assert time.monotonic() - started < 5
            assert store.pid not in (None, child)

    try:
        loop.run_until_complete(rounds())
        loop.run_until_complete(asyncio.sleep(0.1))  # let the old transports close
        assert len(os.listdir("/proc/self/fd")) <= fds + 2  # this child's socket and its dup
        loop.run_until_complete(asyncio.to_thread(store.stop))
        loop.run_until_complete(asyncio.sleep(0.1))
        assert len(os.listdir("/proc/self/fd")) <= fds  # nothing left behind
    finally:
        store.stop()
        loop.close()
