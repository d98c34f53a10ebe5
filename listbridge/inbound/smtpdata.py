"""An SMTP DATA block read in a few large reads instead of one await per line.

aiosmtpd reads DATA a line at a time, one await of StreamReader.readuntil per line. Here the
whole block usually comes in one readuntil(CRLF "." CRLF), and DataAssembler splits and checks
it with aiosmtpd's rules (lines end at CRLF only, dot-stuffing undone, the same limits in the
same order, the same replies), so the two read every byte stream the same way;
tests/test_smtpdata.py holds them equal over real sockets.
"""

from __future__ import annotations

import asyncio

TERMINATOR = b"\r\n.\r\n"
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's own replies
TOO_MUCH_DATA = "552 Error: Too much mail data"


class DataAssembler:
    """Pure: fed the bytes of a DATA block in any pieces, up to and including its terminating
    "." line and never beyond it. Lines end at CRLF, as in aiosmtpd (a bare CR or LF is
    data). A line longer than `line_limit`, its CRLF counted, makes the block LINE_TOO_LONG;
    more than `size_limit` bytes (None or 0: no limit) make it TOO_MUCH_DATA; the first to
    happen counts, and what comes after it is only drained, not kept (memory stays bounded by
    the limits, whatever comes). As in aiosmtpd, a line over `line_limit` before its CRLF is
    refused before its bytes are counted, and a line over it only by its CRLF after."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit or None
        self.line_limit = line_limit
        self.error: str | None = None
        self.done = False
        self._pieces: list[bytes] = []  # unstuffed lines, CRLF included
        self._size = 0
        self._partial = b""  # the bytes after the last CRLF fed
        self._in_long_line = False  # the partial line is already over the limit (and dropped)

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the block."""
        if self.done:
            raise ValueError("bytes fed after the terminating line")
        lines = (self._partial + chunk).split(b"\r\n")
        self._partial = lines.pop()
        if self._in_long_line and lines:  # the end of a line already refused as too long
            del lines[0]
            self._in_long_line = False
        if b"." in lines:
            if lines.index(b".") != len(lines) - 1 or self._partial:
                raise ValueError("bytes fed after the terminating line")
            lines.pop()
            self.done = True
        if lines:
            self._take(lines)
        if len(self._partial) > self.line_limit + 1:  # +1: a CR that may start the CRLF
            self._in_long_line = True
            self._fail(LINE_TOO_LONG)
            self._partial = self._partial[-1:]

    def content(self) -> bytes:
        """The message, dot-stuffing undone; only once done and with no error."""
        assert self.done and self.error is None
        return b"".join(self._pieces)

    def _take(self, lines: list[bytes]) -> None:
        if self.error is not None:
            return
        size = sum(map(len, lines)) + 2 * len(lines)
        if max(map(len, lines)) + 2 <= self.line_limit and not (
            self.size_limit and self._size + size > self.size_limit
        ):
            self._size += size
            # Each line starts right after a CRLF: one replace undoes the stuffing of all of them.
            self._pieces.append((b"\r\n" + b"\r\n".join(lines) + b"\r\n").replace(b"\r\n.", b"\r\n")[2:])
            return
        for line in lines:  # a limit is crossed: which one first, in aiosmtpd's order
            if len(line) > self.line_limit:  # over its reader's limit: refused unread
                return self._fail(LINE_TOO_LONG)
            self._size += len(line) + 2
            if self.size_limit and self._size > self.size_limit:
                return self._fail(TOO_MUCH_DATA)
            if len(line) + 2 > self.line_limit:  # read, counted, then found too long
                return self._fail(LINE_TOO_LONG)
        raise AssertionError("a limit was crossed by no line")  # pragma: no cover

    def _fail(self, reply: str) -> None:
        if self.error is None:
            self.error = reply
            self._pieces.clear()


async def read_data(reader: asyncio.StreamReader, block: DataAssembler) -> None:
    """Read a DATA block from `reader` into `block`, through its terminating line and not one
    byte further (a client may already have sent its next command)."""
    at_line_start = True
    while not block.done:
        if at_line_start:
            # A block always has at least ".\r\n" left. If these 3 bytes hold no CR, the line
            # they start goes on, so the terminator's own CRLF is still ahead in the stream and
            # CRLF "." CRLF finds it; at a line start it would miss an immediate "." line.
            head = await reader.readexactly(3)
            block.feed(head)
            if block.done:
                return
            if b"\r" not in head:
                try:
                    block.feed(await reader.readuntil(TERMINATOR))
                    return
                except asyncio.LimitOverrunError as exc:  # over the reader's limit: in parts
                    block.feed(await reader.read(exc.consumed))
                    # and on to the end of the line this leaves us in, below
        try:
            block.feed(await reader.readuntil(b"\r\n"))
            at_line_start = True
        except asyncio.LimitOverrunError as exc:
            block.feed(await reader.read(exc.consumed))
            at_line_start = False
