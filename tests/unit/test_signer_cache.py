"""The signer's secret cache: single-flight loads, no stale caching, woken waits."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import cast

import pytest

from services.signer import consumer as signer_consumer
from services.signer.consumer import SecretCache
from services.signer.decisions import StoredSecret
from services.signer.store import Keystore
from shared.contracts import utcnow


class FakeKeystore:
    """Stands in for the database; ``gate`` lets a test hold a load in flight."""

    def __init__(self) -> None:
        self.rows: dict[str, list[StoredSecret]] = {}
        self.loads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def load(self, endpoint_id: str, now: datetime) -> list[StoredSecret]:
        self.loads += 1
        self.entered.set()
        snapshot = list(self.rows.get(endpoint_id, []))
        await self.gate.wait()
        return snapshot

    def put(self, endpoint_id: str, *values: str) -> None:
        self.rows[endpoint_id] = [StoredSecret(v, utcnow(), None) for v in values]


def cache_over(store: FakeKeystore, ttl: float = 60.0) -> SecretCache:
    return SecretCache(cast(Keystore, store), ttl)


async def test_hits_are_served_from_memory_and_misses_are_shared() -> None:
    store = FakeKeystore()
    store.put("ep", "one")
    cache = cache_over(store)
    store.gate.clear()
    results = asyncio.gather(*(cache.get("ep") for _ in range(50)))
    await store.entered.wait()
    store.gate.set()
    assert await results == [("one",)] * 50
    assert store.loads == 1
    assert await cache.get("ep") == ("one",)
    assert store.loads == 1


async def test_misses_are_not_cached_and_ttl_zero_disables_caching() -> None:
    store = FakeKeystore()
    cache = cache_over(store)
    assert await cache.get("ep") == ()
    store.put("ep", "now-there")  # e.g. stored by another replica
    assert await cache.get("ep") == ("now-there",)
    uncached = cache_over(store, ttl=0)
    await uncached.get("ep")
    await uncached.get("ep")
    assert store.loads == 4


async def test_a_load_racing_a_rotation_is_not_cached() -> None:
    store = FakeKeystore()
    store.put("ep", "old")
    cache = cache_over(store)
    store.gate.clear()
    stale = asyncio.ensure_future(cache.get("ep"))
    await store.entered.wait()  # the load has read "old" and is in flight
    store.put("ep", "new")
    cache.invalidate("ep")
    store.gate.set()
    assert await stale == ("old",)
    assert await cache.get("ep") == ("new",)  # not the stale rows


async def test_wait_is_woken_by_invalidate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signer_consumer, "RECHECK_INTERVAL", 60.0)  # only the signal can wake it
    store = FakeKeystore()
    cache = cache_over(store)
    waiter = asyncio.ensure_future(cache.wait("ep", timeout=30))
    await store.entered.wait()
    await asyncio.sleep(0)  # let the waiter see the miss and start waiting
    loads_while_waiting = store.loads
    store.put("ep", "arrived")
    cache.invalidate("ep")
    assert await asyncio.wait_for(waiter, 1) == ("arrived",)
    assert loads_while_waiting == 1


async def test_wait_gives_up_after_its_timeout() -> None:
    cache = cache_over(FakeKeystore())
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cache.wait("nobody", timeout=0.2) == ()
    assert 0.15 <= loop.time() - started < 2


class FakeHeaderStore:
    """The keystore's custom-header look-up, counted; ``gate`` holds a load in flight."""

    def __init__(self) -> None:
        self.loads = 0
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.headers: dict[str, str] = {}

    async def load_headers(self, endpoint_id: str) -> dict[str, str]:
        self.loads += 1
        self.entered.set()
        snapshot = dict(self.headers)
        await self.gate.wait()
        return snapshot


async def test_custom_header_loads_are_shared_and_a_racing_control_is_not_cached() -> None:
    """The jobs that find an endpoint's custom headers uncached at once share one query (each
    made its own before); a load that a control message overtook is not cached."""
    from services.signer.consumer import Signer
    from services.signer.settings import Settings
    from shared.broker import Publisher

    store = FakeHeaderStore()
    signer = Signer(Settings(master_key=None, cache_ttl=60.0), cast(Keystore, store),
                    cache_over(FakeKeystore()), cast(Publisher, None))
    job = cast(signer_consumer.DeliveryJob, type("Job", (), {"endpoint_id": "ep"})())
    loads = asyncio.gather(*(signer._sealed_headers(job) for _ in range(50)))
    await store.entered.wait()
    store.gate.set()
    assert await loads == [None] * 50  # no custom headers: nothing to seal
    assert store.loads == 1
    assert await signer._sealed_headers(job) is None and store.loads == 1  # cached

    signer._headers.clear()
    store.gate.clear()
    store.entered.clear()
    racing = asyncio.ensure_future(signer._sealed_headers(job))
    await store.entered.wait()
    signer._forget_headers("ep")  # what a control message for the endpoint does
    store.gate.set()
    assert await racing is None
    assert "ep" not in signer._headers  # not cached: the next job asks again
