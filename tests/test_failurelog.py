"""A database that stays down fills the log with one line per failure, and one traceback."""

from __future__ import annotations

import logging
import threading

from listbridge.db import Database
from listbridge.outbound import delivery

from helpers import free_port, wait_for


def test_workers_facing_a_down_database_log_one_traceback(make_settings, caplog):
    settings = make_settings(relay={"connections": 2})
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")  # nobody listens there
    caplog.set_level(logging.INFO, logger="listbridge")
    stop, wakeup = threading.Event(), threading.Event()
    threads = delivery.run_workers(db, settings, stop, wakeup)

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "listbridge.outbound.delivery" and r.levelno == logging.ERROR]

    try:
        wait_for(lambda: len(failures()) >= 4, timeout=30)  # each worker fails about once a second
    finally:
        stop.set()
    wakeup.set()
    for thread in threads:
        thread.join(10)
    db.dispose()
    records = failures()
    assert sum(1 for r in records if r.exc_info) == 1
    assert all("Connection refused" in r.getMessage() for r in records), records[0].getMessage()
    assert all("\n" not in r.getMessage() for r in records)


def test_a_new_failure_gets_its_traceback_and_recovery_is_said_once(caplog):
    from listbridge.failurelog import FailureLog

    caplog.set_level(logging.INFO)
    failures = FailureLog(logging.getLogger("t"), "work failed", "work works again")
    for exc in (OSError("disk full"), OSError("disk full"), ValueError("bad"), ValueError("bad")):
        failures.failed(exc)
    failures.succeeded()
    failures.succeeded()
    records = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records]
    assert records == [
        ("ERROR", "work failed: disk full", True),
        ("ERROR", "work failed (again): disk full", False),
        ("ERROR", "work failed: bad", True),
        ("ERROR", "work failed (again): bad", False),
        ("INFO", "work works again", False),
    ]
