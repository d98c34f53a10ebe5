"""Helpers shared by the benchmarks: free ports, smtp-sink, settings and fresh databases."""

from __future__ import annotations

import mmap
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from listbridge.config import Settings, build_settings
from listbridge.db import Database

LIST = "bla@bla.example.org"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _cpu_seconds(stat: str, children: bool = False) -> float:
    """From a /proc/PID/stat text: user + system CPU time, and with `children`, that of the
    children it has reaped too (utime, stime, cutime, cstime, after the command name)."""
    fields = stat.rpartition(")")[2].split()
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` has used so far (from /proc)."""
    return _cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def postgres_cpu_seconds() -> float:
    """CPU time used so far by PostgreSQL on this machine: the database's share of a run, which
    the client's own figures do not show. A backend that has ended counts in its parent's
    children's time, so both are summed."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        if text.partition(" (")[2].startswith("postgres)"):
            total += _cpu_seconds(text, children=True)
    return total


class SmtpSink:
    """Postfix's smtp-sink on a loopback port, counting messages (`-c`); with `dump`, every
    transaction is also appended to that file (`-D`), to count recipients."""

    def __init__(self, dump: Path | None = None) -> None:
        self.port = free_port()
        self.output = tempfile.TemporaryFile()  # noqa: SIM115  (read and closed in stop())
        self.dump = dump
        args = [SMTP_SINK, "-c"]
        if dump is not None:
            args += ["-D", str(dump)]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # smtp-sink refuses to run as root
        args += [f"127.0.0.1:{self.port}", "1000"]
        self.process = subprocess.Popen(args, stdout=self.output, stderr=subprocess.STDOUT)
        wait_listening(self.port)

    def cpu_seconds(self) -> float:
        """User + system CPU time the sink has used so far."""
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> int:
        """Stop the sink; the number of messages it received (its last `mesg=` counter)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)
        self.output.seek(0)
        counters = re.findall(rb"mesg=(\d+)", self.output.read())
        self.output.close()
        return int(counters[-1]) if counters else 0

    def recipients(self) -> list[bytes]:
        """Every RCPT TO address the sink received (needs `dump`), in order."""
        if self.dump is None or not self.dump.exists():
            return []
        with open(self.dump, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return re.findall(rb"^X-Rcpt-Args: <([^>]*)>", data, re.M)


def make_settings(db_url: str, relay_port: int, **relay: Any) -> Settings:
    """Settings with one list, the given database and relay port, and no real site."""
    return build_settings(
        {
            "database": {"url": db_url},
            "smtp": {"host": "127.0.0.1", "port": free_port()},
            "relay": {"host": "127.0.0.1", "port": relay_port, "timeout": 30, **relay},
            "site": {"repo": str(Path(tempfile.gettempdir()) / "listbridge-bench-site")},
            "lists": [{"address": LIST, "title": "bla", "owner": "owner@example.org", "language": "en"}],
        }
    )


def fresh_database(url: str | None, workdir: Path) -> str:
    """An empty, upgraded database: a SQLite file in `workdir`, or `url` with its schema reset."""
    if not url:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    else:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url
