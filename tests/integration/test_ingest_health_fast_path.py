"""A healthy endpoint's stream of successes costs no database read; a failure always does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.app import MIGRATIONS
from services.ingest.health import HealthHandler
from services.ingest.store import EndpointRecord, Store
from shared.contracts import AuditFact, utcnow
from shared.db import make_engine, migrate


class CountingStore(Store):
    reads = 0

    async def get_endpoint(self, endpoint_id: str, conn: Any = None) -> EndpointRecord | None:
        self.reads += 1
        return await super().get_endpoint(endpoint_id, conn)


@dataclass
class Message:
    body: bytes


def attempt(n: int, at_s: float, *, delivered: bool) -> Message:
    fact = AuditFact(id=f"fct_{n}", kind="delivery.attempted",
                     occurred_at=T0 + timedelta(seconds=at_s),
                     service="deliverer", endpoint_id="ep_fast", delivery_id=f"dlv_{n}",
                     attempt=1, outcome="delivered" if delivered else "failed",
                     status_code=200 if delivered else 500)
    return Message(fact.model_dump_json().encode())


T0 = utcnow()


async def with_endpoint(tmp_path: Path) -> tuple[AsyncEngine, CountingStore, HealthHandler]:
    """A migrated SQLite store holding the enabled endpoint ``ep_fast``, and its handler."""
    engine = make_engine(f"sqlite:///{tmp_path}/ingest.db")
    await migrate(engine, MIGRATIONS)
    store = CountingStore(engine)
    now = utcnow()
    async with store.transaction() as conn:
        await store.insert_endpoint(conn, EndpointRecord(
            id="ep_fast", url="https://hooks.example.com/h", events=("a.b",), description=None,
            status="enabled", created_at=now, updated_at=now))
    handler = HealthHandler(store, None, disable_after=5 * 86400)  # type: ignore[arg-type]
    return engine, store, handler


async def test_successes_of_a_healthy_endpoint_skip_the_read(tmp_path: Path) -> None:
    engine, store, handler = await with_endpoint(tmp_path)
    try:
        await handler(attempt(0, 0, delivered=True))  # type: ignore[arg-type]
        first = store.reads
        assert first >= 1
        for n in range(1, 50):  # within the resolution: nothing to read or write
            await handler(attempt(n, n * 0.5, delivered=True))  # type: ignore[arg-type]
        assert store.reads == first
        await handler(attempt(99, 30, delivered=False))  # type: ignore[arg-type]
        assert store.reads > first  # a failure is always judged on the row
        record = await store.get_endpoint("ep_fast")
        assert record is not None and record.health.failing_since is not None
        reads = store.reads
        await handler(attempt(100, 31, delivered=True))  # type: ignore[arg-type]
        assert store.reads > reads  # no longer known healthy: the success ends the run
        record = await store.get_endpoint("ep_fast")
        assert record is not None and record.health.failing_since is None
    finally:
        await engine.dispose()


async def test_many_failures_of_one_endpoint_at_once_are_each_judged(tmp_path: Path) -> None:
    """The consumer hands the handler many facts at once (its prefetch): for one failing
    endpoint they are judged one after another, each counted, none given back for contention
    (judged side by side they lost the compare-and-set to each other until some gave up)."""
    engine, store, handler = await with_endpoint(tmp_path)
    try:
        results = await asyncio.gather(
            *(handler(attempt(n, n * 0.01, delivered=False))  # type: ignore[arg-type]
              for n in range(200)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        record = await store.get_endpoint("ep_fast")
        assert record is not None
        print(f"\n[books] facts 200, handler failures {len(errors)}, "
              f"failures counted {record.health.failures}")
        assert not errors, errors[:1]
        assert record.health.failures == 200
    finally:
        await engine.dispose()
