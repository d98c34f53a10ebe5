"""Failures that repeat, logged without flooding: the traceback the first time, one line after.

A database that is down for an hour makes every worker fail every second; the same traceback
thousands of times hides the one line that says what broke and when it came back.
"""

from __future__ import annotations

import logging
import threading


class FailureLog:
    """One background loop's failures (shared by its threads): `failed()` logs the traceback of
    a failure unlike the last one, and one line for a repeat; `succeeded()` ends the run, and
    says so when there was one."""

    def __init__(self, logger: logging.Logger, message: str, recovered: str) -> None:
        self.logger = logger
        self.message = message
        self.recovered = recovered
        self._lock = threading.Lock()
        self._last: tuple[type[BaseException], str] | None = None

    def failed(self, exc: BaseException) -> None:
        key = (type(exc), summary(exc))
        with self._lock:
            repeat = key == self._last
            self._last = key
        if repeat:
            self.logger.error("%s (again): %s", self.message, key[1])
        else:
            self.logger.error("%s: %s", self.message, key[1], exc_info=exc)

    def succeeded(self) -> None:
        with self._lock:
            was, self._last = self._last, None
        if was is not None:
            self.logger.info("%s", self.recovered)


def summary(exc: BaseException) -> str:
    """The first line of an error, for a log line or a user: what the driver error inside says
    when SQLAlchemy wraps one; what follows (git's advice, SQL) is for a terminal."""
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    return lines[0].strip() if lines else type(inner).__name__
