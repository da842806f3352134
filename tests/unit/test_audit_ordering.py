"""The acceptance gate of audit (services/audit/ordering.py): which facts wait, for what, and
for how long — on asyncio alone, with a look-up that counts its calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from services.audit.ordering import AcceptanceGate, awaits_acceptance
from tests.conftest import wait_for


@dataclass(frozen=True)
class Fact:
    kind: str
    event_id: str | None


class Lookup:
    """The database's answer: which events have their acceptance stored."""

    def __init__(self, stored: set[str] | None = None, *, fail: bool = False) -> None:
        self.stored = stored or set()
        self.fail = fail
        self.calls: list[list[str]] = []

    async def __call__(self, event_ids: Sequence[str]) -> set[str]:
        self.calls.append(list(event_ids))
        if self.fail:
            raise OSError("database unreachable")
        return self.stored & set(event_ids)


@pytest.mark.parametrize(("kind", "event_id", "waits"), [
    ("delivery.attempted", "evt_1", True),
    ("delivery.held", "evt_1", True),
    ("delivery.parked", "evt_1", True),
    ("delivery.parked", None, False),  # a job that could not be read: no event to wait for
    ("event.accepted", "evt_1", False),
    ("event.rejected", "evt_1", False),
    ("endpoint.created", None, False),
])
def test_only_facts_about_a_delivery_of_an_event_wait(kind: str, event_id: str | None,
                                                      waits: bool) -> None:
    assert awaits_acceptance(Fact(kind, event_id)) is waits


async def gate(lookup: Lookup, **options: float) -> AcceptanceGate:
    g = AcceptanceGate(lookup, **{"deadline": 5.0, "first_wait": 0.05, "poll": 0.05,
                                  **options})  # type: ignore[arg-type]
    g.start()
    return g


async def test_an_attempt_waits_for_the_acceptance_committed_here_without_a_query() -> None:
    lookup = Lookup()
    g = await gate(lookup, first_wait=5.0)
    waiting = asyncio.ensure_future(g.wait(Fact("delivery.attempted", "evt_1")))
    await asyncio.sleep(0)
    assert not waiting.done() and g.waiting == 1
    g.committed([Fact("event.accepted", "evt_2")])  # another event's acceptance: no
    await asyncio.sleep(0)
    assert not waiting.done()
    g.committed([Fact("event.accepted", "evt_1")])
    assert await asyncio.wait_for(waiting, 1) is True
    assert lookup.calls == [] and g.waiting == 0
    assert g.passes(Fact("delivery.attempted", "evt_1"))  # remembered: the next goes at once
    await g.stop()


async def test_an_acceptance_stored_by_another_replica_is_looked_up_in_one_batch() -> None:
    lookup = Lookup({"evt_1", "evt_2"})
    g = await gate(lookup)
    results = await asyncio.wait_for(asyncio.gather(
        g.wait(Fact("delivery.attempted", "evt_1")),
        g.wait(Fact("delivery.attempted", "evt_2")),
        g.wait(Fact("delivery.held", "evt_1"))), 2)
    assert results == [True, True, True]
    assert len(lookup.calls) == 1 and sorted(lookup.calls[0]) == ["evt_1", "evt_2"]
    await g.stop()


async def test_without_its_acceptance_a_fact_goes_after_the_deadline() -> None:
    lookup = Lookup()
    g = await gate(lookup, deadline=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await g.wait(Fact("delivery.attempted", "evt_1")) is False
    assert 0.3 <= loop.time() - started < 1.5
    assert len(lookup.calls) >= 2  # asked again while waiting
    assert g.waiting == 0  # nothing left behind
    await g.stop()


async def test_a_failing_lookup_means_keep_waiting_not_fail() -> None:
    lookup = Lookup(fail=True)
    g = await gate(lookup, deadline=0.3)
    waiting = asyncio.ensure_future(g.wait(Fact("delivery.attempted", "evt_1")))
    await wait_for(lambda: len(lookup.calls) >= 2, timeout=2)  # failed, asked again
    assert not waiting.done()
    g.committed([Fact("event.accepted", "evt_1")])
    assert await asyncio.wait_for(waiting, 1) is True
    await g.stop()


async def test_memory_is_bounded() -> None:
    g = await gate(Lookup(), remembered=2)
    g.committed([Fact("event.accepted", f"evt_{n}") for n in range(3)])
    assert not g.passes(Fact("delivery.attempted", "evt_0"))
    assert g.passes(Fact("delivery.attempted", "evt_1"))
    assert g.passes(Fact("delivery.attempted", "evt_2"))
    await g.stop()
