"""Per-endpoint concurrency: a few POSTs in flight, others waiting briefly, the rest deferred.

Why: holding every job of a slow endpoint in the process would fill the shared prefetch with
its work and stall every other endpoint, so a job that would wait too long is sent back through
a defer tier. But a bounce costs two broker hops (a publish, a wait queue, a consume again) and
adds the defer delay to its latency, and a busy *fast* endpoint is over its in-flight limit all
the time. So a job over the limit waits here, in order, when its expected wait is short:
``waiting * latency / limit <= max_wait``, with the endpoint's latency taken as the larger of
its recent average and the age of its oldest running POST (an endpoint that starts to hang is
seen as slow at once). With no latency known yet (and no POST running longer than
``max_wait``), at most ``waiting`` jobs wait.

The limit is each endpoint's own and moves with its answers
(:class:`~services.deliverer.concurrency.AdaptiveLimit`): up to ``limit`` (the maximum) while
it answers well and is busy, down to one while it fails or hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from services.deliverer.concurrency import AdaptiveLimit, congested

REMEMBERED = 10_000
"""Endpoints whose limit and latency are remembered (least recently used forgotten first)."""


@dataclass
class Ticket:
    """A held slot; tell it what the POST got (:meth:`answer`), or it counts as a success."""

    started: float
    """When the POST started (monotonic): when the slot was taken, unless :meth:`posting`."""
    failed: bool = False
    posted: bool = True

    def posting(self) -> None:
        """The POST starts now (a wait inside the slot, e.g. a rate limit's turn, is not the
        endpoint's latency)."""
        self.started = time.monotonic()

    def skip(self) -> None:
        """No POST after all (e.g. deferred): the slot taught nothing about the endpoint."""
        self.posted = False

    def answer(self, status: int | None, error: str | None = None) -> None:
        """The POST's HTTP status, or ``None`` and the kind of error that prevented one."""
        self.failed = congested(status, error)


@dataclass
class _Gate:
    """One endpoint's slots in use and the jobs waiting for one, in arrival order."""

    running: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class EndpointSlots:
    """Up to ``limit`` deliveries in flight per endpoint (its adaptive limit starts at
    ``initial``, ``limit`` when not given); how many more may wait: see the module."""

    def __init__(self, limit: int, waiting: int, max_wait: float,
                 initial: int | None = None) -> None:
        self._maximum = limit
        self._initial = min(limit, initial if initial is not None else limit)
        self._waiting = waiting
        self._max_wait = max_wait
        self._gates: dict[str, _Gate] = {}
        self._users: dict[str, int] = {}
        """Per endpoint: jobs holding or waiting for a slot."""
        self._running: dict[str, list[float]] = {}
        """Per endpoint: when each running POST started (monotonic, oldest first)."""
        self._limits: OrderedDict[str, AdaptiveLimit] = OrderedDict()

    def users(self, endpoint: str) -> int:
        return self._users.get(endpoint, 0)

    def limiter(self, endpoint: str) -> AdaptiveLimit:
        """``endpoint``'s limit (a new one at the initial limit if it is not remembered)."""
        limiter = self._limits.pop(endpoint, None)
        if limiter is None:
            limiter = AdaptiveLimit(self._maximum, self._initial)
        self._limits[endpoint] = limiter
        if len(self._limits) > REMEMBERED:
            self._limits.popitem(last=False)
        return limiter

    def highest_limit(self) -> float:
        """The highest limit among the endpoints with jobs here now (the initial limit when
        none has): the ``dihya_deliverer_endpoint_concurrency`` gauge."""
        return float(max((self._limits[e].limit for e in list(self._gates) if e in self._limits),
                         default=self._initial))

    def full(self, endpoint: str) -> bool:
        """True when a new job of ``endpoint`` should be deferred rather than wait here."""
        limiter = self._limits.get(endpoint)
        running = self._running.get(endpoint)
        now = time.monotonic()
        age = now - running[0] if running else 0.0
        if limiter is not None and running:
            limiter.stalled(age, now)  # a hanging endpoint drops to one slot
        limit = limiter.limit if limiter is not None else self._initial
        waiting = self._users.get(endpoint, 0) - limit
        if waiting < 0:
            return False
        known = limiter.recent if limiter is not None else None
        if known is None and age <= self._max_wait:  # no answer yet, none overdue either
            return waiting >= self._waiting
        latency = max(known or 0.0, age, 1e-6)
        return (waiting + 1) * latency / limit > self._max_wait

    @asynccontextmanager
    async def slot(self, endpoint: str, first: Callable[[], Awaitable[None]] | None = None
                   ) -> AsyncIterator[Ticket]:
        """Hold one of ``endpoint``'s slots (waiting for it first, in arrival order).

        ``first`` is awaited once the job counts as the endpoint's user (:meth:`full` sees it)
        and before it waits for a slot: work that must precede the POST (the deliverer's
        write-ahead) without holding a slot or counting in the endpoint's latency."""
        limiter = self.limiter(endpoint)
        gate = self._gates.get(endpoint)
        if gate is None:
            gate = self._gates[endpoint] = _Gate()
        self._users[endpoint] = self._users.get(endpoint, 0) + 1
        try:
            if first is not None:
                await first()
            await self._acquire(gate, limiter)
            started = time.monotonic()
            running = self._running.setdefault(endpoint, [])
            running.append(started)
            ticket = Ticket(started)
            answered = False
            try:
                yield ticket
                answered = True
            finally:
                running.remove(started)
                if not running:
                    del self._running[endpoint]
                gate.running -= 1
                # a cancelled or skipped POST says nothing about the endpoint
                if answered and ticket.posted:
                    limiter.record(started=ticket.started, finished=time.monotonic(),
                                   failed=ticket.failed, demand=self._users[endpoint])
                self._wake(gate, limiter)
        finally:
            left = self._users[endpoint] - 1
            if left:
                self._users[endpoint] = left
            else:  # nobody holds or waits: forget the gate (the limit is kept)
                del self._users[endpoint]
                del self._gates[endpoint]

    async def _acquire(self, gate: _Gate, limiter: AdaptiveLimit) -> None:
        if gate.running < limiter.limit and not gate.waiters:
            gate.running += 1
            return
        turn = asyncio.get_running_loop().create_future()
        gate.waiters.append(turn)
        try:
            await turn  # _wake counts this job as running before it resolves the future
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # woken, then cancelled: pass it on
                gate.running -= 1
                self._wake(gate, limiter)
            elif turn in gate.waiters:  # (_wake drops a cancelled one it meets)
                gate.waiters.remove(turn)
            raise

    @staticmethod
    def _wake(gate: _Gate, limiter: AdaptiveLimit) -> None:
        while gate.waiters and gate.running < limiter.limit:
            turn = gate.waiters.popleft()
            if not turn.done():
                gate.running += 1
                turn.set_result(None)
