"""A bound on the wall-clock time of a block of pure computation (parsing one message), so that
one hostile message cannot hold the store process, and every sender behind it, for long.

SIGALRM interrupts the block with Overtime: CPython's regular-expression engine and the
interpreter loop both check for signals as they run. Overtime is a BaseException, so that no
`except Exception` in a parser swallows it; and the alarm repeats until the block is left, in
case one did anyway. Signals reach only the main thread: anywhere else the block runs
unbounded.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

# After the first alarm, how often it rings again while the block has not ended.
_REPEAT = 0.2


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
            try:
                signal.setitimer(signal.ITIMER_REAL, self.seconds, _REPEAT)
                return self
            except BaseException:  # it rang before the block began: the block never runs
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        global _running
        if not self._armed:
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:  # an alarm already on its way may still ring here: it finds the block left
            _running, self._armed = None, False


_running: TimeLimit | None = None  # the block being timed, if any


def _ring(signum: int, frame: FrameType | None) -> None:
    limit = _running
    if limit is not None:
        raise Overtime(f"over {limit.seconds:g} s")
