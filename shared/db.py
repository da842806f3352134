"""Storage bootstrap: one async SQLAlchemy engine per service, schema by Alembic migrations.

SQLite is the embedded default (one file per service); a ``postgresql://`` DSN switches a
service to PostgreSQL (design invariant 7). Each service keeps its migration scripts in its own
``migrations/`` folder; the Alembic environment that runs them is shared (``shared/alembic``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_ENV_DIR = Path(__file__).parent / "alembic"


def async_url(dsn: str) -> str:
    """Map a plain DSN (``sqlite:///x.db``, ``postgresql://…``) to its asyncio driver."""
    url = make_url(dsn)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg",
              "postgres": "postgresql+asyncpg"}.get(url.drivername, url.drivername)
    return url.set(drivername=driver).render_as_string(hide_password=False)


def make_engine(dsn: str) -> AsyncEngine:
    """Create the engine; SQLite gets WAL and a busy timeout so readers never block writers."""
    url = async_url(dsn)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
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


READER_BUSY_TIMEOUT = 0.2
"""Seconds a direct read may wait for SQLite (only WAL recovery makes a reader wait)."""


class DirectReader:
    """Read-only SQL on a service's SQLite file, run on the event loop's own thread.

    Why: a point read through SQLAlchemy's async engine costs about 900 µs of CPU here (a hop
    to aiosqlite's thread and back, a greenlet switch, statement caching), through its sync
    engine about 300 µs, and as plain ``sqlite3`` about 5 µs — and the seen-event look-up runs
    for every event. In WAL mode a reader does not wait for writers, so such a read can run
    on the loop's thread. Only for short indexed reads on the hot path, with plain SQL: writes
    stay on the async engine, since a writer may wait for the lock and that must never block
    the loop. Callers fall back to the engine on ``sqlite3.OperationalError``.
    """

    def __init__(self, path: Path) -> None:
        self._uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        self._conn: sqlite3.Connection | None = None

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of ``sql``, as tuples; each call is its own read transaction."""
        if self._conn is None:
            self._conn = sqlite3.connect(self._uri, uri=True, timeout=READER_BUSY_TIMEOUT,
                                         isolation_level=None, check_same_thread=False)
        return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def direct_reader(engine: AsyncEngine) -> DirectReader | None:
    """A :class:`DirectReader` on ``engine``'s SQLite file; None for PostgreSQL or memory."""
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return DirectReader(Path(url.database))


async def migrate(engine: AsyncEngine, versions: Path) -> None:
    """Bring the schema to the newest revision found in ``versions`` (idempotent)."""

    def _upgrade(connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(_ENV_DIR))
        cfg.set_main_option("version_locations", str(versions))
        cfg.set_main_option("path_separator", "os")
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
