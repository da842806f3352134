"""EndpointSlots: `limit` in flight per endpoint, a short wait for more, the rest deferred."""

from __future__ import annotations

import asyncio

from services.deliverer.slots import EndpointSlots


async def test_jobs_beyond_the_limit_wait_in_order_then_the_endpoint_is_full() -> None:
    slots = EndpointSlots(limit=2, waiting=2, max_wait=0.25)
    release = asyncio.Event()
    order: list[int] = []

    async def job(n: int) -> None:
        async with slots.slot("ep"):
            order.append(n)
            await release.wait()

    tasks = [asyncio.ensure_future(job(n)) for n in range(4)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == [0, 1]  # two in flight, two waiting
    assert slots.users("ep") == 4 and slots.full("ep")
    assert not slots.full("other")  # endpoints do not share slots
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2, 3]
    assert slots.users("ep") == 0 and not slots.full("ep")


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    slots = EndpointSlots(limit=1, waiting=1, max_wait=0.25)
    release = asyncio.Event()

    async def job() -> None:
        async with slots.slot("ep"):
            await release.wait()

    holder = asyncio.ensure_future(job())
    waiter = asyncio.ensure_future(job())
    for _ in range(3):
        await asyncio.sleep(0)
    assert slots.full("ep")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert slots.users("ep") == 1 and not slots.full("ep")
    release.set()
    await asyncio.wait_for(holder, 5)
    assert slots.users("ep") == 0


async def test_zero_waiting_means_only_the_limit() -> None:
    slots = EndpointSlots(limit=1, waiting=0, max_wait=0.25)
    release = asyncio.Event()

    async def job() -> None:
        async with slots.slot("ep"):
            await release.wait()

    holder = asyncio.ensure_future(job())
    await asyncio.sleep(0)
    assert slots.full("ep")
    release.set()
    await asyncio.wait_for(holder, 5)
    assert not slots.full("ep")


async def test_a_fast_endpoint_may_queue_many_a_slow_one_few() -> None:
    slots = EndpointSlots(limit=2, waiting=1, max_wait=0.25)
    for _ in range(3):  # learn: the fast endpoint answers at once
        async with slots.slot("fast"):
            pass
    slots._latency["slow"] = 1.0  # learned: one second per POST
    release = asyncio.Event()

    async def job(endpoint: str) -> None:
        async with slots.slot(endpoint):
            await release.wait()

    fast = [asyncio.ensure_future(job("fast")) for _ in range(50)]
    await asyncio.sleep(0)
    assert not slots.full("fast")  # 48 waiting on a near-zero latency: still short
    held = [asyncio.ensure_future(job("slow")) for _ in range(2)]
    await asyncio.sleep(0)
    assert slots.full("slow")  # one more would wait ~0.5 s: deferred instead
    release.set()
    await asyncio.wait_for(asyncio.gather(*fast, *held), 5)


async def test_an_endpoint_that_starts_hanging_is_seen_as_slow_by_its_oldest_post() -> None:
    slots = EndpointSlots(limit=1, waiting=5, max_wait=0.05)
    async with slots.slot("ep"):
        pass  # a fast answer: latency near zero
    release = asyncio.Event()

    async def job() -> None:
        async with slots.slot("ep"):
            await release.wait()

    hanging = asyncio.ensure_future(job())
    await asyncio.sleep(0)
    assert not slots.full("ep")
    await asyncio.sleep(0.1)  # the running POST is now older than the wait budget
    assert slots.full("ep")
    release.set()
    await asyncio.wait_for(hanging, 5)


async def test_work_before_the_slot_counts_as_a_user_but_holds_no_slot() -> None:
    """The deliverer's write-ahead: the job is the endpoint's user meanwhile (so ``full``
    counts it), but slots stay free for others and the wait is not the endpoint's latency."""
    slots = EndpointSlots(limit=1, waiting=0, max_wait=0.25)
    confirmed = asyncio.Event()
    entered: list[str] = []

    async def ahead() -> None:
        await confirmed.wait()

    async def job(name: str, first: bool) -> None:
        async with slots.slot("ep", first=ahead if first else None):
            entered.append(name)

    slow = asyncio.ensure_future(job("write-ahead", True))
    await asyncio.sleep(0)
    assert slots.users("ep") == 1 and slots.full("ep")  # counted while it waits for the confirm
    await asyncio.wait_for(job("other", False), 5)  # the one slot was free all along
    confirmed.set()
    await asyncio.wait_for(slow, 5)
    assert entered == ["other", "write-ahead"] and slots.users("ep") == 0
