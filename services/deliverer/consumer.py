"""The deliverer's message handlers: a signed delivery in, one HTTP POST out, and what follows
from its outcome (delivered, a retry in a wait tier, a dead letter), with the write-ahead and
attempt facts audit records. Ordered (FIFO) and rate-limited (paced) endpoints take their turns
here too. Each attempt's outcome feeds its endpoint's circuit breaker, which lengthens the
retries of an endpoint known to be down (:mod:`services.deliverer.decisions.breaker`).
:mod:`services.deliverer.app` wires these to the broker; the decisions themselves are pure, in
:mod:`services.deliverer.decisions`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import structlog
from aio_pika.abc import AbstractRobustConnection
from aiohttp.abc import AbstractResolver
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
from yarl import URL

from services.deliverer import decisions
from services.deliverer.catchup import Requests
from services.deliverer.client import WRITTEN, HttpClient
from services.deliverer.decisions import DeadLetter, Done, ErrorKind, Retry
from services.deliverer.decisions.breaker import Breaker, applied_floor, deferral
from services.deliverer.decisions.catchup import retry_headers
from services.deliverer.decisions.pacing import Pacer, defer_tier, shard_of
from services.deliverer.metrics import (
    ATTEMPT_SECONDS,
    ATTEMPTS,
    BREAKER_DEFERRED,
    BREAKER_LENGTHENED,
    BREAKER_OPEN,
    BREAKER_TRANSITIONS,
    DEAD,
    DEFERRED,
    ENDPOINT_CONCURRENCY,
    KEYS_HELD,
    ORDERED,
    PACED,
    PARKED,
    RESIGNED,
    RETRIES,
    TIERS_DECLARED,
)
from services.deliverer.ordered import ASK_AGAIN_AFTER, SignNow
from services.deliverer.paced import PaceGate
from services.deliverer.proxy import ProxyRouter
from services.deliverer.settings import Settings
from services.deliverer.slots import EndpointSlots
from services.deliverer.ssrf import VettingResolver
from shared import custom_headers, outages, telemetry, topology
from shared.broker import (
    Delivery,
    FactPublisher,
    Publisher,
    confirm_all,
    declare_queue,
)
from shared.contracts import AttemptRecord, DeliveryJob, SignedDelivery, SignRefusal, encode, utcnow
from shared.egress import BlockedAddressError, check_url
from shared.ordering import lane_of
from shared.turns import KeyTurns

log = structlog.get_logger("dihya.deliverer")

@dataclass(frozen=True)
class Response:
    """What the HTTP layer saw (``status`` None: no response, ``error`` says why)."""

    status: int | None
    retry_after: str | None = None
    excerpt: bytes = b""
    headers: Mapping[str, str] | None = None
    """The response headers as a fact shows them (decisions.shown_response_headers)."""
    error: ErrorKind | None = None
    error_text: str | None = None


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _blocked(exc: BaseException) -> BlockedAddressError | None:
    """The SSRF refusal behind ``exc``, if it is one. aiohttp wraps what the resolver raises
    in a ``ClientConnectorDNSError`` ("Cannot connect to host …"): the refusal is inside."""
    if isinstance(exc, BlockedAddressError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error,
                                                                     BlockedAddressError):
        return exc.os_error
    return None


def _error_kind(exc: BaseException) -> ErrorKind:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if _blocked(exc) is not None:
        return "ssrf_blocked"
    # before ValueError: a certificate error is one too (ssl.SSLCertVerificationError)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return "invalid_url"
    return "connection_error"


_Posted = tuple[decisions.Outcome, decisions.Step, AttemptRecord, datetime,
                "asyncio.Task[None] | None"]
"""What a POST gave: its outcome, the next step, its record, when, and its fact's publishing
(``None``: the fact is confirmed already, see :meth:`Deliverer._post_and_audit`)."""

T = TypeVar("T")


class WaitTiers:
    """The retry wait queues this deliverer publishes retries to; declares a missing one.

    The deployment's tiers (:attr:`Settings.retry_delays_ms`) are declared at start. An
    endpoint's own schedule (``DeliveryJob.retry_schedule_ms``) may name a delay that has no
    wait queue yet, and a retry published there would come back unroutable. So :meth:`ensure`
    declares such a tier (queue and binding, with the arguments of
    :func:`shared.topology.retry_queues`) before its first use, and remembers it.

    Many jobs may need the same new tier at once: the first starts the declaration and every
    other awaits that same task, so each tier is declared once per process. A declaration that
    fails is forgotten, so a later job tries again; the job that needed it raises, and the
    consumer requeues it (nothing is lost). Declaring is idempotent on the broker, so several
    deliverer replicas declaring the same tier is harmless.
    """

    def __init__(self, connection: AbstractRobustConnection, declared: Iterable[int], *,
                 timeout: float = 10.0) -> None:
        self._connection = connection
        self._known = set(declared)
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._timeout = timeout

    def __contains__(self, delay_ms: object) -> bool:
        return delay_ms in self._known

    @property
    def known(self) -> frozenset[int]:
        """The tiers declared so far: the deployment's and those declared here since."""
        return frozenset(self._known)

    async def ensure(self, delay_ms: int) -> None:
        """Return once the wait queue of tier ``delay_ms`` exists (declared here if needed)."""
        if delay_ms in self._known:
            return
        task = self._pending.get(delay_ms)
        if task is None:
            task = asyncio.create_task(self._declare(delay_ms),
                                       name=f"declare-{topology.retry_queue(delay_ms)}")
            self._pending[delay_ms] = task
        # shield: one job cancelled (shutdown) must not cancel the others' declaration
        await asyncio.shield(task)

    async def _declare(self, delay_ms: int) -> None:
        [queue] = topology.retry_queues((delay_ms,))
        try:
            async with asyncio.timeout(self._timeout):
                channel = await self._connection.channel()
                try:
                    await declare_queue(channel, queue)
                finally:
                    with contextlib.suppress(Exception):  # a refused declare closed it already
                        await channel.close()
            self._known.add(delay_ms)
        except Exception as exc:
            log.error("tier_declare_failed", queue=queue.name, error=f"{type(exc).__name__}: "
                      f"{exc}"[:300])
            raise
        finally:
            del self._pending[delay_ms]
        TIERS_DECLARED.inc()
        log.info("tier_declared", queue=queue.name, ttl_ms=topology.tier_ttl(delay_ms))


class Deliverer:
    """The job handler. It returns only once every message it published is confirmed."""

    def __init__(self, settings: Settings, client: HttpClient,
                 publisher: Publisher, tiers: WaitTiers, facts: FactPublisher,
                 rng: random.Random | None = None,
                 resolver: AbstractResolver | None = None,
                 starts: FactPublisher | None = None,
                 sign_now: SignNow | None = None,
                 catch_up: Requests | None = None) -> None:
        self._settings = settings
        self._client = client
        self._publisher = publisher
        self._facts = facts
        # the write-ahead facts (delivery.started) wait for no linger: a POST waits for its
        # own's confirm, and under load they batch by themselves while one is in flight
        self._starts = starts or FactPublisher(publisher, linger=0.0)
        self._tiers = tiers
        self._rng = rng or random.Random()
        self._schedule = settings.retry_delays_ms
        self._headers_cipher = settings.headers_cipher()
        self._router = None if settings.proxy_url is None else ProxyRouter(
            settings.proxy_url.get_secret_value(), VettingResolver(settings.allowed, resolver))
        # check_url is a pure function of the URL here (allowed networks and https_only are
        # fixed): vetted once per URL, not per attempt (5-9 µs of CPU each, parsing the URL
        # and an IP literal again). A refused URL raises, and lru_cache keeps no exception.
        self._check_url = functools.lru_cache(maxsize=4096)(functools.partial(
            check_url, allowed=settings.allowed, https_only=settings.https_only))
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout,
                                              sock_connect=settings.connect_timeout)
        self._slots = EndpointSlots(settings.max_in_flight_per_endpoint,
                                    settings.max_waiting_per_endpoint,
                                    settings.max_local_wait,
                                    initial=settings.initial_in_flight_per_endpoint)
        ENDPOINT_CONCURRENCY.set_function(self._slots.highest_limit)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pace = PaceGate(Pacer(time.monotonic(), settings.pace_margin,
                                    topology.PACED_SHARDS), settings.max_pace_wait)
        self._sign_now = sign_now
        self._catch_up = catch_up
        self._keys = KeyTurns()
        KEYS_HELD.set_function(self._keys.waiting)
        # this replica's own: nothing is shared between replicas (decisions.breaker)
        self._breaker = Breaker(settings.breaker_after, settings.breaker_wait_ms)
        BREAKER_OPEN.set_function(self._breaker.open_count)
        # the attempt counter's children, looked up once (outcomes x reasons x status classes:
        # a few dozen at most); ``labels()`` per POST shows in profiles
        self._attempts: dict[tuple[str, str, str], Counter] = {}

    async def post(self, signed: SignedDelivery,
                   written: Callable[[], None] | None = None) -> Response:
        """One POST, no redirect followed, at most the excerpt of the response read;
        ``written`` is called once the request's headers are written (a paced endpoint's
        :class:`~services.deliverer.paced.Turn`)."""
        url = signed.job.url
        try:
            self._check_url(url)
            with telemetry.span(
                "POST", kind=SpanKind.CLIENT,
                attributes={"http.request.method": "POST", "url.full": url},
            ) as span:
                headers = self._custom_headers(signed)
                headers.update(signed.headers)  # Dihya's own win (ingest refuses clashes)
                telemetry.inject(headers)  # the receiver can join the event's trace
                target: str | URL = url
                options: dict[str, Any] = {}
                if self._router is not None:  # to the vetted address, through the proxy
                    route = await self._router.route(url)
                    target, options = route.url, route.options
                    headers.update(route.headers)
                if written is not None:
                    options["trace_request_ctx"] = {WRITTEN: written}
                async with self._client.session(traced=written is not None).post(
                    target, data=signed.body.encode(), headers=headers,
                    allow_redirects=False, timeout=self._timeout, **options,
                ) as resp:
                    if span is not None:
                        span.set_attribute("http.response.status_code", resp.status)
                    try:
                        excerpt = await _read_at_most(resp.content,
                                                      self._settings.response_excerpt_bytes)
                    except (TimeoutError, aiohttp.ClientError):
                        excerpt = b""  # the status is what counts; the excerpt a courtesy
                    return Response(resp.status, resp.headers.get("Retry-After"), excerpt,
                                    decisions.shown_response_headers(resp.headers.items()))
        except custom_headers.HeadersKeyError as exc:  # before any byte is sent
            return Response(None, error="headers_key", error_text=str(exc))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            kind = _error_kind(exc)
            blocked = _blocked(exc)
            if kind == "timeout":
                text = f"timeout after {self._settings.timeout:g}s"
            elif blocked is not None:  # say what happened, not what aiohttp's wrapper says
                text = f"{kind}: refused destination: {blocked}"
            else:
                text = f"{kind}: {exc.__class__.__name__}: {exc}"
            return Response(None, error=kind, error_text=text[:500])

    def _custom_headers(self, signed: SignedDelivery) -> dict[str, str]:
        """The endpoint's custom headers, opened; :class:`HeadersKeyError` if they cannot be."""
        if signed.sealed_headers is None:
            return {}
        if self._headers_cipher is None:
            raise custom_headers.HeadersKeyError(
                "the delivery carries custom headers but DIHYA_HEADERS_KEY is not set on the "
                "deliverer")
        return custom_headers.unseal(signed.sealed_headers, signed.job.delivery_id,
                                     self._headers_cipher)

    async def _post_and_audit(self, signed: SignedDelivery,
                              held_since: float | None = None) -> _Posted | None:
        """POST, judge the outcome, and publish its fact (until confirmed): a delivered
        POST's fact is confirmed before this returns (nothing else follows it, and the caller
        runs this in a shielded task of its own: a second task would only wait beside it); a
        retry's or a dead letter's fact is started in a task, which the caller awaits with
        what it publishes beside it. ``None``:
        not POSTed, a rate-limited endpoint's turn is too far off (the caller defers it).
        ``held_since``: an ordered delivery reached this deliverer then (monotonic); a retry
        past DIHYA_DELIVERER_FIFO_MAX_HOLD gives up (:func:`decisions.held_step`)."""
        job = signed.job
        post = uuid.uuid4().hex  # this POST's own: its audit record is its own too
        # Written ahead and confirmed before the POST leaves: a deliverer killed between its
        # POST and the outcome's confirm still leaves a trace, which audit turns into a record
        # with outcome "unknown" (decisions.started_fact). Not confirmed: no POST — the error is
        # an outage's, so the consumer holds the job until the broker is back. Sent before the
        # slot is taken: the confirm's round trip then holds no slot and is not counted in the
        # endpoint's latency (measured with it inside: the e2e crash-safety module timed out,
        # 1,441 of 1,500 delivered in 120 s; outside: it passes in 81 s, 66 s without it).
        # A rate-limited endpoint's is written once its turn is sure, inside the slot: a job
        # whose turn is too far off is deferred, not POSTed, and must leave no write-ahead
        # (audit would record an attempt that never was); the confirm's wait after the turn
        # moves the endpoint's schedule like any late write (services.deliverer.paced).
        ahead = decisions.started_fact(job, utcnow(), post=post)
        paced = job.rate_limit is not None
        async with self._slots.slot(
                job.endpoint_id,
                first=None if paced else functools.partial(self._starts.send, ahead)) as ticket:
            turn = None
            if job.rate_limit is not None:
                # paced inside the slot, right before the POST: a wait for a slot after the
                # turn would let POSTs bunch up
                turn = await self._pace.turn(job.endpoint_id, job.rate_limit)
                if turn is None:
                    ticket.skip()
                    return None
                ticket.posting()
            try:
                if turn is not None:
                    await self._starts.send(ahead)
                at = utcnow()
                started = time.perf_counter()
                response = await self.post(signed, written=None if turn is None
                                           else turn.written)
            finally:
                if turn is not None:
                    turn.close()
            duration = time.perf_counter() - started
            ticket.answer(response.status, response.error)  # its limit adapts to it
        now = utcnow()
        outcome = decisions.classify(response.status, error=response.error,
                                    error_text=response.error_text,
                                    retry_after=response.retry_after, now=now)
        schedule = decisions.schedule_for(job, self._schedule)
        floor = applied_floor(self._breaker_floor(job, outcome, now), outcome, job.attempt,
                              schedule)
        step = decisions.next_step(outcome, job.attempt, schedule, self._rng,
                                  self._settings.retry_jitter, floor_ms=floor)
        if floor is not None:
            BREAKER_LENGTHENED.inc()
        if held_since is not None:
            step = decisions.held_step(step, time.monotonic() - held_since,
                                       self._settings.fifo_max_hold)
        record = decisions.attempt_record(job.attempt, outcome, at=at,
                                         duration_ms=duration * 1000)
        attempted = decisions.outcome_fact(
            ahead, outcome, record, step, response.excerpt, now,
            request_headers=decisions.shown_request_headers(signed.headers),
            response_headers=response.headers)
        key = (outcome.outcome, outcome.reason, decisions.status_class(outcome.status_code))
        counter = self._attempts.get(key)
        if counter is None:
            counter = self._attempts[key] = ATTEMPTS.labels(*key)
        counter.inc()
        ATTEMPT_SECONDS.observe(duration)
        # batched; published even if this job's ack is lost with its channel (this task is
        # shielded from a cancelled handler, and so is the one below)
        if isinstance(step, Done):  # nothing else to publish: confirmed here, in this task
            await self._facts.send_until_confirmed(attempted)
            return outcome, step, record, now, None
        # a retry or a dead letter is published beside it, a giving up after it
        attempt = self._background(self._facts.send_until_confirmed(attempted))
        return outcome, step, record, now, attempt

    def _breaker_floor(self, job: DeliveryJob, outcome: decisions.Outcome,
                       now: datetime) -> int | None:
        """Count the attempt in its endpoint's circuit breaker (logging a transition); the
        least its retry waits now (``None``: its schedule alone decides). A delivered attempt
        that closes the breaker asks for a catch-up when the mode is on: the endpoint is back,
        and its retries wait in the long tiers the breaker sent them to — a new event's first
        attempt, the usual probe, would not ask on its own (:meth:`Requests.breaker_closed`).

        Not for ordered (FIFO) endpoints: their failed attempts wait for their retry here,
        unacked, their key held, and no retry may start later than
        DIHYA_DELIVERER_FIFO_MAX_HOLD after the delivery arrived (:func:`decisions.held_step`):
        a longer wait would dead-letter them sooner (``hold_limit``), not spare the pipeline
        (they wait in no tier and cost no hop while they wait)."""
        if job.fifo_key is not None or not self._breaker.enabled:
            return None
        change = self._breaker.observe(job.endpoint_id, outcome)
        if change is not None:
            BREAKER_TRANSITIONS.labels(change.to).inc()
            # never the URL: it may carry credentials
            log.info("breaker_opened" if change.to == "open" else "breaker_closed",
                     endpoint_id=job.endpoint_id, failures=change.failures,
                     delivery_id=job.delivery_id, attempt=job.attempt)
            if change.to == "closed" and self._catch_up is not None:
                asking = self._catch_up.breaker_closed(job, now)
                if asking is not None:
                    self._background(asking)
        return self._breaker.floor_ms(job.endpoint_id)

    def _dead_letter(self, parked: DeliveryJob, reason: str, error: str | None,
                     now: datetime, attempt: Awaitable[None] | None,
                     held_up: int | None = None) -> list[Awaitable[None]]:
        """The publishes that give ``parked`` up: the job to the deliverer's parking queue
        (ingest's dead-letter store reads it) and its ``delivery.dead_lettered`` fact, after
        its last ``attempt``'s fact if there was one. ``held_up``: an ordered delivery's, how
        many later ones of its key waited behind it."""
        headers = {topology.REASON_HEADER: reason, topology.ERROR_HEADER: (error or "")[:2000],
                   topology.SOURCE_HEADER: topology.DELIVERER_JOBS}
        if held_up is not None:
            headers[topology.HELD_UP_HEADER] = str(held_up)
        dead = decisions.dead_lettered_fact(parked, reason, now, held_up=held_up)
        DEAD.labels(reason).inc()
        return [
            self._publisher.publish(topology.DEAD_EXCHANGE, topology.DELIVERER_JOBS,
                                    encode(parked), headers=headers, type=parked.type),
            # the giving up follows its attempt's (batched) fact in the audit log
            self._facts.send_until_confirmed(dead) if attempt is None
            else self._facts.send_after(asyncio.shield(attempt), dead),
        ]

    def _background(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task that outlives a cancelled handler; :meth:`drain` waits for it at stop."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, grace: float) -> None:
        """Let POSTs under way, and the publishing of their facts, finish (within ``grace``
        seconds) once the consumer has stopped; what is left then is cancelled and logged."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("unfinished_at_stop", tasks=len(pending))
        await asyncio.gather(*pending, return_exceptions=True)

    def stop_pacing(self) -> None:
        """No more paced POSTs from this process: the jobs waiting for their turn are
        deferred (:meth:`PaceGate.close`); called before the paced consumers stop."""
        self._pace.close()

    async def on_job(self, message: Delivery) -> None:
        """A signed delivery from the deliverer's queue (a rate-limited endpoint's goes on
        to its paced queue)."""
        await self._on_job(message, paced=False)

    async def on_paced_job(self, message: Delivery) -> None:
        """A signed delivery from a paced queue: POSTed in its endpoint's turn."""
        await self._on_job(message, paced=True)

    async def on_fifo_job(self, message: Delivery) -> None:
        """A job of a FIFO lane: delivered once every earlier one of its key is done (or
        dead-lettered), with every attempt signed just before its POST."""
        # RabbitMQ's consumer_timeout counts from now, waiting behind earlier ones included
        arrived = time.monotonic()
        try:
            job = decisions.parse_job(message.body)
        except ValueError as exc:
            await self._park_invalid(message, exc)
            return
        assert job.fifo_key is not None  # parse_job checks it
        async with self._keys.turn((job.endpoint_id, job.fifo_key)) as behind:
            await self._deliver_in_order(job, message, behind, arrived)

    async def _deliver_in_order(self, job: DeliveryJob, message: Delivery,
                                behind: Callable[[], int], arrived: float) -> None:
        """Attempt ``job`` until delivered or given up, holding its key meanwhile: a failed
        attempt waits its retry delay here, unacked, and is signed afresh for the next; no
        retry starts later than DIHYA_DELIVERER_FIFO_MAX_HOLD after it ``arrived``."""
        assert self._sign_now is not None
        outage = ASK_AGAIN_AFTER
        while True:
            if message.settled_elsewhere:  # its channel closed: the broker hands it back
                return
            try:
                signed = await self._sign_now.sign(job)
                if isinstance(signed, SignRefusal):
                    await self._give_up_in_order(job, signed.reason, signed.error, utcnow(),
                                                 None, behind())
                    return
                posted = await asyncio.shield(self._background(
                    self._post_and_audit(signed, held_since=arrived)))
            except Exception as exc:  # e.g. its write-ahead unconfirmed: not POSTed
                if not outages.is_infrastructure(exc):
                    raise
                # held here, its key with it: handing it to the consumer's outage hold
                # would let the next delivery of its key go first
                log.warning("ordered_delivery_waits", error=outages.describe(exc),
                            delivery_id=job.delivery_id)
                await asyncio.sleep(outage)
                outage = min(outage * 2, 5.0)
                continue
            if posted is None:  # a rate limit's turn too far off (ingest refuses the pair)
                await asyncio.sleep(ASK_AGAIN_AFTER)
                continue
            outcome, step, record, now, attempt = posted
            _log_attempt(job, outcome, record, step)
            if isinstance(step, Retry):
                ORDERED.labels("held").inc()
                job = decisions.next_job(job, record)
                await asyncio.sleep(step.delay_ms / 1000)
                continue
            if isinstance(step, DeadLetter):
                parked = decisions.next_job(job, record)
                await self._give_up_in_order(parked, step.reason, outcome.error, now, attempt,
                                             behind())
            if attempt is not None:
                await asyncio.shield(attempt)
            return

    async def _give_up_in_order(self, parked: DeliveryJob, reason: str, error: str | None,
                                now: datetime, attempt: Awaitable[None] | None,
                                held_up: int) -> None:
        """Dead-letter an ordered delivery, publishing again while the broker is out: its
        key must not go on before the dead letter is safe, nor leave it unsaid."""
        delay = ASK_AGAIN_AFTER
        while True:
            try:
                await confirm_all(self._dead_letter(parked, reason, error, now, attempt,
                                                    held_up=held_up))
                return
            except Exception as exc:
                if not outages.is_infrastructure(exc):
                    raise
                log.warning("dead_letter_unconfirmed", error=outages.describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _forward(self, signed: SignedDelivery) -> None:
        """To the paced queue of its endpoint, whose one active consumer paces it."""
        shard = shard_of(signed.job.endpoint_id, topology.PACED_SHARDS)
        await self._publisher.send(topology.WORK_EXCHANGE, topology.paced_key(shard), signed)
        PACED.labels("forwarded").inc()

    async def _defer(self, signed: SignedDelivery, ids: Mapping[str, Any]) -> None:
        # Holding the job here would tie up a prefetch slot; enough of them and one slow
        # endpoint stalls every other. Put it back for later instead: same attempt number,
        # still signed (it comes back here, not through the signer).
        later, tier = decisions.deferred(signed, self._settings.defer_delays_ms)
        delay = tier
        limit = signed.job.rate_limit
        if limit is not None:  # back about when its turn comes (decisions.pacing)
            tier, delay = defer_tier(self._pace.promise(signed.job.endpoint_id, limit),
                                     self._settings.defer_delays_ms)
            PACED.labels("deferred").inc()
        else:  # an endpoint known to be down: as long as its retries wait (decisions.breaker)
            own = tier
            tier, delay = deferral(self._breaker.floor_ms(signed.job.endpoint_id), own,
                                   self._settings.defer_delays_ms)
            if delay > own:
                BREAKER_DEFERRED.inc()
        await self._publisher.send(topology.RETRY_EXCHANGE, topology.defer_queue(tier),
                                   later, expiration=delay / 1000)
        DEFERRED.inc()
        log.debug("deferred", waiting_or_in_flight=self._slots.users(signed.job.endpoint_id),
                  **ids)

    async def _park_invalid(self, message: Delivery, exc: ValueError) -> None:
        fact = decisions.parked_fact(message.body, str(exc), utcnow())
        await asyncio.gather(
            self._publisher.park(topology.DELIVERER_JOBS, message,
                                 reason="invalid_message", error=str(exc)),
            self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact),
        )
        PARKED.inc()
        log.warning("parked", queue=topology.DELIVERER_JOBS, reason="invalid_message",
                    error=str(exc))

    async def _on_job(self, message: Delivery, *, paced: bool) -> None:
        try:
            signed = decisions.parse_signed(message.body)
        except ValueError as exc:
            await self._park_invalid(message, exc)
            return
        job = signed.job
        if job.fifo_key is not None:  # an ordered endpoint's, sent again (a manual retry)
            lane = lane_of(job.endpoint_id, job.fifo_key, topology.FIFO_LANES)
            await self._publisher.send(topology.WORK_EXCHANGE, topology.fifo_key(lane), job)
            ORDERED.labels("forwarded").inc()
            return
        if job.rate_limit is not None and not paced:
            await self._forward(signed)
            return
        if paced:
            self._pace.arrived(shard_of(job.endpoint_id, topology.PACED_SHARDS),
                               message.redelivered)
        ids = {"delivery_id": job.delivery_id, "event_id": job.event.id,
               "endpoint_id": job.endpoint_id, "attempt": job.attempt}

        if decisions.needs_resign(signed.signed_at, utcnow(), self._settings.resign_after):
            await self._publisher.send(topology.WORK_EXCHANGE, topology.SIGN, job)
            RESIGNED.inc()
            log.info("resign_stale", signed_at=signed.signed_at.isoformat(), **ids)
            return

        endpoint = job.endpoint_id
        if self._slots.full(endpoint) or (
                job.rate_limit is not None and self._pace.too_long(endpoint, job.rate_limit)):
            await self._defer(signed, ids)
            return
        # The POST and the publishing of its fact run in tasks of their own, shielded: when
        # this handler is cancelled meanwhile (aiormq cancels the handlers of a channel that
        # closes, e.g. a dropped connection), the receiver may have the POST already — so its
        # outcome is still read and audited, while the job comes back from the broker and is
        # POSTed again (a record of its own: every POST is audited).
        posted = await asyncio.shield(self._background(self._post_and_audit(signed)))
        if posted is None:  # its endpoint's turn is too far off (a Retry-After holds it)
            await self._defer(signed, ids)
            return
        outcome, step, record, now, attempt = posted
        if job.rate_limit is not None:
            PACED.labels("posted").inc()
            if outcome.retry_after_ms:  # the receiver's Retry-After holds the whole endpoint
                self._pace.hold(endpoint, job.rate_limit,
                                min(outcome.retry_after_ms, decisions.MAX_RETRY_AFTER_MS) / 1000)
        if isinstance(step, Retry):  # an endpoint's own schedule may name a new tier
            await self._tiers.ensure(step.tier_ms)
        publishes: list[Awaitable[None]] = [] if attempt is None else [asyncio.shield(attempt)]
        if isinstance(step, Retry):
            following = decisions.next_job(job, record)
            # its endpoint and due time ride along for a catch-up sweep (catchup.py)
            publishes.append(self._publisher.send(
                topology.RETRY_EXCHANGE, topology.retry_queue(step.tier_ms), following,
                headers=retry_headers(job.endpoint_id, int(time.time() * 1000), step.delay_ms),
                expiration=step.delay_ms / 1000))
            RETRIES.labels(str(step.tier_ms)).inc()
        elif isinstance(step, DeadLetter):
            publishes.extend(self._dead_letter(decisions.next_job(job, record), step.reason,
                                               outcome.error, now, attempt))
        if publishes:
            await confirm_all(publishes)  # all settled (the fact above included), then any error
        _log_attempt(job, outcome, record, step)
        if isinstance(step, Done) and self._catch_up is not None:
            asking = self._catch_up.delivered(job, now)  # back after failing: catch up
            if asking is not None:
                self._background(asking)


def _log_attempt(job: DeliveryJob, outcome: decisions.Outcome, record: AttemptRecord,
                 step: decisions.Step) -> None:
    # A success is logged at debug: the audit log holds every attempt and the metrics
    # count them; a line per delivery at info cost ~30 µs of CPU each (log volume aside).
    (log.debug if outcome.outcome == "delivered" else log.info)(
        "attempted", outcome=outcome.outcome, reason=outcome.reason,
        status_code=outcome.status_code, duration_ms=record.duration_ms,
        host=URL(job.url).host if job.url else None, next=type(step).__name__.lower(),
        retry_in_ms=step.delay_ms if isinstance(step, Retry) else None,
        delivery_id=job.delivery_id, event_id=job.event.id, endpoint_id=job.endpoint_id,
        attempt=job.attempt, fifo=job.fifo_key is not None or None)
