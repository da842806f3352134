"""The one path every event takes: consume ``dihya.ingest.events``, validate, fan out.

Events published over HTTP and events published straight to the events exchange arrive here
alike. The handler publishes the delivery jobs and the ``event.accepted`` fact and awaits every
confirm before it returns; only then does :class:`shared.broker.Consumer` ack the event. If any
publish fails the handler raises and the event is requeued: a crash at any point can duplicate
jobs (with the same delivery ids) but never lose one.

Before fan-out the event is screened against the event-type catalog
(:func:`~services.ingest.decisions.screen`): the ``details`` languages the publisher left out are
completed — here, on the one path, so every delivery carries them whichever way the event came —
and an unknown type is refused when ``DIHYA_INGEST_UNKNOWN_EVENT_TYPES`` is ``refuse``.

A message that cannot be an event, or whose type is refused, is parked in
``dihya.ingest.events.dead`` with its reason and audited, then acked: a bad message never stops
the consumer nor blocks the ones behind it. The same limits as over HTTP hold
(:func:`~services.ingest.decisions.decode`: ``DIHYA_INGEST_MAX_BODY_BYTES`` and the JSON rule),
and an event's routing key must be its type (:func:`~services.ingest.decisions.route_refusal`).

Endpoints that are disabled but subscribed get a *held* delivery instead of a job: stored
(committed before anything is published) and audited as ``delivery.held``, so re-enabling the
endpoint can offer them.

Deduplication: the id of every fanned-out event is remembered (``seen_events``) once its jobs
are confirmed. An event whose id was fanned out within ``DIHYA_INGEST_IDEMPOTENCY_WINDOW`` is
acked without publishing again. AMQP-published events without a body id get their id from the
``message_id``, so the same message published twice, or redelivered after a crash, fans out
once — across restarts and across replicas sharing the database. A crash between the confirms
and the record gives a duplicate with the same ids (receivers drop it), never a loss; so does a
copy that arrives while the first is between its confirms and its record.

Both the look-up and the record go through a :class:`shared.batching.Batcher`: the events in
flight at once (up to the prefetch) share one query and one write transaction instead of one
each — the per-call cost of the database layers was most of ingest's time per event. Each event
still waits for its own look-up before publishing and for its own record before it is acked,
so the guarantees above are unchanged.

The jobs go the same way (:class:`JobPublisher`): the jobs of the events in flight leave as
one :class:`~shared.contracts.DeliveryJobBatch` while the previous batch awaits its confirm,
and each event is acked only once the batch holding its jobs is confirmed.

The message log (:mod:`.message_log`) records each accepted event and its deliveries — in
batches too, alongside the confirms. It is a view, not a guarantee: a failed log write is
logged and the event still acked (its deliveries are on their way; their attempts will give
the log rows of their own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from services.ingest import metrics
from services.ingest.catalog import Catalog, UnknownPolicy, bundled
from services.ingest.decisions import (
    ROUTED_AS_HEADER,
    HeldJob,
    Rejection,
    accepted_fact,
    complete,
    decode,
    held_fact,
    moved_in,
    rejected_fact,
    route_refusal,
    screen,
    seen_recently,
)
from services.ingest.decisions.messages import LogDelivery, LogEvent, log_delivery, log_event
from services.ingest.decisions.tenants import (
    AllTenants,
    Scope,
    TenantRefusal,
    fan_out,
    requested,
)
from services.ingest.message_log import MessageLog
from services.ingest.store import Store
from services.ingest.tenant_rate import TenantQuota
from services.ingest.tenant_store import TenantStore
from services.ingest.turnstile import Turnstile
from shared import telemetry, topology
from shared.batching import Batcher
from shared.broker import Delivery, FactPublisher, Publisher, confirm_all
from shared.contracts import (
    MAX_JOBS_PER_BATCH,
    DeliveryJob,
    DeliveryJobBatch,
    Event,
    utcnow,
)
from shared.ordering import lane_of

log = structlog.get_logger("dihya.ingest.consumer")

BATCH_SIZE = 500
"""Most event ids looked up or recorded in one database call."""
RATE_CHECKED_HEADER = "x-dihya-tenant-rate-checked"
"""Set by ingest's HTTP door on the events it publishes: their tenant's rate was checked
there (429), so the consumer does not count them a second time."""


class JobPublisher:
    """Publishes delivery jobs to the signer in batches: :meth:`send` returns once the job is
    confirmed.

    No linger: a batch leaves as soon as the previous one is confirmed, holding whatever was
    submitted meanwhile, so an idle system sends each job at once (as a plain
    :class:`~shared.contracts.DeliveryJob`, with its ids in headers) and a busy one sends a
    batch per confirm round trip. Measured at saturation on the bench's 2-core machine: one
    message per job cost the signer about a third of its CPU in consuming and acking, and
    RabbitMQ a queue hop per job.
    """

    def __init__(self, publisher: Publisher, *, size: int = MAX_JOBS_PER_BATCH) -> None:
        self._publisher = publisher
        self._batcher: Batcher[tuple[DeliveryJob, str], None] = Batcher(
            self._publish, size=min(size, MAX_JOBS_PER_BATCH), name="delivery jobs")

    def start(self) -> None:
        self._batcher.start()

    async def send(self, job: DeliveryJob) -> None:
        # The batcher publishes from a task of its own, outside the event's trace: each job
        # takes its trace along (``traceparent``, or one per job on a batch).
        carrier: dict[str, str] = {}
        telemetry.inject(carrier)
        await self._batcher.submit((job, carrier.get("traceparent", "")))

    async def close(self, grace: float = 10.0) -> None:
        """Publish what is pending (within ``grace``), then refuse new jobs."""
        await self._batcher.stop(grace)

    async def _publish(self, items: Sequence[tuple[DeliveryJob, str]]) -> None:
        parents = [parent for _, parent in items]
        if len(items) == 1:
            job = items[0][0]
            headers = {"x-dihya-event-id": job.event.id or "",
                       "x-dihya-delivery-id": job.delivery_id}
            if parents[0]:
                headers["traceparent"] = parents[0]
            await self._publisher.send(topology.WORK_EXCHANGE, topology.SIGN, job,
                                       headers=headers)
            return
        batch_headers: dict[str, Any] = {topology.BATCH_HEADER: len(items)}
        if any(parents):
            batch_headers[topology.TRACES_HEADER] = parents
        await self._publisher.send(topology.WORK_EXCHANGE, topology.SIGN,
                                   DeliveryJobBatch(jobs=[job for job, _ in items]),
                                   headers=batch_headers)


class EventHandler:
    """``Consumer`` handler for the ingest events queue."""

    def __init__(self, store: Store, publisher: Publisher, *, max_fanout: int,
                 max_bytes: int, window_seconds: int = 0, catalog: Catalog | None = None,
                 unknown_event_types: UnknownPolicy = "accept",
                 message_log: MessageLog | None = None, keep_payloads: bool = True,
                 tenants: TenantStore | None = None, default_tenant: str | None = None,
                 rate: TenantQuota | None = None) -> None:
        self._max_bytes = max_bytes
        self._tenants = tenants if tenants is not None else TenantStore(store.engine)
        self._default_tenant = default_tenant
        self._rate = rate or TenantQuota(0)
        self._catalog = catalog or bundled()
        self._unknown: UnknownPolicy = unknown_event_types
        self._store = store
        self._publisher = publisher
        # Lingering batches, as every service's: audit stores an event's delivery facts after
        # its acceptance whichever arrives first (services/audit/ordering.py).
        self._facts = FactPublisher(publisher)
        self._jobs = JobPublisher(publisher)
        self._turnstile = Turnstile()
        self._max_fanout = max_fanout
        self._window = window_seconds
        self._lookups: Batcher[str, datetime | None] = Batcher(
            self._look_up, size=BATCH_SIZE, name="seen-event look-up")
        # No linger on records, though only the ack waits for them: until its record commits,
        # a second copy of the event would fan out again (tests/integration/test_ingest_dedupe).
        self._records: Batcher[tuple[str, datetime], None] = Batcher(
            self._record, size=BATCH_SIZE, name="seen-event record")
        self._log = message_log
        self._keep_payloads = keep_payloads
        self._log_writes: Batcher[tuple[LogEvent, list[LogDelivery]], None] = Batcher(
            self._write_log, size=BATCH_SIZE, name="message log")

    def start(self) -> None:
        """Start the look-up, record and job writers (before the consumer delivers)."""
        self._lookups.start()
        self._records.start()
        self._log_writes.start()
        self._jobs.start()

    async def close(self, grace: float = 10.0) -> None:
        """Finish pending look-ups, records, jobs and facts (after the consumer stopped)."""
        await asyncio.gather(self._lookups.stop(grace), self._records.stop(grace),
                             self._log_writes.stop(grace), self._jobs.close(grace),
                             self._facts.close(grace))

    async def _look_up(self, event_ids: Sequence[str]) -> list[datetime | None]:
        seen = await self._store.seen_many(set(event_ids))
        return [seen.get(event_id) for event_id in event_ids]

    async def _record(self, items: Sequence[tuple[str, datetime]]) -> None:
        await self._store.remember_events([event_id for event_id, _ in items],
                                          max(now for _, now in items))

    async def _write_log(self, items: Sequence[tuple[LogEvent, list[LogDelivery]]]) -> None:
        assert self._log is not None
        await self._log.record([event for event, _ in items],
                               [d for _, deliveries in items for d in deliveries])

    async def _log_accepted(self, event: Event, jobs: Sequence[DeliveryJob],
                            held: Sequence[HeldJob], now: datetime, tenant: str | None
                            ) -> None:
        """Record the event (of ``tenant``; ``None``: every tenant) in the message log; a
        failure is logged, never raised."""
        if self._log is None:
            return
        deliveries = ([log_delivery(job, now) for job in jobs]
                      + [log_delivery(item.job, now, held=True) for item in held])
        try:
            await self._log_writes.submit(
                (log_event(event, now, keep_payload=self._keep_payloads, tenant=tenant),
                 deliveries))
        except Exception as exc:
            log.warning("message_log_write_failed", event_id=event.id,
                        error=type(exc).__name__)

    async def __call__(self, message: Delivery) -> None:
        ticket = self._turnstile.enter()  # before any await: the arrival order
        try:
            await self._handle(message, ticket)
        finally:
            self._turnstile.leave(ticket)

    async def _handle(self, message: Delivery, ticket: int) -> None:
        decoded = decode(message.body, message.type, max_bytes=self._max_bytes)
        if isinstance(decoded, Rejection):
            await self._reject(message, decoded)
            return
        now = utcnow()
        event = complete(decoded, message_id=message.message_id, now=now)
        misrouted = route_refusal(event, exchange=message.exchange,
                                  routing_key=message.routing_key, headers=message.headers)
        if misrouted is not None:
            await self._reject(message, misrouted, event_id=event.id)
            return
        screened = screen(event, self._catalog, self._unknown)
        if isinstance(screened, Rejection):
            await self._reject(message, screened, event_id=event.id)
            return
        event = screened
        assert event.id is not None
        scope = await self._scope(event)
        if isinstance(scope, TenantRefusal):
            await self._reject(message, Rejection(scope.reason, scope.error, event.event),
                               event_id=event.id)
            return
        if self._window > 0 and seen_recently(await self._lookups.submit(event.id), now,
                                              self._window):
            metrics.EVENTS_DUPLICATE.inc()
            log.info("event_duplicate", event_id=event.id, event_type=event.event,
                     message_id=message.message_id, redelivered=message.redelivered)
            return
        tenant = None if isinstance(scope, AllTenants) else scope
        if (tenant is not None and RATE_CHECKED_HEADER not in message.headers
                and await self._rate.take(tenant) > 0):
            await self._reject(message, Rejection(
                "tenant_rate_limited", f"more than {self._rate.per_second:g} events per second "
                "for this tenant (DIHYA_INGEST_TENANT_EVENTS_PER_SECOND)", event.event),
                event_id=event.id, tenant=tenant)
            return
        jobs, held = fan_out(event, scope, await self._store.subscribers_of(tenant))
        if len(jobs) + len(held) > self._max_fanout:
            await self._reject(message, Rejection(
                "fanout_limit",
                f"{len(jobs) + len(held)} endpoints match; DIHYA_INGEST_MAX_FANOUT is "
                f"{self._max_fanout}", event.event), event_id=event.id)
            return
        # Held deliveries are committed before anything is published: once the event is
        # acked, every delivery it owes is either on its way or in the store.
        await self._store.hold(held, now=now)
        fact = accepted_fact(event, jobs, now, tenant=tenant)
        ordered = [job for job in jobs if job.fifo_key is not None]
        keys = frozenset((job.endpoint_id, job.fifo_key) for job in ordered)
        self._turnstile.declare(ticket, keys)  # none: later events need not wait for it
        if ordered:  # to their lanes, after every earlier event's of the same keys
            await self._turnstile.wait_turn(ticket, keys)
            await confirm_all(self._publisher.send(
                topology.WORK_EXCHANGE,
                topology.fifo_key(lane_of(job.endpoint_id, job.fifo_key, topology.FIFO_LANES)),
                job, headers={"x-dihya-event-id": event.id, "x-dihya-delivery-id":
                              job.delivery_id}) for job in ordered if job.fifo_key is not None)
            self._turnstile.leave(ticket)
        # The jobs and the facts go with the other events' in batches (JobPublisher,
        # FactPublisher); both are confirmed before the event is acked, in whichever order.
        await confirm_all(
            [self._jobs.send(job) for job in jobs if job.fifo_key is None]
            + [self._facts.send(fact)]
            + [self._facts.send(held_fact(item, now)) for item in held]
            + [self._log_accepted(event, jobs, held, now, tenant)]
        )
        await self._remember(event.id, now)
        metrics.accepted(event.event, len(jobs))
        metrics.DELIVERIES_HELD.inc(len(held))
        # debug, as the deliverer's successful attempts: the audit log records each acceptance
        log.debug("event_accepted", event_id=event.id, event_type=event.event,
                  endpoints=len(jobs), held=len(held), redelivered=message.redelivered,
                  delivery_ids=[j.delivery_id for j in jobs][:20])

    async def _scope(self, event: Event) -> Scope | TenantRefusal:
        """The event's audience: its tenant's id, every tenant, or why it has none."""
        ref = requested(event, self._default_tenant)
        if isinstance(ref, TenantRefusal | AllTenants):
            return ref
        tenant = await self._tenants.resolve(ref)
        if tenant is None:
            return TenantRefusal("unknown_tenant", f"tenant: no tenant {ref[:130]!r}")
        return tenant

    async def _remember(self, event_id: str, now: datetime) -> None:
        """Record the id as fanned out — only now, after every confirm. A failure here is
        logged, not raised: the event is done, and requeueing it would duplicate for sure
        what a missing record only might."""
        if self._window <= 0:
            return
        try:
            await self._records.submit((event_id, now))
        except Exception as exc:
            log.warning("event_id_not_recorded", event_id=event_id, error=type(exc).__name__)

    async def _reject(self, message: Delivery, rejection: Rejection,
                      *, event_id: str | None = None, tenant: str | None = None) -> None:
        fact = rejected_fact(rejection, utcnow(), event_id=event_id, tenant=tenant)
        headers = dict(message.headers)
        if not moved_in(message.exchange, message.routing_key):  # moved back: keep the first
            headers[ROUTED_AS_HEADER] = message.routing_key or ""
        await confirm_all([
            self._publisher.park_body(topology.INGEST_EVENTS, message.body,
                                      reason=rejection.reason, error=rejection.error,
                                      headers=headers, type=message.type),
            self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact),
        ])
        metrics.rejected(rejection.event_type, rejection.reason)
        log.warning("event_rejected", reason=rejection.reason, error=rejection.error,
                    event_type=rejection.event_type, event_id=event_id)
