"""Per-endpoint concurrency: a few POSTs in flight, others waiting briefly, the rest deferred.

Why: holding every job of a slow endpoint in the process would fill the shared prefetch with
its work and stall every other endpoint, so a job that would wait too long is sent back through
a defer tier. But a bounce costs two broker hops (a publish, a wait queue, a consume again) and
adds the defer delay to its latency, and a busy *fast* endpoint is over its in-flight limit all
the time. So a job over the limit waits here, in order, when its expected wait is short:
``waiting * latency / limit <= max_wait``, with the endpoint's latency taken as the larger of
its recent average and the age of its oldest running POST (an endpoint that starts to hang is
seen as slow at once). With no latency known yet, at most ``waiting`` jobs wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

SMOOTHING = 0.2
"""Weight of the newest POST in an endpoint's latency average."""
REMEMBERED = 10_000
"""Endpoints whose latency is remembered (least recently used forgotten first)."""


class EndpointSlots:
    """``limit`` deliveries in flight per endpoint; how many more may wait: see the module."""

    def __init__(self, limit: int, waiting: int, max_wait: float) -> None:
        self._limit = limit
        self._waiting = waiting
        self._max_wait = max_wait
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}
        """Per endpoint: jobs holding or waiting for a slot."""
        self._running: dict[str, list[float]] = {}
        """Per endpoint: when each running POST started (monotonic)."""
        self._latency: OrderedDict[str, float] = OrderedDict()

    def users(self, endpoint: str) -> int:
        return self._users.get(endpoint, 0)

    def full(self, endpoint: str) -> bool:
        """True when a new job of ``endpoint`` should be deferred rather than wait here."""
        waiting = self._users.get(endpoint, 0) - self._limit
        if waiting < 0:
            return False
        running = self._running.get(endpoint)
        age = time.monotonic() - min(running) if running else 0.0
        known = self._latency.get(endpoint)
        if known is None:
            return waiting >= self._waiting
        latency = max(known, age, 1e-6)
        return (waiting + 1) * latency / self._limit > self._max_wait

    @asynccontextmanager
    async def slot(self, endpoint: str, first: Callable[[], Awaitable[None]] | None = None
                   ) -> AsyncIterator[None]:
        """Hold one of ``endpoint``'s slots (waiting for it first, in arrival order).

        ``first`` is awaited once the job counts as the endpoint's user (:meth:`full` sees it)
        and before it waits for a slot: work that must precede the POST (the deliverer's
        write-ahead) without holding a slot or counting in the endpoint's latency."""
        gate = self._gates.get(endpoint)
        if gate is None:
            gate = self._gates[endpoint] = asyncio.Semaphore(self._limit)
        self._users[endpoint] = self._users.get(endpoint, 0) + 1
        try:
            if first is not None:
                await first()
            async with gate:
                started = time.monotonic()
                running = self._running.setdefault(endpoint, [])
                running.append(started)
                try:
                    yield
                finally:
                    running.remove(started)
                    if not running:
                        del self._running[endpoint]
                    self._learn(endpoint, time.monotonic() - started)
        finally:
            left = self._users[endpoint] - 1
            if left:
                self._users[endpoint] = left
            else:  # nobody holds or waits: forget the gate (the latency is kept)
                del self._users[endpoint]
                del self._gates[endpoint]

    def _learn(self, endpoint: str, seconds: float) -> None:
        old = self._latency.pop(endpoint, None)
        self._latency[endpoint] = seconds if old is None else (
            old + SMOOTHING * (seconds - old))
        if len(self._latency) > REMEMBERED:
            self._latency.popitem(last=False)
