"""mlmmj-send against the same smtp-sink, for comparison with listbridge's fan-out.

    python benchmarks/fanout.py 10000 --mlmmj            # listbridge, then mlmmj, same N and mode
    MLMMJ_QUICKACK=1 python benchmarks/fanout.py --mlmmj # personalised mlmmj without the delayed-ACK stall

`run_mlmmj(workdir, n, personalize)` writes an mlmmj 1.3 list directory by hand (mlmmj-make-ml is
interactive), subscribes `reader{i}@d{i % 50}.example` in subscribers.d/r, points the list at
smtp-sink (control/relayhost, control/smtpport) and times one `mlmmj-send -L list -m mail` in the
foreground (mlmmj-send never daemonises; it archives the mail to archive/1 when done).

- personalised: no control/verp, so mlmmj sends one transaction per recipient, with its own
  VERP return path `bla+bounces-1-reader0=d0.example@…`, 100 recipients per connection.
- batched: control/verp = "postfix" (MAIL FROM … XVERP=-=, smtp-sink ignores it) and
  control/maxverprecips = 100, so one transaction carries up to 100 RCPT TO.

mlmmj writes a message as three small writes (headers, body, final dot). With Nagle on its side
and delayed ACK on the sink's, every message waits ~40 ms, so personalised mode runs at ~25
messages/s. At default kernel settings, a personalised run therefore sends to the first
`cap` (500) subscribers only, and says so in "note". With `quickack=True` (or MLMMJ_QUICKACK=1)
the loopback routes in table local get `quickack 1` for the run, and are restored afterwards.
That applies to all loopback TCP on the machine, not only to this benchmark.

Peak RSS comes from GNU time's %M. mlmmj-send is started through /usr/bin/time because a child
that Python forks and execs inherits the Python process's RSS high-water mark in ru_maxrss.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from common import LIST, SmtpSink

MLMMJ_SEND = "/usr/bin/mlmmj-send"  # mlmmj binaries refuse to run unless invoked by full path
GNU_TIME = "/usr/bin/time"
BATCH = 100  # control/maxverprecips in batched mode (also mlmmj's connection size otherwise)
DEFAULT_KERNEL_CAP = 500  # recipients timed in personalised mode with the delayed-ACK stall


def run_mlmmj(
    workdir: Path,
    n: int,
    personalize: bool,
    quickack: bool | None = None,
    dump: bool | None = None,
    cap: int = DEFAULT_KERNEL_CAP,
) -> dict[str, object]:
    """Deliver one list mail to n subscribers with mlmmj-send; the figures, keyed like fanout.py's.

    `quickack` (default: env MLMMJ_QUICKACK=1) removes loopback's delayed ACK for the run. Without
    it, a personalised run is capped at `cap` recipients. `dump` (default: batched mode only)
    makes the sink record every recipient, to check each address arrived exactly once.
    """
    from fanout import BODY, DOMAINS  # here, not at the top: fanout.py imports this module

    if quickack is None:
        quickack = os.environ.get("MLMMJ_QUICKACK", "") not in ("", "0")
    if dump is None:
        dump = not personalize
    count = min(n, cap) if personalize and not quickack else n
    listdir = Path(tempfile.mkdtemp(prefix="mlmmj-", dir=workdir))
    dump_dir = Path(tempfile.mkdtemp(prefix="mlmmj-sink-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    os.chmod(dump_dir, 0o777)  # smtp-sink writes as nobody when run as root
    sink = SmtpSink(dump_dir / "dump" if dump else None)
    try:
        addresses = [f"reader{i}@d{i % DOMAINS}.example" for i in range(count)]
        mail = make_list(listdir, sink.port, addresses, personalize, BODY)
        size = mail.stat().st_size
        with loopback_quickack() if quickack else nullcontext():
            elapsed, usage, peak_kb = send(listdir, mail)
        sink_cpu = sink.cpu_seconds()
        received = sink.stop()
        seen = sink.recipients()
        requeued = sorted(str(p.relative_to(listdir)) for p in (listdir / "requeue").rglob("*") if p.is_file())
    finally:
        if sink.process.poll() is None:
            sink.stop()
        shutil.rmtree(dump_dir, ignore_errors=True)
        shutil.rmtree(listdir, ignore_errors=True)
    unique = set(seen)
    expected_messages = count if personalize else -(-count // BATCH)
    ok = not requeued and received == expected_messages
    if dump:
        ok = ok and len(seen) == len(unique) == count and unique == {a.encode() for a in addresses}
    result: dict[str, object] = {
        "n": count,
        "mode": "personalised" if personalize else "batched",
        "quickack": quickack,
        "message_bytes": size,
        "deliver_s": round(elapsed, 2),
        "recipients_per_s": round(count / elapsed),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "sink_cpu_s": round(sink_cpu, 2),
        "sink_messages": received,
        "sink_recipients": len(seen),
        "sink_unique_recipients": len(unique),
        "requeued": requeued,
        "exactly_once": ok,
    }
    if count < n:
        result["requested_n"] = n
        result["note"] = (
            f"personalised mlmmj at default kernel settings stalls ~40 ms per message (delayed ACK):"
            f" timed the first {count:,} of {n:,} subscribers; run with quickack=True / MLMMJ_QUICKACK=1"
            f" for all of them"
        )
    return result


def make_list(listdir: Path, port: int, addresses: list[str], personalize: bool, body: str) -> Path:
    """Write the list directory mlmmj-make-ml would, plus subscribers and a queued mail; the mail's path."""
    for sub in [
        "incoming",
        "queue",
        "queue/discarded",
        "archive",
        "text",
        "subconf",
        "unsubconf",
        "bounce",
        "control",
        "moderation",
        "subscribers.d",
        "digesters.d",
        "requeue",
        "nomailsubs.d",
    ]:
        (listdir / sub).mkdir(parents=True, exist_ok=True)
    (listdir / "index").touch()
    control = {"listaddress": LIST, "owner": "owner@example.org", "relayhost": "127.0.0.1", "smtpport": str(port)}
    if not personalize:
        control |= {"verp": "postfix", "maxverprecips": str(BATCH)}
    for name, value in control.items():
        (listdir / "control" / name).write_text(value + "\n")
    by_letter: dict[str, list[str]] = {}
    for address in addresses:  # mlmmj-sub files each address under its first character
        by_letter.setdefault(address[0], []).append(address)
    for letter, group in by_letter.items():
        (listdir / "subscribers.d" / letter).write_text("".join(a + "\n" for a in group))
    msg = EmailMessage()
    msg["From"] = "Lecteur <lecteur@example.net>"
    msg["To"] = LIST
    msg["Subject"] = "[bla] Comment les 3hg ont réparé le CHATONS"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="example.net")
    msg["List-Id"] = "<bla.bla.example.org>"
    msg.set_content(body)
    mail = listdir / "queue" / "mail"
    mail.write_bytes(msg.as_bytes())
    return mail


def send(listdir: Path, mail: Path) -> tuple[float, resource.struct_rusage, int]:
    """Run mlmmj-send once in the foreground: seconds, its rusage, its peak RSS in kB."""
    rss_file = listdir / "time.out"
    log = listdir / "mlmmj-send.log"
    with open(log, "wb") as out:
        start = time.perf_counter()
        child = subprocess.Popen(
            [GNU_TIME, "-f", "%M", "-o", str(rss_file), MLMMJ_SEND, "-L", str(listdir), "-m", str(mail)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"mlmmj-send failed with exit code {child.returncode}: {log.read_text()[-2000:]}")
    return elapsed, usage, int(rss_file.read_text().split()[-1])


@contextmanager
def loopback_quickack() -> Iterator[None]:
    """Set `quickack 1` on the loopback routes of table local; restore them exactly afterwards."""
    before = ip("route", "show", "table", "local")
    routes = [line.split() for line in before.splitlines() if re.match(r"local 127\.", line)]
    try:
        for route in routes:
            ip("route", "change", *route, "table", "local", "quickack", "1")
        yield
    finally:
        for route in routes:
            ip("route", "change", *route, "table", "local")
        after = ip("route", "show", "table", "local")
        if after != before:
            raise RuntimeError(f"loopback routes not restored:\nbefore:\n{before}after:\n{after}")


def ip(*args: str) -> str:
    """Run `ip` with these arguments; its output."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout
