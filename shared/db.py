"""Storage bootstrap: one async SQLAlchemy engine per service, schema by Alembic migrations.

SQLite is the embedded default (one file per service); a ``postgresql://`` DSN switches a
service to PostgreSQL (design invariant 7). Each service keeps its migration scripts in its own
``migrations/`` folder; the Alembic environment that runs them is shared (``shared/alembic``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
