"""Catch-up mode (``DIHYA_DELIVERER_CATCH_UP``): once an endpoint that was failing is back, its
retries waiting in the retry tiers are sent now instead of waiting out their delays, while
every other endpoint's keep their schedule (docs/operations.md, "Catch-up").

Two parts:

* :class:`Requests`, in every deliverer: a retry delivered on its schedule means its endpoint
  was failing and answers again, so it publishes a :class:`~shared.contracts.CatchUpRequest`
  (at most one per endpoint per ``CATCH_UP_INTERVAL`` from one replica), in the background:
  the delivery's ack never waits for it, and a lost request only leaves the schedule as it was.
* :class:`Sweeper`, the handler of ``dihya.deliverer.catch-up`` (one active consumer among the
  replicas). Requests that arrive together are served by one sweep. A sweep reads, tier by tier
  (those of ``CATCH_UP_MIN_TIER`` and longer), the side queue holding older retries and then
  the tier itself, up to the number of messages each held when it began: a caught-up
  endpoint's retries go to the signer (the same job: its next attempt, made early), paced by
  the depth of the job queues; every other one goes, in the order read, to the tier's other
  (empty) side queue with the wait it had left, so it leaves when it would have. Each message
  is acked once its publish is confirmed: a sweep killed half-way sends some retries twice
  (same delivery and webhook id), never loses one. The request is acked once its sweep is
  done, so a killed sweeper's request is redelivered to the next replica, which finishes the
  job (what the first one had moved stays moved). Pure decisions in
  :mod:`services.deliverer.decisions.catchup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydantic import ValidationError

from services.deliverer.decisions import catchup as decide
from services.deliverer.decisions import schedule_for
from services.deliverer.metrics import CATCH_UP, CATCH_UP_PACED
from services.deliverer.settings import Settings
from shared import outages, telemetry, topology
from shared.broker import Delivery, Publisher, confirm_all, declare_queue, ready_count, take
from shared.contracts import CatchUpRequest, DeliveryJob, utcnow

if TYPE_CHECKING:
    from services.deliverer.consumer import WaitTiers

log = structlog.get_logger("dihya.deliverer")

SWEEP_BATCH = 256
"""Messages a sweep reads and publishes at once (one round trip of confirms per batch)."""
PACE_POLL = 0.2
"""Seconds between two looks at the job queues while a sweep waits for them to drain."""
REQUESTS_PREFETCH = 100
"""Catch-up requests the active sweeper holds at once (those of one sweep, and the next's)."""
SWEPT_KEPT = 10_000
"""Endpoints whose last sweep time the sweeper remembers (to drop requests it covered)."""


class Requests:
    """Asks for a catch-up when a retry is delivered on its schedule (every replica)."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self._publisher = publisher
        self._schedule = settings.retry_delays_ms
        self._jitter = settings.retry_jitter
        self._debounce = decide.Debounce(settings.catch_up_interval)

    def delivered(self, job: DeliveryJob, now: datetime
                  ) -> Coroutine[Any, Any, None] | None:
        """The publishing of a request if ``job``'s delivery (at ``now``) says its endpoint is
        back and it has not asked lately; ``None`` otherwise. The caller runs it in the
        background."""
        if not decide.wants_catch_up(job, True, schedule_for(job, self._schedule),
                                     self._jitter, now):
            return None
        return self._ask(job, now)

    def breaker_closed(self, job: DeliveryJob, now: datetime
                       ) -> Coroutine[Any, Any, None] | None:
        """As :meth:`delivered`, when ``job``'s delivery closed its endpoint's circuit breaker
        — whatever its attempt number: a new event's first attempt is the breaker's usual
        probe, and its retries wait in the long tiers the breaker sent them to. Not for a
        rate-limited or ordered endpoint (:func:`decide.wants_catch_up`)."""
        if job.rate_limit is not None or job.fifo_key is not None:
            return None
        return self._ask(job, now)

    def _ask(self, job: DeliveryJob, now: datetime) -> Coroutine[Any, Any, None] | None:
        if not self._debounce.allow(job.endpoint_id, time.monotonic()):
            return None
        return self._send(CatchUpRequest(endpoint_id=job.endpoint_id, requested_at=now,
                                         retry_schedule_ms=job.retry_schedule_ms))

    async def _send(self, request: CatchUpRequest) -> None:
        try:
            await self._publisher.send(topology.WORK_EXCHANGE, topology.CATCH_UP_KEY, request)
        except Exception as exc:  # its retries keep their schedule: nothing is lost
            log.warning("catch_up_request_failed", endpoint_id=request.endpoint_id,
                        error=outages.describe(exc))
            return
        CATCH_UP.labels("requested").inc()
        log.info("catch_up_requested", endpoint_id=request.endpoint_id)


class Sweeper:
    """Serves catch-up requests: one sweep at a time, for every endpoint asked meanwhile."""

    def __init__(self, settings: Settings, connection: AbstractRobustConnection,
                 publisher: Publisher, tiers: WaitTiers) -> None:
        self._connection = connection
        self._publisher = publisher
        self._tiers = tiers
        self._deployment = settings.retry_delays_ms
        self._min_tier_ms = settings.catch_up_min_tier_ms
        self._max_queued = settings.catch_up_max_queued
        self._defer_queues = tuple(topology.defer_queue(d) for d in settings.defer_delays_ms)
        self._pending: dict[str, tuple[int, ...]] = {}
        """Endpoints asked for since the running sweep began, with their own tiers."""
        self._waiters: list[asyncio.Future[None]] = []
        self._running: set[str] = set()
        self._done: asyncio.Future[None] | None = None
        """Settles when the running sweep ends (requests for its endpoints wait for it)."""
        self._runner: asyncio.Task[None] | None = None
        self._swept: OrderedDict[str, datetime] = OrderedDict()
        self._budget = 0

    async def on_request(self, message: Delivery) -> None:
        """A catch-up request: acked once a sweep covering its endpoint is done."""
        try:
            request = CatchUpRequest.model_validate_json(message.body)
        except ValidationError as exc:  # nothing to sweep for; the schedule stands
            log.warning("catch_up_request_invalid", error=str(exc)[:300])
            return
        endpoint = request.endpoint_id
        if endpoint in self._running and self._done is not None:
            CATCH_UP.labels("collapsed").inc()
            await asyncio.shield(self._done)
            return
        if decide.collapsed(request.requested_at, self._swept.get(endpoint)):
            CATCH_UP.labels("collapsed").inc()
            return
        own = request.retry_schedule_ms or ()
        self._pending[endpoint] = tuple(sorted({*self._pending.get(endpoint, ()), *own}))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="catch-up-sweeps")
        await waiter

    async def close(self) -> None:
        """Stop a sweep under way (shutdown): what it holds goes back to its queues, and its
        requests are redelivered to the next sweeper."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        _settle(self._waiters, asyncio.CancelledError())  # asked meanwhile: handed back too

    async def _run(self) -> None:
        while self._pending:
            asked, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            self._running = set(asked)
            self._done = asyncio.get_running_loop().create_future()
            started = utcnow()
            try:
                await self._sweep(frozenset(asked), (t for own in asked.values() for t in own))
            except BaseException as exc:
                _settle(waiters, exc)  # each request is handed back, asked again later
                _settle([self._done])  # those that waited for it: their first asking stands
                self._running = set()
                if not isinstance(exc, Exception):  # cancelled (stopping), or worse
                    raise
                log.warning("catch_up_sweep_failed", endpoints=len(asked),
                            error=outages.describe(exc))
                continue
            for endpoint in asked:
                self._swept[endpoint] = started
                self._swept.move_to_end(endpoint)
            while len(self._swept) > SWEPT_KEPT:
                self._swept.popitem(last=False)
            _settle(waiters)
            _settle([self._done])
            self._running = set()

    async def _sweep(self, endpoints: frozenset[str], own_tiers: Iterable[int]) -> None:
        tiers = decide.tiers_to_sweep((*self._deployment, *self._tiers.known, *own_tiers),
                                      self._min_tier_ms)
        began = time.monotonic()
        log.info("catch_up_sweep_started", endpoints=sorted(endpoints)[:20],
                 endpoint_count=len(endpoints), tiers=list(tiers))
        self._budget = 0
        totals: dict[str, int] = {"sent_early": 0, "sent_due": 0, "moved": 0}
        for tier in tiers:
            await self._tiers.ensure(tier)
            await self._sweep_tier(tier, endpoints, totals)
        CATCH_UP.labels("sweeps").inc()
        log.info("catch_up_sweep_done", endpoint_count=len(endpoints),
                 seconds=round(time.monotonic() - began, 3), **totals)

    async def _sweep_tier(self, tier: int, endpoints: frozenset[str],
                          totals: dict[str, int]) -> None:
        """The side queue holding older retries, then the tier, into the other side queue."""
        channel = await self._connection.channel()
        try:
            for side in topology.side_queues(tier):
                await declare_queue(channel, side)
            a, b = (topology.side_queue(tier, s) for s in topology.SIDES)
            count_a, count_b = await ready_count(channel, a), await ready_count(channel, b)
            heads: tuple[int | None, int | None] = (None, None)
            if count_a and count_b:  # a sweep stopped half-way: the heads say which is older
                heads = (await _head_queued(channel, a), await _head_queued(channel, b))
                # no head: it expired since the count, the queue is empty
                count_a, count_b = (count_a if heads[0] is not None else 0,
                                    count_b if heads[1] is not None else 0)
            chosen = decide.sides(count_a, count_b, *heads)
            dest = topology.side_queue(tier, chosen.dest)
            for source in (topology.side_queue(tier, chosen.source), topology.retry_queue(tier)):
                count = await ready_count(channel, source)
                reader = await self._connection.channel()
                try:
                    async with contextlib.aclosing(take(reader, source, count,
                                                        batch=SWEEP_BATCH)) as batches:
                        async for batch in batches:
                            await self._place(batch, tier, dest, endpoints, channel, totals)
                finally:
                    with contextlib.suppress(Exception):
                        await reader.close()
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _place(self, batch: list[AbstractIncomingMessage], tier: int, dest: str,
                     endpoints: frozenset[str], channel: AbstractChannel,
                     totals: dict[str, int]) -> None:
        """One batch: the others' retries moved first (never held behind the pipeline's pace),
        then the caught-up endpoints' sent once the job queues have room; each acked once its
        publish is confirmed."""
        now_ms = int(time.time() * 1000)
        moves: list[tuple[AbstractIncomingMessage, decide.Move]] = []
        sends: list[tuple[AbstractIncomingMessage, decide.SendNow]] = []
        for m in batch:
            placed = decide.place(m.headers, m.body, _expiration_ms(m), endpoints, tier, now_ms)
            if isinstance(placed, decide.Move):
                moves.append((m, placed))
            else:
                sends.append((m, placed))
        if moves:
            await confirm_all(
                self._again(m, topology.RETRY_EXCHANGE, dest, p, p.expiration_ms / 1000)
                for m, p in moves)
            for m, _ in moves:
                await m.ack()
            CATCH_UP.labels("moved").inc(len(moves))
            totals["moved"] += len(moves)
        if sends:
            await self._make_room(channel, len(sends))
            await confirm_all(self._again(m, topology.WORK_EXCHANGE, topology.SIGN, p)
                              for m, p in sends)
            for m, _ in sends:
                await m.ack()
            early = sum(1 for _, p in sends if p.early_ms > 0)
            CATCH_UP.labels("sent_early").inc(early)
            CATCH_UP.labels("sent_due").inc(len(sends) - early)
            totals["sent_early"] += early
            totals["sent_due"] += len(sends) - early

    async def _again(self, message: AbstractIncomingMessage, exchange: str, key: str,
                     placed: decide.Placement, expiration: float | None = None) -> None:
        """Publish ``message`` again, in the trace it carries (the event's, not the sweep's)."""
        with telemetry.consuming(message.routing_key or key, message.headers):
            await self._publisher.publish(exchange, key, message.body,
                                          headers=decide.carried_headers(message.headers,
                                                                         placed),
                                          type=message.type, expiration=expiration)

    async def _make_room(self, channel: AbstractChannel, count: int) -> None:
        """Wait until the signer's and the deliverer's job queues, and the defer tiers
        together, hold at most CATCH_UP_MAX_QUEUED ready messages each; then ``count`` sends
        may go (the room seen is spent before the queues are looked at again). The defer
        tiers count because an endpoint slower than the pipeline has its surplus deferred
        there: without them the sweep would outrun the endpoint, not just the stages."""
        began = time.monotonic()
        while self._budget <= 0:
            deferred = 0
            for queue in self._defer_queues:
                deferred += await ready_count(channel, queue)
            depth = max(await ready_count(channel, topology.SIGNER_JOBS),
                        await ready_count(channel, topology.DELIVERER_JOBS), deferred)
            self._budget = self._max_queued - depth
            if self._budget <= 0:
                await asyncio.sleep(PACE_POLL)
        self._budget -= count
        waited = time.monotonic() - began
        if waited >= PACE_POLL:
            CATCH_UP_PACED.inc(waited)


def _settle(futures: Iterable[asyncio.Future[None]],
            exc: BaseException | None = None) -> None:
    for future in futures:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        elif isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)


def _expiration_ms(message: AbstractIncomingMessage) -> int | None:
    """A consumed message's own expiration, in ms (aio-pika reads it as seconds)."""
    expiration = message.expiration
    return round(expiration * 1000) if isinstance(expiration, int | float) else None


async def _head_queued(channel: AbstractChannel, queue: str) -> int | None:
    """When the first message of ``queue`` was queued in its tier (read, then handed back to
    the head); ``None``: the queue is empty after all."""
    source = await channel.declare_queue(queue, passive=True)
    first = await source.get(no_ack=False, fail=False)
    if first is None:
        return None
    try:
        queued = decide.queued_of(first.headers)
        return 0 if queued is None else queued
    finally:
        await first.nack(requeue=True)
