"""Where a service's SQLite database is: resolved once, logged at start, loud when new."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from shared.db import DirectPostgres, direct_postgres, make_engine, sqlite_file


def test_a_relative_sqlite_path_is_resolved_against_the_directory_given() -> None:
    dsn, path = sqlite_file("sqlite:///./data/ingest.db", Path("/srv/dihya"))
    assert path == Path("/srv/dihya/data/ingest.db")
    assert dsn == "sqlite:////srv/dihya/data/ingest.db"


@pytest.mark.parametrize("dsn", ["sqlite:////var/lib/dihya/a.db", "sqlite+aiosqlite:////x/a.db"])
def test_an_absolute_sqlite_path_is_kept(dsn: str) -> None:
    assert sqlite_file(dsn, Path("/elsewhere")) == (dsn, Path(dsn.split("///", 1)[1]))


@pytest.mark.parametrize("dsn", ["sqlite:///:memory:", "postgresql://u:pw@db:5432/ingest"])
def test_other_databases_are_left_alone(dsn: str) -> None:
    assert sqlite_file(dsn) == (dsn, None)


def test_a_new_database_from_a_relative_path_is_logged_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with capture_logs() as logs:
        engine = make_engine("sqlite:///./data/ingest.db")
    where = str(tmp_path.resolve() / "data" / "ingest.db")
    assert engine.url.database == where  # the engine itself uses the absolute path
    opened = [e for e in logs if e["event"] == "database_opened"]
    assert opened == [{"event": "database_opened", "log_level": "info", "backend": "sqlite",
                       "path": where, "created": True}]
    (warning,) = [e for e in logs if e["event"] == "database_created_relative"]
    assert warning["log_level"] == "warning" and warning["path"] == where
    assert Path(warning["cwd"]).resolve() == tmp_path.resolve()


def test_an_existing_or_absolute_database_is_logged_without_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    sqlite3.connect(tmp_path / "data" / "ingest.db").close()
    with capture_logs() as logs:
        make_engine("sqlite:///./data/ingest.db")
        make_engine(f"sqlite:///{tmp_path}/new/audit.db")
    assert [(e["event"], e["created"]) for e in logs] == [
        ("database_opened", False), ("database_opened", True)]


def test_a_postgresql_database_is_logged_by_host_never_with_its_password() -> None:
    with capture_logs() as logs:
        make_engine("postgresql://dihya:s3cret-pw@db.internal:5432/ingest")
    assert logs == [{"event": "database_opened", "log_level": "info", "backend": "postgresql",
                     "host": "db.internal", "database": "ingest"}]
    assert "s3cret-pw" not in repr(logs)


def test_the_direct_writer_connects_as_the_engine_does() -> None:
    """Same server, user, password and database; SQLAlchemy's own options left out."""
    engine = create_async_engine("postgresql+asyncpg://dihya:s3cret@db.internal:6432/ingest"
                                 "?prepared_statement_cache_size=0&ssl=require")
    writer = direct_postgres(engine)
    assert isinstance(writer, DirectPostgres)
    assert writer._connect_args == {"host": "db.internal", "port": 6432, "user": "dihya",
                                    "password": "s3cret", "database": "ingest",
                                    "ssl": "require"}
    assert writer._statement_cache_size == 0  # asked of SQLAlchemy: a pooler in between
    default = direct_postgres(create_async_engine("postgresql+asyncpg://u@h/db"))
    assert default is not None and default._statement_cache_size == 100
    assert direct_postgres(create_async_engine("sqlite+aiosqlite:///x.db")) is None
