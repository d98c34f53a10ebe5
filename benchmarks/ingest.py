"""Ingest benchmark: messages/s accepted over SMTP by listbridge's real handler, against the
same machine's aiosmtpd Controller with a handler that does nothing.

    python benchmarks/ingest.py                      # 7 rounds of 2,000 messages, 4 clients, SQLite
    python benchmarks/ingest.py --rounds 5 --database-url postgresql+psycopg://…
    python benchmarks/ingest.py --null-uvloop        # the null handler on uvloop, as listbridge

Each client is its own process (so clients do not compete with the server for its GIL) and
reuses one connection. Mail to the bare list address is stored as a held message, committed
before the 250 (SQLite synchronous=FULL, as shipped). The null handler and listbridge run in
turns, round after round, each going first in every other round, and the median of the
per-round ratios is reported: the machine's speed drifts by tens of percent from one minute to
the next, and each ratio compares two runs a few seconds apart. CPU ms per message is the
server's own (for listbridge, both of its processes).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import smtplib
import statistics
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from common import LIST, free_port, fresh_database, make_settings, postgres_cpu_seconds, process_cpu_seconds
from sqlalchemy import func, select

from listbridge.db import Database
from listbridge.inbound.server import new_event_loop
from listbridge.models import Comment
from listbridge.service import Service

BODY = "Merci pour ce billet, et pour le récit de la panne.\n" * 30


def message(client: int, n: int) -> bytes:
    """One realistic comment (~1.5 kB) to the bare list address."""
    msg = EmailMessage()
    msg["From"] = f"Reader {client} <reader{client}@example.net>"
    msg["To"] = LIST
    msg["Subject"] = "Re: Comment les 3hg ont réparé le CHATONS"
    msg["Message-ID"] = f"<{client}.{n}.{time.time_ns()}@example.net>"
    msg.set_content(BODY)
    return msg.as_bytes(policy=SMTP)


def client(port: int, index: int, count: int, start: Any, done: Any) -> None:
    """Send `count` messages over one connection once every client is ready (`start`, a
    barrier); report via `done`."""
    messages = [message(index, n) for n in range(count)]
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo()
        start.wait()
        refused = 0
        for data in messages:
            try:
                smtp.sendmail(f"reader{index}@example.net", [LIST], data)
            except smtplib.SMTPException:
                refused += 1
    done.put(refused)


def measure(port: int, clients: int, total: int) -> tuple[float, int]:
    """Seconds for `clients` processes to send `total` messages; and how many were refused."""
    ctx = mp.get_context("fork")
    # The clock starts once every client has built its messages and connected: building 500
    # messages takes about a second, and a fixed sleep let that work into the measurement.
    start, done = ctx.Barrier(clients + 1), ctx.Queue()
    per = total // clients
    procs = [ctx.Process(target=client, args=(port, i, per, start, done)) for i in range(clients)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    t0 = time.perf_counter()
    refused = sum(done.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    return elapsed, refused


class NullHandler:
    """Accepts everything, stores nothing."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def run_null(clients: int, total: int, uvloop: bool = False) -> tuple[float, float]:
    """Messages/s accepted by a do-nothing aiosmtpd Controller, and its CPU ms per message.
    With `uvloop`, the Controller runs on the event loop listbridge's receiver uses."""
    port = free_port()
    loop = new_event_loop() if uvloop else None
    controller = Controller(NullHandler(), hostname="127.0.0.1", port=port, loop=loop)
    controller.start()
    try:
        cpu0 = cpu_seconds()
        elapsed, refused = measure(port, clients, total)
        cpu = cpu_seconds() - cpu0
    finally:
        controller.stop()
    assert refused == 0, f"the null handler refused {refused} messages"
    return total / elapsed, cpu / total * 1000


def run_listbridge(url: str | None, workdir: Path, clients: int, total: int) -> tuple[float, float, float]:
    """Messages/s accepted (and committed) by listbridge's Service, its CPU ms per message (this
    process and its store process), and PostgreSQL's CPU ms per message (0 on SQLite)."""
    url = fresh_database(url, workdir)
    db = Database(url)
    # The relay is never used here: held messages send nothing.
    service = Service(make_settings(url, free_port()), db=db)
    service.start()
    try:
        store_pid = service.store.pid
        assert store_pid is not None
        store = process_cpu_seconds(store_pid)
        cpu0, pg0 = cpu_seconds(), postgres_cpu_seconds()
        elapsed, refused = measure(service.settings.smtp.port, clients, total)
        cpu = cpu_seconds() - cpu0 + process_cpu_seconds(store_pid) - store
        pg = postgres_cpu_seconds() - pg0
        with db.transaction() as session:
            held = session.scalar(select(func.count()).select_from(Comment))
    finally:
        service.stop()
        db.dispose()
    assert refused == 0 and held == total, f"refused {refused}, held {held} of {total}"
    return total / elapsed, cpu / total * 1000, (pg / total * 1000 if url.startswith("postgresql") else 0.0)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (default 2,000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent SMTP clients (default 4)")
    parser.add_argument("--rounds", type=int, default=7, help="null/listbridge pairs (default 7)")
    parser.add_argument("--database-url", default="", help="e.g. postgresql+psycopg://postgres@127.0.0.1/lb_b")
    parser.add_argument(
        "--null-uvloop", action="store_true", help="run the null handler on uvloop too (the default is stock aiosmtpd)"
    )
    args = parser.parse_args()
    total = args.messages - args.messages % args.clients
    backend = "PostgreSQL" if args.database_url else "SQLite"
    ratios = []
    with tempfile.TemporaryDirectory(prefix="listbridge-ingest-") as tmp:
        for round_ in range(1, args.rounds + 1):
            # Which runs first alternates, so that a drift or an after-effect of the previous
            # run (a checkpoint, a cold cache) does not always fall on the same side.
            if round_ % 2:
                null, null_cpu = run_null(args.clients, total, args.null_uvloop)
                lb, lb_cpu, pg_cpu = run_listbridge(args.database_url or None, Path(tmp), args.clients, total)
            else:
                lb, lb_cpu, pg_cpu = run_listbridge(args.database_url or None, Path(tmp), args.clients, total)
                null, null_cpu = run_null(args.clients, total, args.null_uvloop)
            postgres = f" + PostgreSQL {pg_cpu:.2f}" if pg_cpu else ""
            ratios.append(lb / null)
            print(
                f"round {round_}: aiosmtpd null{' (uvloop)' if args.null_uvloop else ''} "
                f"{null:6,.0f} msg/s ({null_cpu:.2f} ms CPU/msg)  "
                f"listbridge ({backend}) {lb:6,.0f} msg/s ({lb_cpu:.2f}{postgres} ms CPU/msg)  ratio {lb / null:.0%}",
                flush=True,
            )
    print(f"median ratio {statistics.median(ratios):.0%} over {len(ratios)} rounds", flush=True)


if __name__ == "__main__":
    main()
