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
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import structlog

from shared.batching import Batcher

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


class _Fact(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def event_id(self) -> str | None: ...


def awaits_acceptance(fact: _Fact) -> bool:
    """Whether ``fact`` must be stored after its event's ``event.accepted``: every fact about
    one delivery of an event (they all follow the event's fan-out)."""
    return fact.event_id is not None and fact.kind.startswith("delivery.")


class AcceptanceGate:
    """Holds delivery facts until their event's acceptance is stored (see the module doc).

    ``lookup`` answers, for event ids, which have an ``event.accepted`` record stored; calls
    from concurrent waiters are batched into one query.
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
        self._deadline = deadline
        self._first_wait = first_wait
        self._poll = poll
        self._remembered = remembered
        self._accepted: OrderedDict[str, None] = OrderedDict()
        self._waiting: dict[str, asyncio.Future[None]] = {}

        async def look_up(event_ids: Sequence[str]) -> list[bool]:
            found = await lookup(list(dict.fromkeys(event_ids)))
            return [event_id in found for event_id in event_ids]

        self._lookups: Batcher[str, bool] = Batcher(look_up, size=500, name="acceptance lookups")

    def start(self) -> None:
        self._lookups.start()

    async def stop(self, grace: float = 1.0) -> None:
        await self._lookups.stop(grace)

    @property
    def waiting(self) -> int:
        """Events with at least one fact waiting for their acceptance."""
        return len(self._waiting)

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
        give_up = loop.time() + self._deadline
        signal = self._waiting.get(event_id)
        if signal is None:
            signal = self._waiting[event_id] = loop.create_future()
        pause = self._first_wait
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(signal),
                                       max(0.0, min(pause, give_up - loop.time())))
            except TimeoutError:
                pass
            else:
                return True
            try:
                found = await self._lookups.submit(event_id)
            except Exception as exc:  # the database is away: keep waiting (and asking)
                log.warning("acceptance_lookup_failed", error=str(exc))
                found = False
            if found:
                self._remember(event_id)
                return True
            if loop.time() >= give_up:
                if self._waiting.get(event_id) is signal:
                    del self._waiting[event_id]
                return False
            pause = self._poll

    def _remember(self, event_id: str) -> None:
        self._accepted[event_id] = None
        self._accepted.move_to_end(event_id)
        while len(self._accepted) > self._remembered:
            self._accepted.popitem(last=False)
        signal = self._waiting.pop(event_id, None)
        if signal is not None and not signal.done():
            signal.set_result(None)
