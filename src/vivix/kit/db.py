"""Database engine and transaction boundaries.

Services only `flush()`; the request or job boundary opens a transaction here and commits.

SQLite (embedded default) runs in WAL mode. Write transactions start with `BEGIN IMMEDIATE`
so the write lock is taken up front (no deferred-upgrade deadlocks), and are serialized
inside the process by an asyncio lock so waiting writers queue instead of spinning on
busy_timeout. Other processes on the same file wait on busy_timeout. On PostgreSQL, write
transactions lock the rows they change (`SELECT … FOR UPDATE`), so replicas can run them
concurrently.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Executable, Result, Row, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")

# Threads (and connections) of the SQLite reader: statements run with the GIL released.
SQLITE_READERS = 4


class SqliteReader:
    """Single-statement reads on SQLite in one hand-off each: the statement runs and its
    rows are buffered on a reader thread's own pysqlite connection (WAL: readers see the
    last commit and don't wait for the writer). Through aiosqlite the same read costs
    four or five hand-offs between the event loop and its thread, each waiting its turn
    on a busy loop."""

    def __init__(self, engine: Engine, threads: ThreadPoolExecutor) -> None:
        self._engine = engine
        self._threads = threads

    async def execute(
        self, statement: Executable, parameters: dict[str, Any] | None = None
    ) -> Result[Any]:
        def run() -> Any:
            with self._engine.connect() as connection:
                return connection.execute(statement, parameters).freeze()

        frozen = await asyncio.get_running_loop().run_in_executor(self._threads, run)
        return frozen()  # type: ignore[no-any-return]


class CompiledRead:
    """A Core SELECT compiled once for one dialect, to run on the bare driver: its SQL
    with positional parameters, and the result processors SQLAlchemy would apply, so the
    rows (SQLAlchemy `Row`s, same labels, same Python values) are what `execute` on a
    SQLAlchemy connection returns. The statement stays the one source of the query."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = cast(ClauseElement, statement).compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if (
            not compiled.positional
            or compiled.positiontup is None
            or compiled.post_compile_params
            or compiled.literal_execute_params
            or compiled.escaped_bind_names
        ):
            raise ValueError(f"not a plain positional statement: {compiled.string}")
        self.sql = compiled.string
        self._names = list(compiled.positiontup)
        self._defaults = compiled.params  # values bound in the statement (literals, limits)
        self._binders: dict[str, Any] = dict(compiled._bind_processors)
        self._dialect = dialect
        self._types = [column.type for column in compiled._result_columns]
        self._metadata = SimpleResultMetaData(
            [column.keyname for column in compiled._result_columns]
        )
        # Set by `describe` before the first rows: some processors depend on the type the
        # driver reports (asyncpg: a float column's processor on its type oid).
        self.processors: list[Any] | None = None

    @property
    def width(self) -> int:
        return len(self._types)

    def describe(self, driver_types: Sequence[Any]) -> None:
        """The result columns' types as the driver reports them (what SQLAlchemy passes
        as `coltype`: the type oid on asyncpg, None on pysqlite)."""
        if len(driver_types) != len(self._types):
            raise ValueError(f"{len(driver_types)} columns, expected {len(self._types)}")
        self.processors = [
            type_._cached_result_processor(self._dialect, driver_type)
            for type_, driver_type in zip(self._types, driver_types, strict=True)
        ]

    def arguments(self, parameters: dict[str, Any] | None) -> list[Any]:
        values = {**self._defaults, **parameters} if parameters else self._defaults
        arguments = [values[name] for name in self._names]
        if self._binders:
            for index, name in enumerate(self._names):
                binder = self._binders.get(name)
                if binder is not None:
                    arguments[index] = binder(arguments[index])
        return arguments

    def rows(self, raw: Iterable[Sequence[Any]]) -> list[Row[Any]]:
        metadata = self._metadata
        processors = self.processors
        assert processors is not None, "describe() first"
        index = metadata._key_to_index
        return [Row(metadata, processors, index, tuple(values)) for values in raw]


class BufferedRows:
    """A driver read's rows, with the part of SQLAlchemy's `Result` the hot reads use."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Row[Any]]) -> None:
        self._rows = rows

    def first(self) -> Row[Any] | None:
        return self._rows[0] if self._rows else None

    def all(self) -> list[Row[Any]]:
        return self._rows


class _CompiledReads:
    """Statements compiled once each, by identity: hot reads are module-level constants.
    A statement built per call would fill the cache; past its bound one is compiled and
    not kept (still correct, only slower)."""

    LIMIT = 64

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[int, tuple[Executable, CompiledRead]] = {}

    def __call__(self, statement: Executable) -> CompiledRead:
        found = self._compiled.get(id(statement))
        if found is not None and found[0] is statement:
            return found[1]
        compiled = CompiledRead(statement, self._dialect)
        if len(self._compiled) < self.LIMIT:
            # The statement is kept alive with it, so its id is not reused.
            self._compiled[id(statement)] = (statement, compiled)
        return compiled


_SQLITE_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class SqliteLoopReader:
    """Single-statement reads on SQLite run right on the event loop, on a connection of its
    own: a primary-key read costs tens of microseconds in SQLite, less than handing it to
    a thread and waking the loop again (the Future, the thread's queue and the GIL going
    back and forth cost more than the read). WAL: the read sees the last commit and never
    waits for the writer. The loop is blocked only while SQLite runs the statement, so
    this is for reads bounded by an index (the status read, the caller lookup); with a
    busy timeout of 0 a read that would wait (a checkpoint or recovery holding the WAL
    index) goes to the reader threads instead of sleeping on the loop."""

    def __init__(self, path: str, dialect: Dialect, fallback: SqliteReader) -> None:
        self._connection = sqlite3.connect(
            path, timeout=0, isolation_level=None, check_same_thread=False
        )
        self._connection.execute("PRAGMA busy_timeout=0")
        self._connection.execute("PRAGMA query_only=ON")
        self._compiled = _CompiledReads(dialect)
        self._fallback = fallback

    async def execute(
        self, statement: Executable, parameters: dict[str, Any] | None = None
    ) -> BufferedRows | Result[Any]:
        compiled = self._compiled(statement)
        if compiled.processors is None:
            compiled.describe([None] * compiled.width)  # pysqlite reports no column types
        try:
            # fetchall ends the statement, and with it the read transaction (autocommit).
            raw = self._connection.execute(compiled.sql, compiled.arguments(parameters)).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _SQLITE_BUSY:
                raise
            return await self._fallback.execute(statement, parameters)
        return BufferedRows(compiled.rows(raw))

    def close(self) -> None:
        self._connection.close()


class AsyncpgReader:
    """Single-statement reads on PostgreSQL through a small asyncpg pool of their own:
    asyncpg's prepared statements, no SQLAlchemy execution path (its greenlet switches,
    events and pool checkout cost more CPU than the statement). The connections decode
    JSON as the SQLAlchemy engine's do (its dialect sets their codecs), and each
    statement is its own transaction. The pool opens on first use, on the loop using it."""

    def __init__(self, url: str, dialect: Dialect, size: int) -> None:
        parsed = make_url(url)
        # SQLAlchemy's own URL option for PgBouncer in transaction mode (no prepared
        # statements) is asyncpg's statement cache size here.
        cache_size = parsed.query.get("prepared_statement_cache_size")
        self._statement_cache_size = 100 if cache_size is None else int(str(cache_size))
        parsed = parsed.difference_update_query(["prepared_statement_cache_size"])
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._dialect = dialect
        self._size = size
        self._compiled = _CompiledReads(dialect)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> asyncpg.Pool:
        import asyncpg

        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._size,
                    init=self._set_codecs,
                    reset=_keep_session,
                    statement_cache_size=self._statement_cache_size,
                )
            return self._pool

    async def _set_codecs(self, connection: asyncpg.Connection) -> None:
        dialect: Any = self._dialect
        shim = SimpleNamespace(_connection=connection)
        await dialect.setup_asyncpg_json_codec(shim)
        await dialect.setup_asyncpg_jsonb_codec(shim)

    async def execute(
        self, statement: Executable, parameters: dict[str, Any] | None = None
    ) -> BufferedRows:
        compiled = self._compiled(statement)
        pool = self._pool or await self._open()
        async with pool.acquire() as connection:
            if compiled.processors is None:
                prepared = await connection.prepare(compiled.sql)
                compiled.describe([column.type.oid for column in prepared.get_attributes()])
            raw = await connection.fetch(compiled.sql, *compiled.arguments(parameters))
        return BufferedRows(compiled.rows(raw))

    async def notify(self, channel: str) -> None:
        """`NOTIFY channel`, on its own (delivered at once): the after-commit wake-ups of
        submits and change-feed rows, one every few requests under load."""
        pool = self._pool or await self._open()
        await pool.execute(f"NOTIFY {channel}")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """asyncpg's default reset on release (`RESET ALL`, `UNLISTEN *`, …) is one more round
    trip per read; single SELECTs leave no session state to reset (a transaction left
    open is still rolled back by the pool)."""


# What `Database.reader()` yields: each executes one statement and buffers its rows.
ReadConnection = AsyncConnection | SqliteReader | SqliteLoopReader | AsyncpgReader

_WRITE_OPTION = "vivix_write"
_AUTOCOMMIT_OPTION = "vivix_autocommit"
_EVENTS_WRITTEN = "vivix_events_written"


def mark_events_written(target: Any) -> None:
    """Tell the transaction boundary that `target` (a session or connection) appended
    change-feed rows: once it commits, `Database.on_events_committed` runs."""
    target.info[_EVENTS_WRITTEN] = True


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 30,
        max_overflow: int = 0,
        sqlite_busy_timeout_ms: int = 30_000,
        echo: bool = False,
        read_pool_size: int = 8,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            ensure_sqlite_directory(url)
            kwargs["connect_args"] = {"timeout": sqlite_busy_timeout_ms / 1000}
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = max_overflow
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = max_overflow
            kwargs["pool_pre_ping"] = False
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine, sqlite_busy_timeout_ms)
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        # Single-statement reads need no transaction: on PostgreSQL that saves the BEGIN and
        # ROLLBACK round trips, on SQLite two hand-offs to aiosqlite's thread.
        self._autocommit_engine = (
            self.engine.execution_options(**{_AUTOCOMMIT_OPTION: True})
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._read_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(self._write_engine, expire_on_commit=False)
        self._sqlite_write_lock = asyncio.Lock() if self.is_sqlite else None
        self._sqlite_writer: tuple[Engine, ThreadPoolExecutor] | None = None
        self._sqlite_reader: SqliteReader | None = None
        # What `reader()` yields: the bare driver, the dialect chosen here once.
        self._driver_reader: SqliteLoopReader | AsyncpgReader | None = None
        if self.is_sqlite:
            self._sqlite_reader = _sqlite_reader(url, sqlite_busy_timeout_ms, echo)
            parsed = make_url(url)
            database = parsed.database
            # A plain file (no URI options the loop's connection would ignore); with echo
            # on, the statements go through SQLAlchemy's logging (as on PostgreSQL).
            if database and database != ":memory:" and not parsed.query and not echo:
                self._driver_reader = SqliteLoopReader(
                    database, self._sqlite_reader._engine.dialect, self._sqlite_reader
                )
            # One connection, used only from one thread (see run_sqlite_write).
            writer = create_engine(
                make_url(url).set(drivername="sqlite+pysqlite"),
                poolclass=StaticPool,
                connect_args={
                    "timeout": sqlite_busy_timeout_ms / 1000,
                    "check_same_thread": False,
                },
                echo=echo,
            )
            _install_sqlite_hooks(writer, sqlite_busy_timeout_ms, always_immediate=True)
            self._sqlite_writer = (writer, ThreadPoolExecutor(1, "vivix-sqlite-writer"))
        elif not echo:  # with echo on, the hot reads go through SQLAlchemy's logging too
            self._driver_reader = AsyncpgReader(url, self.engine.dialect, read_pool_size)
        # Called (synchronously, on the event loop) after a transaction that appended
        # change-feed rows commits: wakes this process's event streams, NOTIFYs others.
        self.on_events_committed: list[Callable[[], None]] = []

    def _committed(self, written: bool) -> None:
        if written:
            for callback in self.on_events_committed:
                callback()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; nothing it does is committed."""
        async with self._read_sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed when the block exits without an exception."""
        if self._sqlite_write_lock is not None:
            async with self._sqlite_write_lock, self._write_sessions() as session:
                async with session.begin():
                    yield session
                self._committed(session.info.pop(_EVENTS_WRITTEN, False))
        else:
            async with self._write_sessions() as session:
                async with session.begin():
                    yield session
                self._committed(session.info.pop(_EVENTS_WRITTEN, False))

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection on which every statement is its own transaction: for reads
        (each sees its own snapshot), and on PostgreSQL for writes done in one statement.
        Not for writes on SQLite, which go through `write_connection` (its write lock)."""
        async with self._autocommit_engine.connect() as connection:
            try:
                yield connection
            finally:
                written = connection.info.pop(_EVENTS_WRITTEN, False)
        self._committed(bool(written))

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[ReadConnection]:
        """For single-statement reads on hot paths (the status read, the caller lookup):
        the statement runs on the bare driver, compiled once (`CompiledRead`), and gives
        the rows SQLAlchemy would. PostgreSQL: `AsyncpgReader`; SQLite: `SqliteLoopReader`
        (on the event loop: only for reads an index bounds). Only `execute` is offered,
        and each statement is its own transaction."""
        if self._driver_reader is not None:
            yield self._driver_reader
        elif self._sqlite_reader is not None:  # in-memory database, or echo on
            yield self._sqlite_reader
        else:
            async with self.autocommit() as connection:
                yield connection

    async def notify(self, channel: str) -> None:
        """PostgreSQL: `NOTIFY channel` in its own transaction, on the hot-read pool's
        bare driver (SQLAlchemy's path cost more CPU than the statement)."""
        if isinstance(self._driver_reader, AsyncpgReader):
            await self._driver_reader.notify(channel)
            return
        async with self.autocommit() as connection:
            await connection.exec_driver_sql(f"NOTIFY {channel}")

    @asynccontextmanager
    async def write_connection(self) -> AsyncIterator[AsyncConnection]:
        """A Core write transaction (same locking as `transaction()`), committed when the
        block exits without an exception."""
        if self._sqlite_write_lock is not None:
            async with self._sqlite_write_lock:
                async with _flagged(self._write_engine) as (connection, written):
                    yield connection
                self._committed(written[0])
        else:
            async with _flagged(self._write_engine) as (connection, written):
                yield connection
            self._committed(written[0])

    async def run_sqlite_write(self, work: Callable[[Connection], T]) -> T:
        """SQLite: `work` (synchronous Core statements) in one write transaction on a
        dedicated writer thread, committed unless it raises. With aiosqlite every
        statement costs three or four hand-offs between the event loop and its thread,
        each waiting its turn on a busy loop while the database write lock is held; here
        the whole transaction is one hand-off. Serialized with the other writers by the
        same in-process lock."""
        if self._sqlite_writer is None or self._sqlite_write_lock is None:
            raise RuntimeError("run_sqlite_write is for SQLite databases")
        writer, thread = self._sqlite_writer

        def run() -> tuple[T, bool]:
            with writer.begin() as connection:
                try:
                    result = work(connection)
                finally:
                    written = bool(connection.info.pop(_EVENTS_WRITTEN, False))
            return result, written

        async with self._sqlite_write_lock:
            future = asyncio.get_running_loop().run_in_executor(thread, run)
            try:
                result, events_written = await asyncio.shield(future)
            finally:
                if not future.done():  # canceled: keep the lock until the thread is done
                    await asyncio.wait([future])
        if events_written:
            for callback in self.on_events_committed:
                callback()
        return result

    async def dispose(self) -> None:
        driver_reader, self._driver_reader = self._driver_reader, None
        if isinstance(driver_reader, SqliteLoopReader):
            driver_reader.close()
        elif driver_reader is not None:
            await driver_reader.close()
        if self._sqlite_reader is not None:
            reader, self._sqlite_reader = self._sqlite_reader, None
            reader._threads.shutdown(wait=True)
            reader._engine.dispose()
        if self._sqlite_writer is not None:
            writer, thread = self._sqlite_writer
            await asyncio.get_running_loop().run_in_executor(thread, writer.dispose)
            thread.shutdown(wait=True)
            self._sqlite_writer = None
        await self.engine.dispose()


def _sqlite_reader(url: str, busy_timeout_ms: int, echo: bool) -> SqliteReader:
    engine = create_engine(
        make_url(url).set(drivername="sqlite+pysqlite"),
        pool_size=SQLITE_READERS,
        max_overflow=0,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        echo=echo,
    )
    _install_sqlite_hooks(engine, busy_timeout_ms)
    # No BEGIN: each statement is its own read transaction.
    autocommit = engine.execution_options(**{_AUTOCOMMIT_OPTION: True})
    return SqliteReader(autocommit, ThreadPoolExecutor(SQLITE_READERS, "vivix-sqlite-reader"))


@asynccontextmanager
async def _flagged(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, list[bool]]]:
    """A Core transaction; `written[0]` says, once it committed, whether it appended
    change-feed rows (the flag lives on the pooled DBAPI connection: always cleared)."""
    written = [False]
    async with engine.begin() as connection:
        try:
            yield connection, written
        finally:
            written[0] = bool(connection.info.pop(_EVENTS_WRITTEN, False))


def _install_sqlite_hooks(
    engine: AsyncEngine | Engine, busy_timeout_ms: int, *, always_immediate: bool = False
) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if always_immediate or options.get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get(_AUTOCOMMIT_OPTION):
            connection.exec_driver_sql("BEGIN")


def ensure_sqlite_directory(url: str) -> None:
    if not url.startswith("sqlite"):
        return
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def null_pool_engine(url: str, *, sqlite_busy_timeout_ms: int = 30_000) -> AsyncEngine:
    """A throwaway engine for one-off admin work (migrations, creating databases).

    On SQLite every transaction takes the write lock up front (`BEGIN IMMEDIATE`): processes
    started together on a new file (several `vivix serve`) then migrate one after the other.
    With pysqlite's deferred BEGIN each read "no schema yet" and all but one failed with
    "table accounts already exists"."""
    ensure_sqlite_directory(url)
    if not url.startswith("sqlite"):
        return create_async_engine(url, poolclass=NullPool)
    engine = create_async_engine(
        url, poolclass=NullPool, connect_args={"timeout": sqlite_busy_timeout_ms / 1000}
    )
    _install_sqlite_hooks(engine, sqlite_busy_timeout_ms, always_immediate=True)
    return engine
