"""The pace gate: rate-limited endpoints' POSTs go one at a time through their :class:`Pacer`.

Thin asyncio around :mod:`services.deliverer.pacing` (the decisions): per endpoint, the jobs
waiting for their turn queue on one lock (asyncio locks are fair: arrival order), and the
holder sleeps until the pacer allows a POST, records it and lets the next one in. A job whose
wait would exceed ``max_wait`` gives up its turn (``False``): the caller puts it back through a
defer tier instead of holding a prefetch slot that long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.deliverer.pacing import Pacer
from shared.contracts import RateLimit


class PaceGate:
    """One per deliverer process; see the module."""

    def __init__(self, pacer: Pacer, max_wait: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pacer = pacer
        self._max_wait = max_wait
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, int] = {}
        self._seen: set[int] = set()

    def arrived(self, shard: int, redelivered: bool) -> None:
        """A message of paced queue ``shard`` came: its first, or a redelivered one (a
        takeover hands those over first) may mean this process just became the queue's active
        consumer (:meth:`Pacer.activate`)."""
        if redelivered or shard not in self._seen:
            self._seen.add(shard)
            self._pacer.activate(shard, self._clock())

    def too_long(self, endpoint: str, limit: RateLimit) -> bool:
        """Would a new job of ``endpoint`` wait longer than ``max_wait`` for its turn?"""
        return self._pacer.expected_wait(endpoint, limit, self._clock(),
                                         self._queued.get(endpoint, 0)) > self._max_wait

    async def turn(self, endpoint: str, limit: RateLimit) -> bool:
        """Wait for ``endpoint``'s next POST time and take it (``True``: POST now), or give
        up (``False``) once the wait has grown beyond ``max_wait`` (a ``Retry-After``)."""
        lock = self._locks.get(endpoint)
        if lock is None:
            lock = self._locks[endpoint] = asyncio.Lock()
        self._queued[endpoint] = self._queued.get(endpoint, 0) + 1
        try:
            async with lock:
                while True:
                    now = self._clock()
                    wait = self._pacer.wait(endpoint, limit, now)
                    if wait <= 0:
                        self._pacer.sent(endpoint, limit, now)
                        return True
                    if wait > self._max_wait:
                        return False
                    await asyncio.sleep(wait)
        finally:
            left = self._queued[endpoint] - 1
            if left:
                self._queued[endpoint] = left
            else:
                del self._queued[endpoint]
                del self._locks[endpoint]

    def promise(self, endpoint: str, limit: RateLimit) -> float:
        """Seconds a job of ``endpoint`` deferred now should wait (:meth:`Pacer.promise`)."""
        return self._pacer.promise(endpoint, limit, self._clock(),
                                   self._queued.get(endpoint, 0))

    def hold(self, endpoint: str, limit: RateLimit, seconds: float) -> None:
        """No POST of ``endpoint`` for ``seconds`` (the receiver's ``Retry-After``)."""
        self._pacer.hold(endpoint, limit, self._clock() + seconds)
