"""PostgreSQL: BEGIN and the first statement of a transaction in one round trip.

psycopg opens a transaction with a BEGIN of its own, sent and waited for before the first
statement: for the store process, whose transactions are one multi-row INSERT and a COMMIT,
that is one round trip in three. Here BEGIN and the statement go out together in libpq's
pipeline mode, with one Sync, and the statement runs as a prepared statement (as psycopg's own
would after a few runs). The transaction stays open: COMMIT is still the caller's, so a
process killed before it leaves nothing behind. psycopg reads the transaction state from libpq
itself, so it then sees a transaction under way and sends no BEGIN of its own.
"""

from __future__ import annotations

import functools
import re
import select
import weakref
from typing import Any, Mapping

_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%")
# Per libpq connection: (SQL, parameter types) -> the name of its prepared statement.
_PREPARED: "weakref.WeakKeyDictionary[Any, dict[tuple[bytes, tuple[int, ...]], bytes]]" = weakref.WeakKeyDictionary()


def can_begin(dbapi_connection: Any) -> bool:
    """True for a psycopg connection with no transaction open and no pipeline of its own."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is None or getattr(dbapi_connection, "autocommit", True):
        return False
    from psycopg import pq

    return bool(
        pgconn.transaction_status == pq.TransactionStatus.IDLE and pgconn.pipeline_status == pq.PipelineStatus.OFF
    )


@functools.lru_cache(maxsize=64)
def numbered(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """`sql` with psycopg's %(name)s placeholders as $1, $2…; and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        names.append(match.group(1))
        return f"${len(names)}"

    return _PLACEHOLDER.sub(number, sql).encode(), tuple(names)


def begin_and_execute(dbapi_connection: Any, sql: str, params: Mapping[str, object]) -> None:
    """BEGIN, then `sql` (psycopg's %(name)s style, as SQLAlchemy compiles it) with `params`,
    in one round trip; the transaction is left open. Raises psycopg's own errors, as
    cursor.execute() would."""
    from psycopg import errors, pq
    from psycopg.adapt import PyFormat, Transformer

    query, names = numbered(sql)
    transformer = Transformer(dbapi_connection)
    values = transformer.dump_sequence([params[n] for n in names], [PyFormat.AUTO] * len(names))
    types = tuple(transformer.types)
    pgconn = dbapi_connection.pgconn
    prepared = _PREPARED.setdefault(pgconn, {})
    name = prepared.get((query, types))
    new_name = b"listbridge_%d" % len(prepared) if name is None else None
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(b"BEGIN", None)
        if new_name is not None:
            pgconn.send_prepare(new_name, query, types)
        pgconn.send_query_prepared(name or new_name, values, transformer.formats)
        pgconn.pipeline_sync()
        results = _communicate(pgconn)
    finally:
        if pgconn.pipeline_status != pq.PipelineStatus.OFF:
            try:
                pgconn.exit_pipeline_mode()
            except errors.OperationalError:  # results left unread: the connection is broken
                pass
    if new_name is not None and results[1].status == pq.ExecStatus.COMMAND_OK:
        prepared[(query, types)] = new_name  # the server keeps it even if the INSERT failed
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise errors.error_from_result(result, encoding=dbapi_connection.info.encoding)


def _communicate(pgconn: Any) -> list[Any]:
    """Send what is queued and read every result up to the pipeline's Sync."""
    from psycopg import pq

    while pgconn.flush():
        _wait(pgconn.socket, write=True)
    results = []
    while True:
        while pgconn.is_busy():
            _wait(pgconn.socket, write=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:  # the end of one statement's results
            continue
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        results.append(result)


def _wait(fd: int, write: bool) -> None:
    """Block until `fd` can be written (or read)."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poll = select.poll()
        poll.register(fd, select.POLLOUT if write else select.POLLIN)
        poll.poll()
    else:  # pragma: no cover - Windows
        select.select([], [fd], []) if write else select.select([fd], [], [])
