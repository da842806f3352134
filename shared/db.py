"""Storage bootstrap: one async SQLAlchemy engine per service, schema by Alembic migrations.

SQLite is the embedded default (one file per service); a ``postgresql://`` DSN switches a
service to PostgreSQL (design invariant 7). A relative SQLite path is resolved once, against the
working directory at start, and every service logs where its database is (``database_opened``):
a service started from another directory than before would otherwise create a fresh, empty
database there without a word, so that case is also a warning (``database_created_relative``).
Each service keeps its migration scripts in its own ``migrations/`` folder; the Alembic
environment that runs them is shared (``shared/alembic``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, TypeDecorator, event, text
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared import outages

_ENV_DIR = Path(__file__).parent / "alembic"

log = structlog.get_logger("dihya.db")

T = TypeVar("T")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both backends (a naive value is taken to be UTC).

    SQLite has no time zone type: SQLAlchemy stores the wall-clock text and drops the offset,
    so values are converted to UTC first (and text comparison then orders them correctly).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _utc(value)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def async_url(dsn: str) -> str:
    """Map a plain DSN (``sqlite:///x.db``, ``postgresql://…``) to its asyncio driver."""
    url = make_url(dsn)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg",
              "postgres": "postgresql+asyncpg"}.get(url.drivername, url.drivername)
    return url.set(drivername=driver).render_as_string(hide_password=False)


def sqlite_file(dsn: str, cwd: Path | None = None) -> tuple[str, Path | None]:
    """``dsn`` with its SQLite path made absolute (against ``cwd``, default the working
    directory), and that path; a DSN of another backend, or in memory, as it is and None."""
    url = make_url(dsn)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return dsn, None
    path = Path(url.database)
    path = (path if path.is_absolute() else (cwd or Path.cwd()) / path).resolve()
    return url.set(database=str(path)).render_as_string(hide_password=False), path


def _announce(dsn: str, path: Path | None, created: bool) -> None:
    """Log where the service's database is: the absolute SQLite file, or the server's host."""
    url = make_url(dsn)
    if path is None:
        log.info("database_opened", backend=url.get_backend_name(), host=url.host,
                 database=url.database)
        return
    log.info("database_opened", backend="sqlite", path=str(path), created=created)
    given = make_url(dsn).database or ""
    if created and not Path(given).is_absolute():
        log.warning("database_created_relative", path=str(path), cwd=os.getcwd(),
                    hint="a relative SQLite path is resolved against the working directory: "
                    "if this service kept its data elsewhere before, it was started from "
                    "another directory; give its DATABASE_URL an absolute path")


def make_engine(dsn: str) -> AsyncEngine:
    """Create the engine (and log where the database is); SQLite gets WAL and a busy timeout
    so readers never block writers."""
    absolute, path = sqlite_file(dsn)
    created = path is not None and not path.exists()
    _announce(dsn, path, created)
    url = async_url(absolute)
    if url.startswith("sqlite"):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


READER_BUSY_TIMEOUT = 0.05
"""Seconds a direct read may wait for SQLite (in WAL mode hardly ever: recovery after a crash).
It waits on the event loop's thread, so briefly; then the caller asks the engine instead."""


def sqlite_timestamp(moment: datetime) -> str:
    """``moment`` as SQLAlchemy stores a ``DateTime`` in SQLite (UTC wall time, microseconds),
    so rows written directly compare and read back like the engine's own. Formatted by hand,
    as SQLAlchemy does: ``strftime("%Y")`` does not pad a year before 1000 to four digits."""
    m = moment.astimezone(UTC)
    return (f"{m.year:04d}-{m.month:02d}-{m.day:02d} "
            f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}")


class DirectSQLite:
    """Plain ``sqlite3`` on a service's SQLite file, for the few statements run per message.

    Why: through SQLAlchemy's async engine a point read costs about 900 µs of CPU here and a
    one-row upsert with its commit about 1,600 µs (hops to aiosqlite's thread and back,
    greenlet switches, statement caching); as plain ``sqlite3`` the read takes about 5 µs —
    and ingest runs both for every event.

    * :meth:`rows` reads on the event loop's own thread, on a read-only connection: in WAL
      mode a reader does not wait for writers. Callers fall back to the engine on
      ``sqlite3.OperationalError``.
    * :meth:`write` runs on one thread of its own with its own connection, since a writer may
      wait for the lock (another connection's transaction) and that must never block the loop.

    Only for short statements on the hot path, in plain SQL next to the engine's version of
    the same query (PostgreSQL, and every other query, stay on the engine).
    """

    def __init__(self, path: Path) -> None:
        self._path = path.absolute()
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._closed = False

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of ``sql``, as tuples; each call is its own read transaction."""
        if self._reader is None:
            self._reader = sqlite3.connect(
                f"file:{quote(str(self._path))}?mode=ro", uri=True,
                timeout=READER_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        return self._reader.execute(sql, params).fetchall()

    async def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` for each of ``rows`` in one transaction, committed when this returns."""
        await self.transaction(functools.partial(_execute_many, sql=sql, rows=rows))

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` on the writer thread in one transaction and return what it
        returned once committed; roll back if it raised. ``BEGIN IMMEDIATE``: the write lock
        is taken first, so a transaction that reads before it writes never finds its snapshot
        overtaken by another connection's commit (an error no busy timeout waits out)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._transaction, work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:  # created on the writer thread, used only there
            self._writer = sqlite3.connect(self._path, timeout=30)
            self._writer.execute("PRAGMA synchronous=NORMAL")
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._writer)
            self._writer.commit()
        except BaseException:  # a failed commit too: the next BEGIN must find no transaction
            self._writer.rollback()
            raise
        return result

    async def close(self) -> None:
        """Close both connections and the writer thread (a second call does nothing)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if not self._closed:
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close_writer)
            self._thread.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _execute_many(connection: sqlite3.Connection, *, sql: str,
                  rows: Sequence[Sequence[Any]]) -> None:
    connection.executemany(sql, rows)


def direct_sqlite(engine: AsyncEngine) -> DirectSQLite | None:
    """A :class:`DirectSQLite` on ``engine``'s SQLite file; None for PostgreSQL or memory."""
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return DirectSQLite(Path(url.database))


DIRECT_PG_CONNECTIONS = 4
"""Most connections a :class:`DirectPostgres` holds (one per batch writer of a service)."""
CONNECT_TIMEOUT = 10.0
"""Seconds a direct connection may take to open (then: a timeout, an infrastructure error)."""
_ALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")
"""Options of a URL that SQLAlchemy's asyncpg adapter reads and asyncpg does not take."""


class DirectPostgres:
    """Plain ``asyncpg`` on a service's PostgreSQL database, for the few statements run per
    batch of messages — PostgreSQL's counterpart of :class:`DirectSQLite`.

    Why: through SQLAlchemy's async engine every transaction paid the pool's pre-ping (a
    ``BEGIN``, a ``;`` and a ``ROLLBACK``: three round trips), and every statement its
    compilation, parameter processing and greenlet switches — and, for an ``IN (…)`` list of
    another length than before, a new prepared statement on the server. Statements run here
    are constant text (a batch's values bound as arrays: ``= ANY($1)``, ``unnest(…)``), so
    each is prepared once per connection (asyncpg's statement cache) and a batch of any size
    is one round trip.

    Connections are its own, at most :data:`DIRECT_PG_CONNECTIONS`, opened on first use from
    the engine's URL and never pinged (see :meth:`run` for one the server dropped). Its
    errors are asyncpg's own, which :func:`shared.outages.is_infrastructure` sorts into the
    database's (connection, shutdown, resources, deadlock) and the data's. Each connection
    runs with ``plan_cache_mode = force_custom_plan``: a generic plan chosen while a table was
    small can be a sequential scan that costs seconds once the table has grown (measured on
    audit's records; see ``AuditStore._writing``).
    """

    def __init__(self, connect_args: dict[str, Any], *, size: int = DIRECT_PG_CONNECTIONS,
                 statement_cache: bool = True) -> None:
        self._connect_args = connect_args
        """``asyncpg.connect``'s arguments: the engine's (server, user, password, database,
        ``ssl`` and the other options of its URL)."""
        self._statement_cache_size = 100 if statement_cache else 0
        """0: unnamed statements only, for a pooler in transaction mode (PgBouncer): the URL
        asked SQLAlchemy for that too (``prepared_statement_cache_size=0``)."""
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement (its own implicit transaction)."""
        return await self.run(lambda conn: conn.fetch(sql, *args), transaction=False)

    async def execute(self, sql: str, *args: Any) -> None:
        """Run one statement, committed when this returns (its own implicit transaction)."""
        await self.run(lambda conn: conn.execute(sql, *args), transaction=False)

    async def transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work(connection)`` in one transaction; what it returned once committed."""
        return await self.run(work, transaction=True)

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *,
                  transaction: bool) -> T:
        """``work`` on a connection of this writer (inside a transaction, if asked).

        A connection kept idle that turns out dead (the server restarted meanwhile: the
        engine's pool finds that out with its pre-ping) is dropped with every other idle
        one, and ``work`` runs once more on a new connection — so the first batch after an
        outage does not fail once the database answers again. ``work`` must therefore be
        safe to run twice (every caller's is: inserts that skip what exists, upserts, reads,
        deletes, and audit's append, which skips fact ids already stored)."""
        async with self._slots:
            for fresh in (False, True):
                conn, reused = await self._acquire(fresh)
                try:
                    if not transaction:
                        result = await work(conn)
                    else:
                        async with conn.transaction():
                            result = await work(conn)
                except BaseException as exc:
                    lost = outages.is_infrastructure(exc)
                    # A server's refusal leaves the connection usable; anything else (a
                    # dropped connection, a cancellation mid-statement) may not.
                    self._release(conn, keep=not lost and isinstance(exc, asyncpg.PostgresError))
                    if reused and lost and conn.is_closed():
                        self._drop_idle()
                        continue
                    raise
                self._release(conn, keep=True)
                return result
        raise AssertionError("unreachable: the second round returns or raises")

    async def _acquire(self, fresh: bool) -> tuple[asyncpg.Connection, bool]:
        """A connection, and whether it was idle here before (else: new)."""
        if self._closed:
            raise asyncpg.InterfaceError("the direct PostgreSQL writer is closed")
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn, True
        conn = await asyncpg.connect(**self._connect_args, timeout=CONNECT_TIMEOUT,
                                     statement_cache_size=self._statement_cache_size,
                                     server_settings={"plan_cache_mode": "force_custom_plan"})
        return conn, False

    def _release(self, conn: asyncpg.Connection, *, keep: bool) -> None:
        if keep and not self._closed and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append(conn)
        elif not conn.is_closed():
            conn.terminate()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            if not conn.is_closed():
                conn.terminate()

    async def close(self) -> None:
        """Close the idle connections; a call after this fails (a second close does nothing)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


def direct_postgres(engine: AsyncEngine) -> DirectPostgres | None:
    """A :class:`DirectPostgres` on ``engine``'s database; None for another backend. It
    connects with the arguments the engine's dialect gives asyncpg, but for the options only
    SQLAlchemy's adapter reads."""
    if engine.dialect.name != "postgresql":
        return None
    _, args = engine.dialect.create_connect_args(engine.url)
    cache = args.get("prepared_statement_cache_size")
    return DirectPostgres({k: v for k, v in args.items() if k not in _ALCHEMY_ONLY},
                          statement_cache=cache is None or int(cache) > 0)


def direct_writer(engine: AsyncEngine) -> DirectSQLite | DirectPostgres | None:
    """The direct writer of ``engine``'s database: :func:`direct_sqlite`, else
    :func:`direct_postgres` (None for an SQLite database in memory)."""
    return direct_sqlite(engine) or direct_postgres(engine)


MIGRATION_LOCK_KEY = 0x64696879616D6967  # "dihyamig"
"""PostgreSQL advisory lock held around a schema upgrade (see :func:`migrate`). One key for
every service: services never share a database, and replicas of one service must take turns."""


async def migrate(engine: AsyncEngine, versions: Path) -> None:
    """Bring the schema to the newest revision found in ``versions`` (idempotent).

    On PostgreSQL the upgrade runs under a transaction-scoped advisory lock
    (:data:`MIGRATION_LOCK_KEY`), so replicas started together on a fresh database take turns:
    the first creates the schema and commits, which releases the lock; the next then finds
    ``alembic_version`` at head and has nothing to do. Alembic has no lock of its own, and
    without this one replicas race on ``CREATE TABLE alembic_version`` (``UniqueViolation``)
    or on the first revision's tables (``relation … already exists``). SQLite needs none: its
    one writer at a time is enforced by the file lock.
    """

    def _upgrade(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # released at the commit of this transaction, or when its connection dies
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
        upgrade(connection, versions)

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def upgrade(connection: Connection, versions: Path) -> None:
    """Alembic's ``upgrade head`` on ``connection``, with no lock: :func:`migrate` is the
    entry point (this is public only so a test can show the race the lock prevents)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_ENV_DIR))
    cfg.set_main_option("version_locations", str(versions))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
