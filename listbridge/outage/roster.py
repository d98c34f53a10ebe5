"""The roster snapshot: confirmed subscribers whose delivery is on, with their names and own unsubscribe tokens,
copied from the home instance to the watcher so it can reach everyone while home is down.

The snapshot is a small SQLite file, written atomically (temp file, fsync, rename). Its
export time doubles as a heartbeat of the home instance.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from listbridge.lists.subscriptions import token_digest
from listbridge.models import RosterImport, SpentToken, Subscriber, utcnow

FORMAT = "listbridge-roster-1"
_BATCH = 5000


class RosterError(Exception):
    """The snapshot is missing, unreadable or not a listbridge roster."""


@dataclass(frozen=True)
class Snapshot:
    exported_at: dt.datetime
    subscribers: int
    lists: tuple[str, ...]


def export(session: Session, path: str | Path) -> Snapshot:
    """Write every confirmed subscriber to `path`, atomically; streams, whatever the size."""
    target = Path(path)
    if target.is_dir():
        raise RosterError(f"{path} is a directory: give the roster's file name, such as {target / 'roster.sqlite3'}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".roster-", suffix=".tmp")
    os.close(fd)
    exported_at = utcnow()  # to the microsecond: two exports in one second are told apart
    count, lists = 0, set[str]()
    try:
        out = sqlite3.connect(temp)
        out.executescript(
            "PRAGMA journal_mode=DELETE;"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE subscribers (list_address TEXT NOT NULL, address TEXT NOT NULL,"
            " display_name TEXT NOT NULL, token TEXT NOT NULL, subscribed_at TEXT NOT NULL);"
        )
        rows = session.execute(
            select(
                Subscriber.list_address,
                Subscriber.address,
                Subscriber.display_name,
                Subscriber.token,
                Subscriber.subscribed_at,
            )
            .where(Subscriber.disabled_at.is_(None))  # turned off by bounces: a dead address
            .order_by(Subscriber.id)
            .execution_options(yield_per=_BATCH)
        )
        for chunk in rows.partitions(_BATCH):
            out.executemany(
                "INSERT INTO subscribers VALUES (?, ?, ?, ?, ?)",
                [(r[0], r[1], r[2], r[3], r[4].isoformat()) for r in chunk],
            )
            count += len(chunk)
            lists.update(r[0] for r in chunk)
        out.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", FORMAT), ("exported_at", exported_at.isoformat()), ("subscribers", str(count))],
        )
        out.commit()
        out.close()
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return Snapshot(exported_at, count, tuple(sorted(lists)))


def read_meta(path: str | Path) -> Snapshot:
    """The snapshot's export time and size, without loading it."""
    conn = _open(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        lists = tuple(r[0] for r in conn.execute("SELECT DISTINCT list_address FROM subscribers ORDER BY 1"))
    except sqlite3.Error as exc:
        raise RosterError(f"{path} is not a listbridge roster ({exc}).") from None
    finally:
        conn.close()
    if meta.get("format") != FORMAT:
        raise RosterError(f"{path} is not a listbridge roster (format {meta.get('format')!r}).")
    return Snapshot(dt.datetime.fromisoformat(meta["exported_at"]), int(meta["subscribers"]), lists)


def import_(session: Session, path: str | Path) -> Snapshot:
    """Replace the subscribers of the snapshot's lists with its content, in one transaction."""
    snapshot = read_meta(path)
    conn = _open(path)
    try:
        session.execute(delete(Subscriber).where(Subscriber.list_address.in_(snapshot.lists)))
        # Those who left through the watcher's one-click: home may not have heard yet.
        left = set(session.scalars(select(SpentToken.digest)))
        cursor = conn.execute("SELECT list_address, address, display_name, token, subscribed_at FROM subscribers")
        while chunk := cursor.fetchmany(_BATCH):
            rows = [row for row in chunk if not left or token_digest(row[3]) not in left]
            if not rows:
                continue
            session.execute(
                insert(Subscriber),
                [
                    {
                        "list_address": la,
                        "address": a,
                        "domain": a.rpartition("@")[2],
                        "display_name": n,
                        "token": t,
                        "subscribed_at": dt.datetime.fromisoformat(s),
                    }
                    for la, a, n, t, s in rows
                ],
            )
    finally:
        conn.close()
    session.add(RosterImport(source=str(path), exported_at=snapshot.exported_at, subscribers=snapshot.subscribers))
    return snapshot


def is_imported(session: Session, snapshot: Snapshot) -> bool:
    """True when the newest import was this very export (same time and count): a watcher
    started again, or `watch --once` from cron, then has nothing to read."""
    last = last_import(session)
    return last is not None and (last.exported_at, last.subscribers) == (snapshot.exported_at, snapshot.subscribers)


def last_import(session: Session) -> RosterImport | None:
    return session.scalars(select(RosterImport).order_by(RosterImport.id.desc()).limit(1)).first()


def _open(path: str | Path) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise RosterError(f"roster {path} does not exist.")
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
