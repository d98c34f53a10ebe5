"""Fan-out benchmark: one list mail to N confirmed subscribers, delivered by the real outbox
workers to Postfix's smtp-sink on loopback.

    python benchmarks/fanout.py                 # N = 10,000 and 100,000, both modes, SQLite
    python benchmarks/fanout.py 20000 --mode batched --database-url postgresql+psycopg://…
    python benchmarks/fanout.py --mlmmj         # also time mlmmj-send against the same sink

Delivery runs in a child process, so its peak RSS is the delivering process's own. Every
recipient must end up delivered exactly once: all outbox rows 'sent' after one attempt, and
the sink's dump (smtp-sink -D, on /dev/shm) holding every address once and no other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import LIST, SmtpSink, fresh_database, make_settings, postgres_cpu_seconds
from sqlalchemy import func, insert, select

from listbridge.addresses import new_token
from listbridge.db import Database
from listbridge.models import OutboxRecipient, Subscriber, utcnow
from listbridge.outbound import delivery, outbox
from listbridge.outbound.compose import build

DOMAINS = 50
BODY = "Un commentaire sur le billet, assez long pour ressembler à du vrai courrier.\n" * 25


def add_subscribers(db: Database, n: int, chunk: int = 10_000) -> None:
    """Insert n confirmed subscribers spread over DOMAINS domains, in bulk."""
    now = utcnow()
    with db.transaction() as session:
        for start in range(0, n, chunk):
            rows = []
            for i in range(start, min(n, start + chunk)):
                domain = f"d{i % DOMAINS}.example"
                rows.append(
                    {
                        "list_address": LIST,
                        "address": f"reader{i}@{domain}",
                        "domain": domain,
                        "display_name": "",
                        "token": new_token(),
                        "subscribed_at": now,
                    }
                )
            session.execute(insert(Subscriber), rows)


def enqueue(db: Database, relay_port: int) -> int:
    """Store one list mail for every subscriber; the number of recipient rows."""
    settings = make_settings(db.url, relay_port)
    mlist = settings.lists[0]
    body = build(mlist, "+", subject="[bla] Comment les 3hg ont réparé le CHATONS", body=BODY, sender=LIST)
    with db.transaction() as session:
        _, count = outbox.enqueue_fanout(
            session,
            list_address=LIST,
            kind="list",
            envelope_from="bla+bounces@bla.example.org",
            body=body,
            retry_days=5,
        )
    return count


def deliver_child(url: str, port: int, personalize: bool, connections: int) -> None:
    """In the child process: deliver everything queued, print elapsed seconds as JSON."""
    settings = make_settings(url, port, personalize=personalize, connections=connections)
    db = Database(url)
    start = time.perf_counter()
    delivery.flush(db, settings)
    elapsed = time.perf_counter() - start
    db.dispose()
    print(json.dumps({"elapsed": elapsed, "peak_rss_kb": peak_rss_kb()}))


def peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM: unlike a child's ru_maxrss, not inherited from the
    parent that spawned it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_listbridge(
    url: str | None, workdir: Path, n: int, personalize: bool, connections: int, dump: bool
) -> dict[str, object]:
    """One measured run; returns the figures. With `dump`, the sink records every recipient."""
    url = fresh_database(url, workdir)
    db = Database(url)
    t0 = time.perf_counter()
    add_subscribers(db, n)
    t1 = time.perf_counter()
    dump_dir = Path(tempfile.mkdtemp(prefix="listbridge-sink-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    os.chmod(dump_dir, 0o777)  # smtp-sink writes as nobody when run as root
    sink = SmtpSink(dump_dir / "dump" if dump else None)
    count = enqueue(db, sink.port)
    t2 = time.perf_counter()
    pg_cpu = postgres_cpu_seconds()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", url, str(sink.port), str(int(personalize)), str(connections)],
        stdout=subprocess.PIPE,
    )
    out = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    pg_cpu = postgres_cpu_seconds() - pg_cpu
    child.returncode = os.waitstatus_to_exitcode(status)
    sink_cpu = sink.cpu_seconds()
    received = sink.stop()
    addresses = sink.recipients()
    shutil.rmtree(dump_dir, ignore_errors=True)
    if child.returncode != 0:
        raise SystemExit(f"delivery child failed with exit code {child.returncode}")
    figures = json.loads(out)
    elapsed = figures["elapsed"]
    with db.transaction() as session:
        states = dict(
            session.execute(select(OutboxRecipient.state, func.count()).group_by(OutboxRecipient.state)).all()
        )
        retried = session.scalar(select(func.count()).select_from(OutboxRecipient).where(OutboxRecipient.attempts > 0))
    db.dispose()
    unique = len(set(addresses))
    ok = states == {"sent": n} and count == n and not retried
    if dump:
        ok = ok and len(addresses) == unique == n
    else:  # personalised: one recipient per message, so the message counter must say n
        ok = ok and personalize and received == n
    return {
        "n": n,
        "mode": "personalised" if personalize else "batched",
        "subscribers_s": round(t1 - t0, 2),
        "enqueue_s": round(t2 - t1, 2),
        "deliver_s": round(elapsed, 2),
        "recipients_per_s": round(n / elapsed),
        "peak_rss_mb": round(figures["peak_rss_kb"] / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "sink_cpu_s": round(sink_cpu, 2),
        "postgres_cpu_s": round(pg_cpu, 2) if url.startswith("postgresql") else None,
        "sink_messages": received,
        "sink_recipients": len(addresses),
        "sink_unique_recipients": unique,
        "states": states,
        "exactly_once": ok,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, port, personal, connections = sys.argv[2:6]
        deliver_child(url, int(port), personal == "1", int(connections))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000], help="subscriber counts")
    parser.add_argument("--mode", choices=["personalised", "batched", "both"], default="both")
    parser.add_argument("--database-url", default="", help="e.g. postgresql+psycopg://postgres@127.0.0.1/lb_b")
    parser.add_argument("--connections", type=int, default=4, help="[relay] connections (default 4)")
    parser.add_argument(
        "--dump",
        choices=["batched", "always", "never"],
        default="batched",
        help="have smtp-sink dump transactions to count each recipient (default: batched mode only;"
        " personalised mode is checked by its message count, since dumping doubles the sink's CPU)",
    )
    parser.add_argument("--mlmmj", action="store_true", help="also time mlmmj-send against the same sink")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args()
    modes = [True, False] if args.mode == "both" else [args.mode == "personalised"]
    failed = False
    with tempfile.TemporaryDirectory(prefix="listbridge-bench-") as tmp:
        workdir = Path(tmp)
        backend = "postgresql" if args.database_url else "sqlite"
        for n in args.sizes:
            for personalize in modes:
                dump = args.dump == "always" or (args.dump == "batched" and not personalize)
                r = run_listbridge(args.database_url or None, workdir, n, personalize, args.connections, dump)
                failed |= not r["exactly_once"]
                report(r, backend, args.json)
                if args.mlmmj:
                    from mlmmj import run_mlmmj  # local helper, only when asked

                    report(run_mlmmj(workdir, n, personalize), "mlmmj", args.json)
    sys.exit(1 if failed else 0)


def report(r: dict[str, object], backend: str, as_json: bool) -> None:
    """Print one run's figures."""
    if as_json:
        print(json.dumps({"backend": backend, **r}), flush=True)
        return
    recipients = f", {r['sink_recipients']:,} recipients" if r.get("sink_recipients") else ""
    postgres = f" + PostgreSQL {r['postgres_cpu_s']} s" if r.get("postgres_cpu_s") is not None else ""
    check = "" if "exactly_once" not in r else ("  exactly once: OK" if r["exactly_once"] else f"  CHECK FAILED {r}")
    print(
        f"{backend:10} {r['mode']:12} N={r['n']:>7,}  {r['recipients_per_s']:>7,} recipients/s"
        f"  peak RSS {r['peak_rss_mb']:6.1f} MB  (deliver {r['deliver_s']} s, CPU {r['cpu_s']} s + sink"
        f" {r['sink_cpu_s']} s{postgres}; sink got"
        f" {r['sink_messages']:,} messages{recipients}){check}",
        flush=True,
    )


if __name__ == "__main__":
    main()
