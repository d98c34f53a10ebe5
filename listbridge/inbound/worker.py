"""The receiving side's heavy half in its own process: parse, route and store each batch of
received messages (dispatch.accept_many), so that mail-parser and SQL run on another core than
the SMTP event loop instead of taking turns with it on one GIL.

One child per `serve`, fed one batch at a time over a socket pair; it answers only after the
batch is committed, so a 250 still means "stored". The event loop writes and reads that socket
itself, with no thread in between. If the child dies (a parser blowing up on hostile mail, the
OOM killer) or stops answering, the batch in flight gets 451 and the next batch starts a new
child: the server itself keeps answering. Children are forked from a forkserver that has
listbridge imported already, so a restart costs milliseconds, not a second of imports. As with
any multiprocessing program, a script that starts a Service must guard its top level with
`if __name__ == "__main__":` (the `listbridge` command does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import select
import signal
import socket
import struct
import threading
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import cast

from listbridge.archive.posts import PostCache
from listbridge.config import Settings
from listbridge.db import Database
from listbridge.inbound import dispatch
from listbridge.inbound.parse import quiet_parsers

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([__name__])
READY = b"ready"
# Far beyond any batch's work (SQLite waits 30 s for its lock): a child this late is wedged.
REPLY_TIMEOUT = 300.0
_LENGTH = struct.Struct("!Q")  # each frame: its length, then a pickle
_GONE = "the store process closed its socket"


class StoreCrashed(Exception):
    """The child died while it had a batch: whether that batch was committed is unknown."""


class StoreProcess:
    """dispatch.accept_many() in a child process, for one event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # start() and stop() come from other threads
        self._process: BaseProcess | None = None
        self._sock: socket.socket | None = None
        self._channel: _ReplyChannel | None = None  # the event loop's end of the socket

    def start(self) -> None:
        """Start the child now (else the first batch does), and wait until it is ready."""
        with self._lock:
            if not self._running():
                self._end_child()
                self._start_child()

    async def accept_many(self, batch: Sequence[dispatch.Received]) -> dispatch.Accepted:
        """Replies for `batch`, once the child has committed it. Raises StoreCrashed. One batch
        at a time: the caller (server.GroupCommitter) awaits each before sending the next."""
        if not self._running():
            await asyncio.to_thread(self.start)  # forking and waiting for "ready" would block the loop
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        try:
            channel = self._channel
            if channel is None or channel.sock is not sock or channel.loop is not loop:  # a new child
                channel = self._channel = await _ReplyChannel.open(loop, sock)
            asked = channel.ask(_frame(pickle.dumps(list(batch), pickle.HIGHEST_PROTOCOL)))
            async with asyncio.timeout(REPLY_TIMEOUT):  # no task per batch, unlike wait_for
                reply = await asked
        except TimeoutError as exc:
            await asyncio.to_thread(self.stop, kill=True)
            raise StoreCrashed(f"the store process did not answer in {REPLY_TIMEOUT:.0f} s; it was killed") from exc
        except (EOFError, OSError) as exc:
            code = await asyncio.to_thread(self.stop)
            raise StoreCrashed(f"the store process died with a batch in hand (exit code {code})") from exc
        except BaseException:  # cancelled halfway through an exchange: the socket is out of step
            self.stop(kill=True)
            raise
        accepted: dispatch.Accepted = pickle.loads(reply)
        return accepted

    def close_channel(self) -> None:
        """Close the loop's end of the socket, from any thread (_ReplyChannel.close). Service
        calls it on the loop before the loop closes, so that no transport is left open at its
        close. A batch in hand gets StoreCrashed."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def stop(self, kill: bool = False) -> int | None:
        """Let the child finish its batch and exit (or kill it); its exit code."""
        with self._lock:
            if kill and self._process is not None:
                self._process.kill()
            return self._end_child()

    def _running(self) -> bool:
        process, sock, channel = self._process, self._sock, self._channel
        if sock is None or process is None or not _alive(process):
            return False
        return channel is None or channel.sock is not sock or channel.lost is None  # EOF: it is leaving

    @property
    def pid(self) -> int | None:
        """The child's pid, if one is running."""
        process = self._process
        return process.pid if process is not None and _alive(process) else None

    def _start_child(self) -> None:
        ours, theirs = socket.socketpair()
        root = logging.getLogger()
        formats = [f for h in root.handlers if (f := getattr(h.formatter, "_fmt", None))]
        process = _CONTEXT.Process(
            target=_serve,
            args=(theirs, self.settings, os.getcwd(), root.level, formats[0] if formats else None),
            name="listbridge-store",
            daemon=True,
        )
        process.start()
        theirs.close()
        try:
            if _recv_frame(ours) != READY:
                raise EOFError
        except (EOFError, OSError) as exc:
            ours.close()
            process.join(5)
            raise StoreCrashed(f"the store process did not start (exit code {process.exitcode})") from exc
        ours.setblocking(False)
        self._process, self._sock = process, ours

    def _end_child(self) -> int | None:
        """Close the socket (the child exits on EOF) and reap the child; its exit code."""
        if self._sock is not None:
            # The event loop's transport has a socket of its own (a dup): shutdown() sends the
            # EOF through both at once, and the child, if busy, still sends its reply.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
            self._sock.close()
        self.close_channel()
        process, self._process, self._sock = self._process, None, None
        if process is None:
            return None
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join(5)
        return process.exitcode


def _alive(process: BaseProcess) -> bool:
    """One poll(2) of the child's sentinel, which turns readable when it exits: is_alive() on a
    forkserver child builds and closes a selector each time. A poll object of its own for each
    call: one may not be polled by two threads."""
    watch = select.poll()
    watch.register(process.sentinel, select.POLLIN)
    return not watch.poll(0)


class _ReplyChannel(asyncio.Protocol):
    """The event loop's end of the socket pair, as a protocol: the socket stays registered with
    the loop, and each reply is cut from what arrives (loop.sock_recv would add and remove a
    reader for each of its parts). One question at a time: the child sends nothing unasked.

    The transport gets a duplicate of the socket and is the only one to close it, on the loop's
    thread: a socket closed under a live transport leaves its number registered with the
    loop's selector, where the next child's socket, given the same number, would go unheard."""

    def __init__(self, sock: socket.socket, own: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock  # the StoreProcess's, to tell which child this channel is for
        self.own = own  # its dup, the transport's
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.waiting: asyncio.Future[bytes] | None = None
        self.lost: Exception | None = None

    @classmethod
    async def open(cls, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> _ReplyChannel:
        own = sock.dup()
        try:
            _, channel = await loop.connect_accepted_socket(lambda: cls(sock, own, loop), own)
        except BaseException:
            own.close()
            raise
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # connect_accepted_socket gives a stream transport; Protocol types it as the base class.
        self.transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        """Close the transport, from any thread: on the loop's own thread, at once; from another,
        by the loop, the next time it runs; once the loop is closed, its socket directly. A loop
        stopped for good but not yet closed never runs that close: its own close() then does it
        (uvloop) or leaves the socket to the garbage collector (asyncio). Service closes the
        channel on the loop, before the loop stops."""
        transport = self.transport
        if transport is None:
            return
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here:
            transport.abort()
            return
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(transport.abort)
                return
            except RuntimeError:  # closed meanwhile
                pass
        self.own.close()  # (uvloop closed it with the loop already: then a no-op)

    def ask(self, frame: bytes) -> asyncio.Future[bytes]:
        """Send `frame`; the future of the reply's payload (EOFError if the child is gone)."""
        assert self.waiting is None or self.waiting.done(), "one question at a time"
        self.waiting = asyncio.get_running_loop().create_future()
        if self.lost is not None or self.transport is None:
            self.waiting.set_exception(self.lost or EOFError(_GONE))
        else:
            self.transport.write(frame)
        return self.waiting

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) < _LENGTH.size:
            return
        end = _LENGTH.size + _LENGTH.unpack_from(self.received)[0]
        if len(self.received) < end:
            return
        reply = bytes(self.received[_LENGTH.size : end])
        del self.received[:end]
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or EOFError(_GONE)
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(self.lost)


def _frame(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _recv_frame(sock: socket.socket) -> bytes:
    """One frame from a blocking socket."""

    def exactly(size: int) -> bytes:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            n = sock.recv_into(view[got:])
            if not n:
                raise EOFError("the socket was closed")
            got += n
        return bytes(buffer)

    (size,) = _LENGTH.unpack(exactly(_LENGTH.size))
    return exactly(size)


def _serve(sock: socket.socket, settings: Settings, cwd: str, level: int, log_format: str | None) -> None:
    """In the child: accept batches until the parent closes its end."""
    # Ctrl-C reaches the whole process group: the parent shuts down, and the child finishes the
    # batch in hand and leaves when the socket closes. SIGTERM ends it at once (an open
    # transaction is rolled back, and its batch gets 451).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir(cwd)  # relative paths in the settings (a SQLite file, the site) are the parent's
    if log_format:
        logging.basicConfig(level=level, format=log_format)
    else:
        logging.getLogger().setLevel(level)
    if level > logging.DEBUG:
        quiet_parsers()
    db = Database(settings.database.url, warn_exposed=False)  # the parent has said it
    db.pin_connection()
    site = settings.site
    posts = PostCache(Path(site.repo), site.posts, settings.comments_dirs)
    try:
        sock.sendall(_frame(READY))
        while True:
            try:
                batch: list[dispatch.Received] = pickle.loads(_recv_frame(sock))
            except (EOFError, OSError):  # the parent closed its end, or died
                return
            try:
                accepted = dispatch.accept_many(db, settings, batch, posts.get)
            except Exception:  # a bug: the MTA keeps these messages; the child lives on
                log.exception("unexpected error while storing %d messages", len(batch))
                accepted = dispatch.Accepted([[dispatch.TEMPORARY_FAILURE] * len(m.recipients) for m in batch])
            try:
                sock.sendall(_frame(pickle.dumps(accepted, pickle.HIGHEST_PROTOCOL)))
            except OSError:  # the parent died: no one is waiting for these replies
                return
    finally:
        db.dispose()
