"""The byte budget of audit's fact consumer (services/audit/budget.py), on asyncio alone."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.budget import ByteBudget
from services.audit.decisions import budget_of


async def test_holds_beyond_the_limit_wait_and_go_in_arrival_order() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(name)
            await release.wait()

    first = asyncio.ensure_future(hold("a", 60))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(hold("b", 60))  # 120 > 100: waits
    third = asyncio.ensure_future(hold("c", 10))  # would fit, but b came first
    await asyncio.sleep(0)
    assert order == ["a"] and budget.held == 60
    release.set()
    await asyncio.gather(first, second, third)
    assert order == ["a", "b", "c"] and budget.held == 0


async def test_a_hold_larger_than_the_limit_goes_alone() -> None:
    budget = ByteBudget(100)
    async with budget.hold(1_000):
        assert budget.held == 100
    assert budget.held == 0


async def test_a_cancelled_waiter_lets_the_ones_behind_it_in() -> None:
    budget = ByteBudget(100)
    entered = asyncio.Event()
    async with budget.hold(50):
        big = asyncio.ensure_future(budget.hold(80).__aenter__())
        await asyncio.sleep(0)

        async def small() -> None:
            async with budget.hold(40):
                entered.set()

        later = asyncio.ensure_future(small())
        await asyncio.sleep(0)
        assert not entered.is_set()  # behind the big one, in order
        big.cancel()
        with pytest.raises(asyncio.CancelledError):
            await big
        await asyncio.wait_for(entered.wait(), 1)  # 50 + 40 fit once the big one left
        await later
    assert budget.held == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=30),
       st.integers(min_value=1, max_value=250))
def test_never_more_than_the_limit_is_held(sizes: list[int], limit: int) -> None:
    async def scenario() -> None:
        budget = ByteBudget(limit)
        peak = 0

        async def hold(size: int) -> None:
            nonlocal peak
            async with budget.hold(size):
                peak = max(peak, budget.held)
                await asyncio.sleep(0)

        await asyncio.gather(*(hold(size) for size in sizes))
        assert peak <= limit and budget.held == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("routing_key", "budget"), [
    ("delivery.attempted", "delivery"),
    ("delivery.started", "delivery"),
    ("delivery.dead_lettered", "delivery"),
    ("event.accepted", "other"),  # delivery facts wait for these: never in their budget
    ("endpoint.created", "other"),
    (None, "other"),
    ("dihya.audit.facts", "other"),  # a parked message sent back (routed by its queue)
])
def test_delivery_facts_and_the_acceptances_they_wait_for_never_share_a_budget(
        routing_key: str | None, budget: str) -> None:
    assert budget_of(routing_key) == budget
