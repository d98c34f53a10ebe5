"""A bound on the wall-clock time of a block of pure computation (parsing one message), so that
one hostile message cannot hold the store process, and every sender behind it, for long.

SIGALRM interrupts the block with Overtime: CPython's regular-expression engine and the
interpreter loop both check for signals as they run. Overtime is a BaseException, so that no
`except Exception` in a parser swallows it. Whatever instant it rings at (inside the block,
or while it is entered or left), no timer is left behind to ring later elsewhere; inside the
block it rings again every RING_AGAIN seconds until the block is left, because Python drops an
exception raised in a __del__ or a garbage-collector callback. A parser that swallowed even a
BaseException would run on, bounded then by the store process's reply timeout. Signals reach
only the main thread: anywhere else the block runs unbounded.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class Overtime(BaseException):
    """The block ran past its time limit."""


class TimeLimit:
    """`with TimeLimit(seconds):` raises Overtime in the block once `seconds` have passed.
    Not nested. Its SIGALRM handler stays installed after the block, and does nothing then."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._armed = False

    def __enter__(self) -> TimeLimit:
        global _running
        if self.seconds > 0 and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGALRM) is not _ring:
                signal.signal(signal.SIGALRM, _ring)
            _running, self._armed = self, True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)  # once: the kernel disarms it
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        global _running
        if self._armed:
            self._armed = False
            _running = None  # from here on, a ring does nothing
            signal.setitimer(signal.ITIMER_REAL, 0)


_running: TimeLimit | None = None  # the block being timed, if any


RING_AGAIN = 0.01  # seconds: how soon the alarm rings again after an Overtime Python dropped


def _ring(signum: int, frame: FrameType | None) -> None:
    global _running
    limit = _running
    if limit is None:
        return
    if frame is not None and frame.f_code.co_filename == __file__:
        # Entering or leaving the block: this Overtime reaches the caller, and nothing rings again.
        _running = None
    else:
        # A __del__ or a garbage-collector callback drops what it raises: should this land in
        # one, the block would run on unbounded. It rings again until the block is left.
        signal.setitimer(signal.ITIMER_REAL, RING_AGAIN)
    raise Overtime(f"over {limit.seconds:g} s")
