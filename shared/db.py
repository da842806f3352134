"""Storage bootstrap: one async SQLAlchemy engine per service, schema by Alembic migrations.

SQLite is the embedded default (one file per service); a ``postgresql://`` DSN switches a
service to PostgreSQL (design invariant 7). Each service keeps its migration scripts in its own
``migrations/`` folder; the Alembic environment that runs them is shared (``shared/alembic``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import SingletonThreadPool

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


def sync_reader(engine: AsyncEngine) -> Engine | None:
    """A synchronous, read-only engine over ``engine``'s SQLite file; None for PostgreSQL.

    Why: through the async driver every call is a hop to aiosqlite's thread and back plus a
    greenlet switch — at moderate load the largest part of ingest's CPU per event
    (``bin/bench --profile-at 0.5``). In WAL mode a reader does not wait for writers, so a short
    indexed read can run on the event loop's own thread and take tens of microseconds. Only
    for such reads: writes stay on the async engine, since a writer may have to wait for the
    lock and that wait must never block the loop. A read that fails with ``OperationalError``
    (busy) can be retried through the async engine.
    """
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = quote(str(Path(url.database).absolute()))
    return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true",
                         connect_args={"timeout": READER_BUSY_TIMEOUT},
                         poolclass=SingletonThreadPool)


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
