"""Endpoint health, judged from the deliverer's ``delivery.attempted`` facts.

Ingest consumes a quorum queue of its own (:data:`HEALTH_QUEUE`, in the shared topology)
bound to the audit exchange with the routing key ``delivery.attempted``: it sees every attempt
without the deliverer knowing about it, and without reading the audit service's database
(services share contracts, nothing else).

The decision is :func:`services.ingest.decisions.assess`. Applying it is a compare-and-set on
the endpoint row, so several consumers and replicas may judge at once and exactly one turns an
endpoint off. That one, inside the same transaction, publishes the ``endpoint.disabled`` audit
fact and the operational ``endpoint.disabled`` event (routed like any event: an admin endpoint
subscribed to it is notified); the row is committed only after both are confirmed. The same
compare-and-set counts consecutive failed attempts and, crossing
``DIHYA_INGEST_FAILING_AFTER``, publishes ``endpoint.failing`` — and ``endpoint.recovered`` at
the next delivered attempt. So a disable
is announced once — or, after a crash between confirm and commit, once more with the same ids.

The same facts feed the message log (:mod:`.message_log`): each attempt is recorded (once per
delivery and attempt number) before health is judged — through one writer (a
:class:`~shared.batching.Batcher`), so the consumer's many concurrent messages make one
transaction at a time rather than one each (on SQLite those waited for each other's locks and
emptied the connection pool the event path needs). A failed log write is logged, not raised:
the log is a view, and a requeue would only add load where the database is already struggling.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog

from services.ingest import metrics
from services.ingest.decisions import (
    DELIVERED_RESOLUTION,
    Attempt,
    Health,
    assess,
    attempt_of,
    disabled_event,
    disabled_fact,
    health_event,
)
from services.ingest.decisions.messages import LogAttempt, attempt_from_fact
from services.ingest.message_log import MessageLog
from services.ingest.store import Store
from shared import topology
from shared.batching import Batcher
from shared.broker import Delivery, Publisher, confirm_all
from shared.contracts import AuditFact, decode_facts, utcnow
from shared.turns import KeyTurns

log = structlog.get_logger("dihya.ingest.health")

HEALTH_QUEUE = topology.INGEST_HEALTH
ATTEMPT_BATCH = 500
"""Most attempts written to the message log in one transaction."""
MAX_CONTENTION = 20
"""Compare-and-set rounds before giving the fact back (requeued) under heavy contention."""


class HealthHandler:
    """``Consumer`` handler of :data:`HEALTH_QUEUE`."""

    def __init__(self, store: Store, publisher: Publisher, *, disable_after: int,
                 message_log: MessageLog | None = None, failing_after: int = 0) -> None:
        self._store = store
        self._log = message_log
        self._attempts: Batcher[LogAttempt, None] | None = None
        if message_log is not None:
            self._attempts = Batcher(self._write_attempts, size=ATTEMPT_BATCH,
                                     name="message log attempts")
        self._publisher = publisher
        self._disable_after = timedelta(seconds=disable_after)
        self._failing_after = failing_after
        self._healthy: dict[str, datetime] = {}
        """Endpoints last seen enabled and not failing → their stored ``last_delivered_at``."""
        self._turns = KeyTurns()
        """The facts of one endpoint are judged one after another in this process: judged side
        by side, each read the same row and all but one lost the compare-and-set, again and
        again (measured: an endpoint failing ~40 times a second made 2,193 handler failures
        and 120 parked facts). The compare-and-set remains for the other replicas."""

    async def __call__(self, message: Delivery) -> None:
        try:
            facts = decode_facts(message.body)
        except ValueError as exc:
            # A copy of an audit fact: the audit service parks and audits the bad original.
            metrics.HEALTH_FACTS.labels(result="ignored").inc()
            log.warning("health_fact_unreadable", error=str(exc)[:300])
            return
        await self._record([a for a in map(attempt_from_fact, facts) if a is not None])
        for fact in facts:  # in order: a batch holds one deliverer's attempts as they came
            await self.judge(fact)

    async def _record(self, attempts: list[LogAttempt]) -> None:
        """Add the attempts to the message log (one writer); a failure is logged only."""
        if self._attempts is None or not attempts:
            return
        self._attempts.start()  # idempotent; here because it needs the running loop
        try:
            await confirm_all(self._attempts.submit(a) for a in attempts)
        except Exception as exc:
            log.warning("message_log_attempts_failed", attempts=len(attempts),
                        error=type(exc).__name__)

    async def _write_attempts(self, items: Sequence[LogAttempt]) -> None:
        assert self._log is not None
        await self._log.record_attempts(items, utcnow())

    async def close(self, grace: float = 5.0) -> None:
        """Finish the pending message-log writes (after the consumer stopped)."""
        if self._attempts is not None:
            await self._attempts.stop(grace)

    async def judge(self, fact: AuditFact) -> None:
        """Apply one ``delivery.attempted`` fact to its endpoint's health."""
        attempt = attempt_of(fact)
        if attempt is None or fact.endpoint_id is None:
            metrics.HEALTH_FACTS.labels(result="ignored").inc()
            return
        endpoint_id = fact.endpoint_id
        known = self._healthy.get(endpoint_id)
        if attempt.delivered and known is not None and (
                attempt.at - known < DELIVERED_RESOLUTION):
            # A success of an endpoint known healthy changes nothing (see assess): no read.
            # Had another replica meanwhile seen it fail, the next success past the
            # resolution reads the row and ends that run — harmless against days.
            metrics.HEALTH_FACTS.labels(result="unchanged").inc()
            return
        self._healthy.pop(endpoint_id, None)
        async with self._turns.turn(endpoint_id):  # one judgement per endpoint at a time here
            await self._judge(fact, attempt, endpoint_id)

    async def _judge(self, fact: AuditFact, attempt: Attempt, endpoint_id: str) -> None:
        for _ in range(MAX_CONTENTION):
            record = await self._store.get_endpoint(endpoint_id)
            if record is None:  # deleted since: nothing to judge
                metrics.HEALTH_FACTS.labels(result="ignored").inc()
                return
            verdict = assess(record.health, attempt, self._disable_after, self._failing_after)
            if verdict.health == record.health:
                self._note(endpoint_id, record.health)
                metrics.HEALTH_FACTS.labels(result="unchanged").inc()
                return
            now = utcnow()
            async with self._store.transaction() as conn:
                if not await self._store.set_health(conn, endpoint_id, record.health,
                                                    verdict.health,
                                                    disabled_reason=verdict.disable, now=now):
                    continue  # changed meanwhile: judge again on the fresh row
                if verdict.announce is not None:  # endpoint.failing / endpoint.recovered
                    announced = health_event(
                        verdict.announce, endpoint_id, record.url, trigger=fact.id,
                        failures=verdict.health.failures,
                        failing_since=verdict.health.failing_since, now=now,
                        tenant=record.tenant_id)
                    await self._publisher.send(topology.EVENTS_EXCHANGE, announced.event,
                                               announced)
                if verdict.disable is not None:
                    audit = disabled_fact(endpoint_id, record.url, verdict.disable,
                                          trigger=fact.id, actor=None,
                                          failing_since=verdict.health.failing_since, now=now,
                                          tenant=record.tenant_id)
                    event = disabled_event(endpoint_id, record.url, verdict.disable,
                                           trigger=fact.id, now=now, tenant=record.tenant_id)
                    await confirm_all([
                        self._publisher.send(topology.AUDIT_EXCHANGE, audit.kind, audit),
                        self._publisher.send(topology.EVENTS_EXCHANGE, event.event, event),
                    ])
            self._note(endpoint_id, verdict.health)
            metrics.HEALTH_FACTS.labels(
                result="updated" if verdict.disable is None else "disabled").inc()
            if verdict.disable is not None:
                metrics.ENDPOINTS_DISABLED.labels(reason=verdict.disable).inc()
                log.warning("endpoint_disabled", endpoint_id=endpoint_id,
                            reason=verdict.disable, status_code=fact.status_code,
                            delivery_id=fact.delivery_id, attempt=fact.attempt,
                            failing_since=str(verdict.health.failing_since))
            return
        raise RuntimeError(f"endpoint {endpoint_id} health contention did not settle")

    def _note(self, endpoint_id: str, health: Health) -> None:
        """Remember an endpoint as healthy (enabled, not failing) — or forget it."""
        if (health.status == "enabled" and health.failing_since is None
                and health.last_delivered_at is not None):
            self._healthy[endpoint_id] = health.last_delivered_at
        else:
            self._healthy.pop(endpoint_id, None)
