"""The pace gate: rate-limited endpoints' POSTs go one at a time through their :class:`Pacer`.

Thin asyncio around :mod:`services.deliverer.decisions.pacing`: per endpoint, the jobs
waiting for their turn queue on one lock (asyncio locks are fair: arrival order), and the
holder sleeps until the pacer allows a POST, records it and lets the next one in. A job whose
wait would exceed ``max_wait`` gives up its turn (``None``): the caller puts it back through a
defer tier instead of holding a prefetch slot that long.

What the receiver counts is when requests arrive, so the pace is kept where they leave: a
:class:`Turn` is told when its request was written (:meth:`Turn.written`, from aiohttp's
``on_request_headers_sent``), a late one moves the endpoint's schedule by its delay
(:meth:`Pacer.late`), and the next turn is not given before the previous one was written or
closed (at most ``WRITE_WAIT``: a POST stuck connecting does not hold its endpoint longer).
Measured before this, on a loaded 2-vCPU machine: requests granted 220 ms apart arrived as
little as 117 ms apart.

A stopping deliverer closes its gate (:meth:`PaceGate.close`) before it cancels its paced
consumers: from then on no turn is given (the jobs waiting for one are deferred, as when their
turn is too far off), so once RabbitMQ makes another replica the paced queues' active consumer
the two never POST to one endpoint side by side. Measured before this: a replica stopped with
a 2 s grace went on POSTing the turns its jobs were waiting for while the replica taking over
started its own, 6 arrivals in one second at a 5/s endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from services.deliverer.decisions.pacing import Pacer
from shared.contracts import RateLimit

WRITE_WAIT = 5.0
"""Seconds the next turn waits at most for the previous request of its endpoint to be written."""


class Turn:
    """One granted POST of a paced endpoint: say when its request was written, then close."""

    def __init__(self, gate: PaceGate, endpoint: str, granted: float) -> None:
        self._gate = gate
        self._endpoint = endpoint
        self._granted = granted
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def written(self) -> None:
        """The request has just been written (its headers at least)."""
        if not self.done.done():
            self._gate._pacer.late(self._endpoint, self._granted, self._gate._clock())
            self.close()

    def close(self) -> None:
        """No more to say (written, or the POST failed before a byte left)."""
        if not self.done.done():
            self.done.set_result(None)
        if self._gate._unwritten.get(self._endpoint) is self:
            del self._gate._unwritten[self._endpoint]


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
        self._unwritten: dict[str, Turn] = {}
        self._closed = asyncio.Event()

    def close(self) -> None:
        """Give no more turns: every job waiting for one, and every later one, gets ``None``
        (the process is stopping and another will pace its endpoints; see the module)."""
        self._closed.set()

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

    async def turn(self, endpoint: str, limit: RateLimit) -> Turn | None:
        """Wait for ``endpoint``'s next POST time and take it (a :class:`Turn`: POST now, then
        tell it when written and close it), or give up (``None``) once the wait has grown
        beyond ``max_wait`` (a ``Retry-After``) or the gate is closed."""
        lock = self._locks.get(endpoint)
        if lock is None:
            lock = self._locks[endpoint] = asyncio.Lock()
        self._queued[endpoint] = self._queued.get(endpoint, 0) + 1
        try:
            async with lock:
                previous = self._unwritten.get(endpoint)
                if previous is not None:  # its delay, if any, moves this turn (see module)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(previous.done), WRITE_WAIT)
                while not self._closed.is_set():
                    now = self._clock()
                    wait = self._pacer.wait(endpoint, limit, now)
                    if wait <= 0:
                        self._pacer.sent(endpoint, limit, now)
                        turn = self._unwritten[endpoint] = Turn(self, endpoint, now)
                        return turn
                    if wait > self._max_wait:
                        return None
                    with contextlib.suppress(TimeoutError):  # woken early by close()
                        await asyncio.wait_for(self._closed.wait(), wait)
                return None
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
