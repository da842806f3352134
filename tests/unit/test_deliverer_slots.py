"""EndpointSlots: an adaptive limit in flight per endpoint, a short wait for more, the rest
deferred."""

from __future__ import annotations

import asyncio

import pytest

from services.deliverer import concurrency
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
    slots = EndpointSlots(limit=2, waiting=1, max_wait=1.0)
    for _ in range(3):  # learn: the fast endpoint answers in a millisecond (given, not timed:
        # a busy machine once stretched a timed no-op slot past what 48 waiting may take)
        slots.limiter("fast").record(started=0.0, finished=0.001, failed=False, demand=1)
    slots.limiter("slow").record(started=0.0, finished=10.0, failed=False, demand=1)  # 10 s
    release = asyncio.Event()

    async def job(endpoint: str) -> None:
        async with slots.slot(endpoint):
            await release.wait()

    fast = [asyncio.ensure_future(job("fast")) for _ in range(50)]
    await asyncio.sleep(0)
    assert not slots.full("fast")  # 48 waiting on a near-zero latency: still short
    held = [asyncio.ensure_future(job("slow")) for _ in range(2)]
    await asyncio.sleep(0)
    assert slots.full("slow")  # one more would wait ~5 s: deferred instead
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


async def test_a_busy_endpoint_answering_well_gets_more_slots_up_to_the_maximum() -> None:
    slots = EndpointSlots(limit=6, waiting=100, max_wait=10, initial=2)
    peak = 0
    running = 0

    async def job() -> None:
        nonlocal peak, running
        async with slots.slot("ep"):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(job() for _ in range(40))), 10)
    assert peak == 6  # (then, the work done, it gives the unused slots back)
    assert 2 <= slots.limiter("ep").limit < 6
    assert slots.highest_limit() == 2  # no job here now: the initial limit


async def test_errors_leave_a_failing_endpoint_one_slot() -> None:
    slots = EndpointSlots(limit=8, waiting=100, max_wait=10)
    in_flight: list[int] = []
    running = 0

    async def job() -> None:
        nonlocal running
        async with slots.slot("ep") as ticket:
            running += 1
            in_flight.append(running)
            await asyncio.sleep(0.001)
            ticket.answer(503)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(job() for _ in range(40))), 10)
    assert in_flight[0:8] == list(range(1, 9))  # it started at its limit
    assert slots.limiter("ep").limit == 1 and in_flight[-5:] == [1] * 5


async def test_a_hanging_endpoint_is_held_to_what_it_has_and_the_rest_deferred(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(concurrency, "STALL_FLOOR", 0.05)  # hanging: after 50 ms, not 1 s
    slots = EndpointSlots(limit=10, waiting=10, max_wait=0.25, initial=4)
    async with slots.slot("ep"):
        pass  # a fast answer
    release = asyncio.Event()
    posted = 0

    async def job() -> None:
        nonlocal posted
        async with slots.slot("ep"):
            posted += 1
            await release.wait()

    hanging = [asyncio.ensure_future(job()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not slots.full("ep") and posted == 2  # two of four slots used, not hanging yet
    await asyncio.sleep(0.1)  # time passes: the two POSTs hang
    slots.full("ep")  # a new job comes: the oldest POST's age is seen
    assert slots.limiter("ep").limit == 2  # halved: the two hanging POSTs fill it
    third = asyncio.ensure_future(job())
    for _ in range(3):
        await asyncio.sleep(0)
    assert posted == 2  # no third POST joins them
    release.set()
    await asyncio.wait_for(asyncio.gather(*hanging, third), 5)
    assert posted == 3 and slots.users("ep") == 0


async def test_a_waiter_cancelled_just_after_its_turn_came_passes_the_slot_on() -> None:
    slots = EndpointSlots(limit=1, waiting=5, max_wait=10)
    entered: list[str] = []

    async def job(name: str) -> None:
        async with slots.slot("ep"):
            entered.append(name)

    async with slots.slot("ep"):  # held here; two jobs wait for it
        woken = asyncio.ensure_future(job("woken"))
        last = asyncio.ensure_future(job("last"))
        for _ in range(3):
            await asyncio.sleep(0)
    # leaving gave the slot to "woken" (nothing awaited since: its task has not run) ...
    woken.cancel()  # ... and it is cancelled before it does: the slot must go on to "last"
    await asyncio.gather(woken, return_exceptions=True)
    await asyncio.wait_for(last, 5)
    assert woken.cancelled() and entered == ["last"]
    assert slots.users("ep") == 0


async def test_a_skipped_slot_teaches_nothing_and_posting_starts_the_clock() -> None:
    """A rate-limited endpoint's wait for its turn happens inside the slot: it is neither a POST
    (:meth:`Ticket.skip`) nor part of the endpoint's latency (:meth:`Ticket.posting`)."""
    slots = EndpointSlots(limit=4, waiting=1, max_wait=0.25)
    async with slots.slot("ep") as ticket:
        ticket.skip()
    assert slots.limiter("ep").recent is None  # nothing recorded
    async with slots.slot("ep") as ticket:
        await asyncio.sleep(0.2)  # waiting for its turn, not the receiver
        ticket.posting()
    recent = slots.limiter("ep").recent
    assert recent is not None and recent < 0.1


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
