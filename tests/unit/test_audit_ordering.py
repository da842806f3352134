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


async def test_a_cancelled_wait_leaves_the_other_facts_of_its_event_waiting() -> None:
    lookup = Lookup()
    g = await gate(lookup, first_wait=5.0)
    first = asyncio.ensure_future(g.wait(Fact("delivery.attempted", "evt_1")))
    second = asyncio.ensure_future(g.wait(Fact("delivery.held", "evt_1")))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert g.waiting == 1 and not second.done()
    g.committed([Fact("event.accepted", "evt_1")])
    assert await asyncio.wait_for(second, 1) is True
    assert g.waiting == 0
    await g.stop()


async def test_each_fact_gives_up_at_its_own_deadline_not_at_the_next_poll() -> None:
    lookup = Lookup()
    g = await gate(lookup, deadline=0.3, first_wait=0.05, poll=30.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    early = asyncio.ensure_future(g.wait(Fact("delivery.attempted", "evt_1")))
    await asyncio.sleep(0.15)
    late = asyncio.ensure_future(g.wait(Fact("delivery.held", "evt_1")))
    assert await asyncio.wait_for(early, 2) is False
    assert 0.3 <= loop.time() - started < 0.45  # its deadline, not the 30 s poll
    assert not late.done()  # arrived later: its own deadline
    assert await asyncio.wait_for(late, 2) is False
    assert 0.45 <= loop.time() - started < 0.7
    assert g.waiting == 0
    await g.stop()


async def test_the_events_due_together_are_asked_about_in_one_query() -> None:
    lookup = Lookup({f"evt_{n}" for n in range(0, 300, 2)})  # every other one elsewhere
    g = await gate(lookup, deadline=0.5, first_wait=0.05, poll=0.05)
    results = await asyncio.wait_for(asyncio.gather(
        *(g.wait(Fact("delivery.attempted", f"evt_{n}")) for n in range(300))), 3)
    assert results == [n % 2 == 0 for n in range(300)]
    first_query = lookup.calls[0]
    assert len(first_query) == 300  # one query for the 300 events due at once
    # then only the missing ones, still together: about one query per poll until the
    # deadline (~10), a few more where a busy loop splits a round — not one per event (1,500)
    assert all(int(e[4:]) % 2 == 1 for call in lookup.calls[1:] for e in call)
    assert 2 <= len(lookup.calls) <= 40
    await g.stop()


async def test_stopping_cancels_the_facts_still_waiting() -> None:
    g = await gate(Lookup(), first_wait=5.0)
    waiting = asyncio.ensure_future(g.wait(Fact("delivery.attempted", "evt_1")))
    await asyncio.sleep(0)
    await g.stop()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert g.waiting == 0
