"""The fan-out endpoint cache: this replica's changes apply at once, others' within the TTL."""

from __future__ import annotations

from services.ingest.app import MIGRATIONS
from services.ingest.store import EndpointRecord, Store
from shared.contracts import utcnow
from shared.db import make_engine, migrate


async def _store(database_url: str, ttl: float) -> Store:
    engine = make_engine(database_url)
    await migrate(engine, MIGRATIONS)
    return Store(engine, endpoint_cache_ttl=ttl)


def _record(ident: str) -> EndpointRecord:
    now = utcnow()
    return EndpointRecord(id=ident, url="https://hooks.example.com/h", events=("a.b",),
                          description=None, status="enabled", created_at=now, updated_at=now)


async def test_changes_through_the_store_apply_to_the_next_event(database_url: str) -> None:
    store = await _store(database_url, ttl=3600)
    try:
        assert await store.subscribers() == []
        async with store.transaction() as conn:
            await store.insert_endpoint(conn, _record("ep_one"))
        assert [e.id for e in await store.subscribers()] == ["ep_one"]
        async with store.transaction() as conn:
            await store.update_endpoint(conn, "ep_one", {"status": "disabled"})
        assert [e.status for e in await store.subscribers()] == ["disabled"]
        async with store.transaction() as conn:
            await store.delete_endpoint(conn, "ep_one")
        assert await store.subscribers() == []
    finally:
        await store.engine.dispose()


async def test_changes_from_elsewhere_wait_for_the_ttl(database_url: str) -> None:
    cached = await _store(database_url, ttl=3600)
    uncached = Store(cached.engine, endpoint_cache_ttl=0)
    try:
        assert await cached.subscribers() == []
        async with uncached.transaction() as conn:  # "another replica"
            await uncached.insert_endpoint(conn, _record("ep_two"))
        assert await cached.subscribers() == []  # still the cached list
        assert [e.id for e in await uncached.subscribers()] == ["ep_two"]
    finally:
        await cached.engine.dispose()
