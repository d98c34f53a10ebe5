"""Database edge: engine, sessions, transactions and schema upgrades (alembic)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    URL,
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Result,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    inspect,
    make_url,
    text,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from listbridge.resources import shipped_path

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The newest migration. Checked against alembic's own view by a test, so that the common
# "is the schema current?" question costs one query and no alembic import (deliver runs per mail).
SCHEMA_HEAD = "0009"

log = logging.getLogger(__name__)


class BadURL(ValueError):
    """The database URL names no database that can be opened; the message is the predicate of
    a sentence about the URL, which it never repeats (it may hold a password)."""


def make_engine(url: str, *, warn_exposed: bool = True) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and durable commits, and a file
    only its owner can read (it holds live tokens), with a warning for one that others can
    read unless `warn_exposed` is false. BadURL when `url` cannot be used."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        prepare_sqlite_file(parsed, warn_exposed=warn_exposed)
        engine = _create_engine(url, parsed, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a 250 means the mail survives a power cut, not only a crash.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Deleted rows are overwritten, not left in free pages: `forget` must leave no trace.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return _create_engine(url, parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise BadURL("is not a database URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)") from None


def _create_engine(url: str, parsed: URL, **options: Any) -> Engine:
    """create_engine, its errors said without the URL (it may hold a password)."""
    try:
        return create_engine(url, **options)
    except NoSuchModuleError:
        raise BadURL(f"names no known database, {parsed.drivername!r} (sqlite or postgresql+psycopg)") from None
    except ImportError as exc:
        raise BadURL(f"needs the {parsed.drivername} driver, which is not installed ({exc})") from None
    except (ArgumentError, TypeError, ValueError) as exc:
        raise BadURL(f"is refused by {parsed.drivername} ({exc})") from None


def prepare_sqlite_file(url: URL, *, warn_exposed: bool = True) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite then gives its -wal and
    -shm files the same mode), or log one line when an existing one is open to other users."""
    name = url.database or ""
    if not name or name == ":memory:" or name.startswith("file:") or url.query.get("mode") == "memory":
        return
    path = Path(name)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        if not warn_exposed:
            return
    exposed = [f for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if _others_may_read(f)]
    if exposed:
        mode = stat.S_IMODE(exposed[0].stat().st_mode)
        log.warning(
            "database %s can be read by other users (mode %03o) and holds live tokens: chmod 600 %s",
            exposed[0],
            mode,
            " ".join(map(str, exposed)),
        )


def _others_may_read(path: Path) -> bool:
    """Whether users other than the owner (its group included) may read the file `path`."""
    try:
        mode = path.stat().st_mode
        return stat.S_ISREG(mode) and bool(mode & (stat.S_IRGRP | stat.S_IROTH))
    except FileNotFoundError:
        return False


# What a transaction left for the background workers, noted on the session as it happens so
# that the receiver wakes the outbox or the site publisher only when there is work.
MAIL_QUEUED = "mail queued"
SITE_CHANGED = "site changed"
COMMENT_HELD = "comment held"  # its moderators are due a notice


def note_effect(session: Session, effect: str) -> None:
    """Record that this transaction queued mail or changed what the site shows."""
    session.info.setdefault("effects", set()).add(effect)


def effects(session: Session) -> frozenset[str]:
    """The effects noted on this session so far."""
    return frozenset(session.info.get("effects", ()))


def insert_new(session: Session, table: Any, values: Mapping[str, object]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING of one row (SQLite and PostgreSQL): True when this
    transaction inserted it. Of two at once, the second waits for the first and gets False,
    where a plain INSERT would fail its whole transaction on the key."""
    dialect = session.get_bind().dialect.name
    statement = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(table).values(dict(values))
    key = next(iter(inspect(table).primary_key))
    return session.execute(statement.on_conflict_do_nothing().returning(key)).first() is not None


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. Session.execute is typed to return a Result; for
    such a statement it is a CursorResult, the kind that counts rows."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"{type(result).__name__} has no row count: not an UPDATE or DELETE")
    return result.rowcount


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, *, warn_exposed: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, warn_exposed=warn_exposed)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pinned: Connection | None = None

    def checkpoint(self) -> bool:
        """SQLite: move the write-ahead log into the database file and empty it, so that what
        a transaction erased is not still in the log (after `forget`). False when a reader
        kept it from finishing (within the busy timeout); True on PostgreSQL, which has no
        such log to empty."""
        if self.engine.dialect.name != "sqlite":
            return True
        with self.engine.connect() as connection:
            busy, _, _ = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        return not busy

    def pin_connection(self) -> None:
        """Run this process's sessions on one connection kept open, for a process that commits
        small transactions one after another (the store process): no pool checkout and reset,
        nor PostgreSQL's pre-ping query, per transaction. A connection found dropped is
        replaced on its next use, after the transaction that found it is rolled back."""
        self._pinned = self.engine.connect()
        self.sessions = sessionmaker(self._pinned, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def upgrade(self, revision: str = "head") -> None:
        """Apply the alembic migrations up to `revision`."""
        from alembic import command

        with self.engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with self.engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)

    def is_current(self) -> bool:
        """True when the schema is at the newest migration."""
        try:
            with self.engine.connect() as connection:
                current = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except DBAPIError:  # no alembic_version table yet
            return False
        return current == [SCHEMA_HEAD]

    def dispose(self) -> None:
        if self._pinned is not None:
            self._pinned.close()
            self._pinned = None
            self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.engine.dispose()


class FastInsert:
    """The hot path's `INSERT` (a row per received message), compiled by SQLAlchemy once per
    dialect and row count, with its type conversions (SQLite's datetimes and booleans), then run
    on the transaction's own DB-API cursor, without SQLAlchemy's per-execution work (execution
    context, parameter and result wrapping). Errors come out as SQLAlchemy's DBAPIError, a
    dropped connection flagged `connection_invalidated`, as they would from Connection.execute.

    `insert()` writes a row now and returns its id. `stage()` queues it, and the rows queued in
    a transaction are written by one multi-row INSERT as it commits: for rows nothing reads
    back before then (a held comment). On PostgreSQL that is one round trip for a batch of
    comments instead of one per comment."""

    MAX_ROWS = 64  # per statement

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self._compiled: dict[tuple[type[Dialect], int, bool], _Compiled] = {}  # driver, rows, RETURNING

    def insert(self, session: Session, values: Mapping[str, object]) -> int:
        """Insert one row (`values` has exactly the columns given) in the session's
        transaction; its id."""
        connection = session.connection()
        cursor = self._execute(connection, [values], returning=True)
        try:
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def stage(self, session: Session, values: Mapping[str, object]) -> None:
        """Queue one row, to be written when the session's (outermost) transaction commits, and
        dropped when it ends otherwise (rollback, close). Rows staged inside a savepoint are
        not dropped by the savepoint's rollback: stage outside begin_nested()."""
        session.connection()  # begins the transaction if need be, so that its end settles the row
        session.info.setdefault(_STAGED, {}).setdefault(self, []).append(values)

    def _write_staged(self, session: Session, rows: list[Mapping[str, object]]) -> None:
        """Write `rows`, removing each statement's rows once written: a commit tried again after
        a failure writes only what is left."""
        connection = session.connection()
        while rows:
            self._execute(connection, rows[: self.MAX_ROWS], returning=False).close()
            del rows[: self.MAX_ROWS]

    def _execute(self, connection: Connection, rows: Sequence[Mapping[str, object]], returning: bool) -> Any:
        """An open cursor that has run the INSERT of `rows`."""
        dialect = connection.dialect
        compiled = self._statement(dialect, len(rows), returning)
        convert = compiled.convert
        converted = [
            (name, convert[name](rows[row][column]) if name in convert else rows[row][column])
            for name, row, column in compiled.slots
        ]
        params: Any = tuple(v for _, v in converted) if compiled.positional else dict(converted)
        dbapi_connection = connection.connection
        cursor = None
        try:
            cursor = dbapi_connection.cursor()  # raises on a connection already known closed
            cursor.execute(compiled.sql, params)
        except dialect.loaded_dbapi.Error as exc:
            lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if cursor is not None:
                cursor.close()
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                compiled.sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost
            ) from exc
        return cursor

    def _statement(self, dialect: Dialect, count: int, returning: bool) -> _Compiled:
        """The INSERT of `count` rows for this driver, compiled on first use."""
        key = (type(dialect), count, returning)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(dialect, count, returning)
        return compiled

    def _compile(self, dialect: Dialect, count: int, returning: bool) -> _Compiled:
        names = [{column: f"r{row}_{column}" for column in self.columns} for row in range(count)]
        statement = insert(self.table).values(
            [{c: bindparam(n, type_=self.table.c[c].type) for c, n in row.items()} for row in names]
        )
        if returning:
            statement = statement.returning(self.table.c.id)
        compiled = statement.compile(dialect=dialect)
        where = {n: (row, c) for row, columns in enumerate(names) for c, n in columns.items()}
        order = list(compiled.positiontup or ()) if compiled.positional else list(where)
        if sorted(order) != sorted(where):  # pragma: no cover - a dialect that renders otherwise
            raise RuntimeError(f"unexpected parameters for {self.table.name}: {order}")
        convert: dict[str, Callable[[Any], Any]] = {}
        for name in order:
            column = where[name][1]
            processor = self.table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                convert[name] = processor
        return _Compiled(compiled.string, compiled.positional, [(n, *where[n]) for n in order], convert)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    slots: list[tuple[str, int, str]]  # (parameter, row, column) in the statement's order
    convert: dict[str, Callable[[Any], Any]]


_STAGED = "listbridge.staged rows"


@event.listens_for(Session, "before_commit")
def _write_staged(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the rows wait for the real commit
        return
    staged: dict[FastInsert, list[Mapping[str, object]]] = session.info.get(_STAGED, {})
    for writer, rows in staged.items():
        writer._write_staged(session, rows)
    session.info.pop(_STAGED, None)


@event.listens_for(Session, "after_transaction_end")
def _drop_staged(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended: committed, rolled back or closed
        session.info.pop(_STAGED, None)


def alembic_config(connection: object | None) -> AlembicConfig:
    """Alembic configuration pointing at the shipped migrations, bound to `connection`."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["connection"] = connection
    return config


def migrations_path() -> Path:
    return shipped_path("migrations")
