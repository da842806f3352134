"""Acceptance first: an event's delivery facts are stored after its ``event.accepted``.

Why: a fact that names no data subject (an attempt, a held or parked delivery) is sealed with
the subject of its event, found through the event's *stored* records (:func:`sealing.plan`).
Ingest, signer and deliverer publish an event's facts concurrently, each kind in a lingering
batch of its own, so an attempt can reach audit before the acceptance that names the subject;
stored first, it would stay unsealed and survive the subject's erasure. So a delivery fact
waits — its message unacked — until its event's acceptance is committed, by this process
(awaited, no query) or by another replica (looked up, in batches).

An acceptance may never come: purged by retention before a late manual retry, or parked as
unstorable. After ``deadline`` seconds the fact is stored all the same (unlinked, as before
this gate existed), counted in ``dihya_audit_stored_before_acceptance_total`` and logged.

At saturation most delivery facts wait here for a moment, so waiting is cheap: a fact awaits a
future of its own (no timer, no task per fact); one checker task asks the database, in one
query per due batch of events, about the events whose first wait or poll is over, and gives up
on the facts whose deadline has passed. (Each fact used to run ``wait_for`` on a shielded
future: a timer and a task per fact, a fifth of audit's CPU at saturation.)
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

log = structlog.get_logger("dihya.audit.ordering")

FIRST_WAIT = 0.5
"""Seconds a fact waits for this process to commit its event's acceptance before asking the
database: in steady flow the acceptance is in this process's current batch, and a query per
fact would cost more than the wait."""

POLL = 1.0
"""Seconds between two look-ups while the acceptance is still missing."""

REMEMBERED = 100_000
"""Accepted event ids kept in memory (oldest forgotten first): a later fact of an older event
costs one batched look-up."""

LOOKUP_SIZE = 500
"""Event ids asked about in one query at most."""

COALESCE = 0.01
"""Seconds: events due this soon after the first due one are asked about in the same query
(each fact's wait starts at its own instant; a check a few milliseconds early is harmless)."""


class _Fact(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def event_id(self) -> str | None: ...


def awaits_acceptance(fact: _Fact) -> bool:
    """Whether ``fact`` must be stored after its event's ``event.accepted``: every fact about
    one delivery of an event (they all follow the event's fan-out)."""
    return fact.event_id is not None and fact.kind.startswith("delivery.")


@dataclass
class _Event:
    """The facts of one event waiting for its acceptance, and when to ask about it next."""

    check_at: float
    waiters: list[tuple[asyncio.Future[bool], float]] = field(default_factory=list)
    """Each waiting fact's future and the loop time it gives up at."""


class AcceptanceGate:
    """Holds delivery facts until their event's acceptance is stored (see the module doc).

    ``lookup`` answers, for event ids, which have an ``event.accepted`` record stored; the
    checker asks it about every event due at once (at most :data:`LOOKUP_SIZE` per query).
    """

    def __init__(
        self,
        lookup: Callable[[Sequence[str]], Awaitable[set[str]]],
        *,
        deadline: float,
        first_wait: float = FIRST_WAIT,
        poll: float = POLL,
        remembered: int = REMEMBERED,
    ) -> None:
        self._lookup = lookup
        self._deadline = deadline
        self._first_wait = first_wait
        self._poll = poll
        self._remembered = remembered
        self._accepted: OrderedDict[str, None] = OrderedDict()
        self._events: dict[str, _Event] = {}
        self._due: list[tuple[float, int, str]] = []
        """(check time, tie-break, event id): a heap; entries whose event was answered or
        rescheduled meanwhile are skipped when they come up."""
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._checker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._checker = asyncio.create_task(self._check(), name="acceptance checker")

    async def stop(self, grace: float = 1.0) -> None:
        """Stop asking; facts still waiting (none once the consumers stopped) are cancelled:
        their messages go back to the queue."""
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        for event in self._events.values():
            for future, _ in event.waiters:
                future.cancel()
        self._events.clear()

    @property
    def waiting(self) -> int:
        """Events with at least one fact waiting for their acceptance."""
        return len(self._events)

    def committed(self, facts: Iterable[_Fact]) -> None:
        """Note the acceptances among ``facts``, just committed; wake the facts waiting."""
        for fact in facts:
            if fact.kind == "event.accepted" and fact.event_id is not None:
                self._remember(fact.event_id)

    def passes(self, fact: _Fact) -> bool:
        """Whether ``fact`` may be stored now, without waiting."""
        return not awaits_acceptance(fact) or fact.event_id in self._accepted

    async def wait(self, fact: _Fact) -> bool:
        """Return once ``fact`` may be stored: True if its acceptance is stored (or it needs
        none), False if ``deadline`` passed without it."""
        event_id = fact.event_id
        if event_id is None or self.passes(fact):
            return True
        loop = asyncio.get_running_loop()
        now = loop.time()
        give_up = now + self._deadline
        event = self._events.get(event_id)
        if event is None:
            event = self._events[event_id] = _Event(now + min(self._first_wait, self._deadline))
            self._schedule(event_id, event.check_at)
        elif give_up < event.check_at:  # possible only with a deadline under the poll
            event.check_at = give_up
            self._schedule(event_id, give_up)
        future: asyncio.Future[bool] = loop.create_future()
        event.waiters.append((future, give_up))
        try:
            return await future
        finally:
            if future.cancelled():  # this fact's wait was (the service stopping)
                self._drop(event_id, future)

    def _schedule(self, event_id: str, at: float) -> None:
        earliest = self._due[0][0] if self._due else None
        heapq.heappush(self._due, (at, next(self._order), event_id))
        if earliest is None or at < earliest:  # else the checker wakes before it anyway
            self._wake.set()

    def _drop(self, event_id: str, future: asyncio.Future[bool]) -> None:
        event = self._events.get(event_id)
        if event is None:
            return
        event.waiters = [(f, g) for f, g in event.waiters if f is not future]
        if not event.waiters:
            del self._events[event_id]

    def _remember(self, event_id: str) -> None:
        self._accepted[event_id] = None
        self._accepted.move_to_end(event_id)
        while len(self._accepted) > self._remembered:
            self._accepted.popitem(last=False)
        event = self._events.pop(event_id, None)
        if event is not None:
            for future, _ in event.waiters:
                if not future.done():
                    future.set_result(True)

    async def _check(self) -> None:
        """Ask about the events whose next check has come, in batches, forever."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._due[0][0] - loop.time()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # an earlier check than the first due one wakes this (a short deadline)
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            horizon = loop.time() + COALESCE
            ids: list[str] = []
            while self._due and self._due[0][0] <= horizon and len(ids) < LOOKUP_SIZE:
                at, _, event_id = heapq.heappop(self._due)
                event = self._events.get(event_id)
                if event is not None and event.check_at == at and event_id not in ids:
                    ids.append(event_id)
            if ids:
                await self._ask(ids)

    async def _ask(self, event_ids: list[str]) -> None:
        try:
            found = await self._lookup(event_ids)
        except Exception as exc:  # the database is away: keep waiting (and asking)
            log.warning("acceptance_lookup_failed", error=str(exc))
            found = set()
        now = asyncio.get_running_loop().time()
        for event_id in event_ids:
            if event_id in found:
                self._remember(event_id)
                continue
            event = self._events.get(event_id)
            if event is None:  # committed here while the query ran
                continue
            kept = []
            for future, give_up in event.waiters:
                if give_up <= now:
                    if not future.done():
                        future.set_result(False)
                else:
                    kept.append((future, give_up))
            if not kept:
                del self._events[event_id]
                continue
            event.waiters = kept
            event.check_at = min(now + self._poll, min(g for _, g in kept))
            self._schedule(event_id, event.check_at)
