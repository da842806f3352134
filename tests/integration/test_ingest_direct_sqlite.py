"""The per-event statements (seen events, tokens) go to SQLite directly (shared.db.DirectSQLite).

What must hold whichever way they go: a read sees everything committed just before (a revoked
token is refused at once, a recorded event is a duplicate at once), the reader can never write,
a direct read that fails falls back to the engine, and what is written directly reads back,
compares and purges exactly like the engine's own rows.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.ingest.app import MIGRATIONS
from services.ingest.store import Store, TokenRecord, seen_events
from shared.db import DirectSQLite, direct_sqlite, make_engine, migrate


async def _store(database_url: str) -> Store:
    engine = make_engine(database_url)
    await migrate(engine, MIGRATIONS)
    return Store(engine)


async def test_reads_see_what_was_just_committed(database_url: str) -> None:
    store = await _store(database_url)
    try:
        assert (direct_sqlite(store.engine) is None) == database_url.startswith("postgresql")
        when = datetime(2026, 11, 28, 15, 0, 0, 123456, tzinfo=UTC)
        assert await store.seen_many({"evt_a", "evt_b"}) == {}
        await store.remember_events(["evt_a"], when)
        assert await store.seen_many({"evt_a", "evt_b"}) == {"evt_a": when}
        later = when + timedelta(seconds=5)
        await store.remember_events(["evt_a", "evt_b"], later)  # a refreshed record
        assert await store.seen_many({"evt_a", "evt_b"}) == {"evt_a": later, "evt_b": later}

        async with store.transaction() as conn:
            await store.insert_token(conn, TokenRecord(
                id="tok_1", role="publisher", description=None, token_hash="h" * 64,
                created_at=when, revoked_at=None))
        found = await store.principals({"h" * 64, "x" * 64})
        assert [(p.token_id, p.role) for p in found.values()] == [("tok_1", "publisher")]
        async with store.transaction() as conn:
            await store.revoke_token(conn, "tok_1", later)
        assert await store.principals({"h" * 64}) == {}
    finally:
        await store.close()


async def test_the_direct_reader_cannot_write(tmp_path: Path) -> None:
    store = await _store(f"sqlite:///{tmp_path}/ingest.db")
    reader = direct_sqlite(store.engine)
    assert reader is not None
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.rows("DELETE FROM seen_events")
    finally:
        await reader.close()
        await store.close()


async def test_a_busy_direct_read_falls_back_to_the_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await _store(f"sqlite:///{tmp_path}/ingest.db")
    when = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    await store.remember_events(["evt_a"], when)
    calls = []

    def busy(self: DirectSQLite, sql: str, params: object = ()) -> list[object]:
        calls.append(sql)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(DirectSQLite, "rows", busy)
    try:
        assert await store.seen_many({"evt_a"}) == {"evt_a": when}
        assert len(calls) == 1  # the direct read was tried, and the engine answered
    finally:
        await store.close()


async def test_direct_records_are_the_engines_rows(tmp_path: Path) -> None:
    store = await _store(f"sqlite:///{tmp_path}/ingest.db")
    old = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)  # no microseconds: the format still holds
    new = datetime(2026, 11, 28, 16, 0, 0, 250000, tzinfo=UTC)
    try:
        await store.remember_events(["evt_old", "evt_new"], old)
        await store.remember_events(["evt_new"], new)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(seen_events))).all()
        assert {r.event_id: r.seen_at.replace(tzinfo=UTC) for r in rows} == {
            "evt_old": old, "evt_new": new}
        assert await store.purge_seen(old + timedelta(minutes=1)) == 1
        assert await store.seen_many({"evt_old", "evt_new"}) == {"evt_new": new}
    finally:
        await store.close()


def test_no_direct_reader_without_a_file() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    assert direct_sqlite(create_async_engine("sqlite+aiosqlite:///:memory:")) is None
    assert direct_sqlite(create_async_engine("postgresql+asyncpg://u@127.0.0.1/db")) is None
