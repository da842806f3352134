"""Per-endpoint concurrency: a few POSTs in flight, a few more waiting, the rest deferred.

Why both limits: holding every job of a slow endpoint in the process would fill the shared
prefetch with its work and stall every other endpoint, so past a bound a job is sent back
through the defer tier. But bouncing a job costs as much broker and signing work as a delivery,
and a busy *fast* endpoint briefly over its in-flight limit would pay that again and again
(and each bounce adds the defer delay to its latency). So a job first waits here, in order,
for one of its endpoint's slots; only when ``waiting`` jobs already wait is it deferred. A slow
endpoint thus holds at most ``limit + waiting`` prefetch slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class EndpointSlots:
    """``limit`` deliveries in flight per endpoint, ``waiting`` more queued in the process."""

    def __init__(self, limit: int, waiting: int) -> None:
        self._limit = limit
        self._waiting = waiting
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}
        """Per endpoint: jobs holding or waiting for a slot."""

    def full(self, endpoint: str) -> bool:
        """True when a new job of ``endpoint`` would have neither a slot nor a place to wait."""
        return self._users.get(endpoint, 0) >= self._limit + self._waiting

    def users(self, endpoint: str) -> int:
        return self._users.get(endpoint, 0)

    @asynccontextmanager
    async def slot(self, endpoint: str) -> AsyncIterator[None]:
        """Hold one of ``endpoint``'s slots (waiting for it first, in arrival order)."""
        gate = self._gates.get(endpoint)
        if gate is None:
            gate = self._gates[endpoint] = asyncio.Semaphore(self._limit)
        self._users[endpoint] = self._users.get(endpoint, 0) + 1
        try:
            async with gate:
                yield
        finally:
            left = self._users[endpoint] - 1
            if left:
                self._users[endpoint] = left
            else:  # nobody holds or waits: forget the endpoint
                del self._users[endpoint]
                del self._gates[endpoint]
