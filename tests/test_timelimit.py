"""TimeLimit: Overtime inside the block once its time is up, and no timer left behind, even
when the alarm rings while the block is being entered."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest

from listbridge.inbound import timelimit
from listbridge.inbound.timelimit import Overtime, TimeLimit


def test_a_block_past_its_time_gets_overtime_and_leaves_no_timer():
    started = time.monotonic()
    with pytest.raises(Overtime), TimeLimit(0.05):
        while True:
            pass
    assert time.monotonic() - started < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and timelimit._running is None


@pytest.mark.parametrize("seconds", [0.0005, 0.00002])
def test_an_alarm_that_rings_on_entry_or_exit_leaves_no_timer(seconds):
    """Limits so short that the alarm often rings while the block is entered or left."""
    for _ in range(20_000):
        with contextlib.suppress(Overtime), TimeLimit(seconds):
            pass
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and timelimit._running is None
    time.sleep(0.5)  # a timer left behind would ring here, and fail the test


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one
def test_an_overtime_dropped_by_a_destructor_rings_again():
    """Python drops what a __del__ raises (and a gc callback, as hypothesis installs): the
    block must still be stopped."""

    class Slow:
        def __del__(self) -> None:
            time.sleep(0.2)  # the alarm rings in here, and its Overtime is dropped

    started = time.monotonic()
    with pytest.raises(Overtime), TimeLimit(0.05):
        Slow()
        while time.monotonic() - started < 3:
            pass
        pytest.fail("the block ran on past its time")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and timelimit._running is None
