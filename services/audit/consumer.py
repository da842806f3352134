"""The fact path: consume ``dihya.audit.facts``, hold each fact until its event's acceptance is
stored (:mod:`.ordering`), hand it to the batch writer and return once its batch is committed
(:func:`.batcher.submit_retrying`); park what can never be stored.

:class:`FactWriter` is the writer's batch callback (one transaction per batch, see
:meth:`AuditStore.append`); :class:`FactHandler` is the ``Consumer`` handler of the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import structlog

from services.audit import decisions, metrics
from services.audit.batcher import submit_retrying
from services.audit.budget import ByteBudget
from services.audit.decisions import Rejected
from services.audit.ordering import AcceptanceGate
from services.audit.started import StartedAttempts
from services.audit.store import AuditStore, is_transient
from shared import topology
from shared.batching import Batcher
from shared.broker import Delivery, Publisher
from shared.contracts import AuditFact, encode

log = structlog.get_logger("dihya.audit.consumer")

RETRY_FIRST = 0.2
RETRY_MAX = 5.0
"""Backoff while the database is unreachable (seconds)."""


class FactWriter:
    """The batch writer's callback: append a batch to the chain, tell the gate, count it,
    forget the write-aheads of the outcomes it recorded (:mod:`.started`)."""

    def __init__(self, store: AuditStore, gate: AcceptanceGate,
                 write_aheads: StartedAttempts) -> None:
        self._store = store
        self._gate = gate
        self._write_aheads = write_aheads

    async def __call__(self, facts: Sequence[AuditFact]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await self._store.append(facts)
        self._gate.committed(facts)
        metrics.COMMIT_SECONDS.observe(loop.time() - started)
        metrics.BATCH_SIZE.observe(len(facts))
        metrics.RECORDS_WRITTEN.inc(len(result.records))
        metrics.DUPLICATES.inc(result.duplicates)
        # their write-aheads are done with (a failure here only leaves one for the sweep,
        # which then finds the id recorded: a duplicate, dropped)
        outcomes = [f.id for f in facts if f.kind == "delivery.attempted"]
        if outcomes:
            try:
                await self._write_aheads.forget(outcomes)
            except Exception as exc:
                log.warning("write_aheads_not_forgotten", count=len(outcomes),
                            error=f"{type(exc).__name__}: {exc}"[:300])
        log.debug("batch_committed", written=len(result.records),
                  duplicates=result.duplicates,
                  head_seq=result.records[-1]["seq"] if result.records else None)


async def park(publisher: Publisher, queue: str, message: Delivery, reason: str,
               why: str) -> None:
    """Set ``message`` aside on ``queue``'s parking queue with its reason, counted and logged."""
    await publisher.park(queue, message, reason=reason, error=why)
    metrics.PARKED.labels(queue, reason).inc()
    log.warning("message_parked", queue=queue, reason=reason, error=why,
                message_id=message.message_id)


class FactHandler:
    """``Consumer`` handler of :data:`shared.topology.AUDIT_FACTS`."""

    def __init__(self, batcher: Batcher[AuditFact, None], gate: AcceptanceGate,
                 publisher: Publisher, write_aheads: StartedAttempts, *,
                 acceptance_wait: float,
                 budgets: Mapping[str, ByteBudget] | None = None) -> None:
        self._batcher = batcher
        self._budgets = budgets
        self._gate = gate
        self._write_aheads = write_aheads
        self._publisher = publisher
        self._acceptance_wait = acceptance_wait

    async def __call__(self, message: Delivery) -> None:
        if self._budgets is None:
            await self._handle(message)
            return
        kind = decisions.budget_of(message.routing_key)
        budget = self._budgets[kind]
        gauge = metrics.FACT_BYTES_IN_PROCESS.labels(kind)
        try:
            async with budget.hold(len(message.body)):
                gauge.set(budget.held)
                await self._handle(message)
        finally:
            gauge.set(budget.held)

    async def _handle(self, message: Delivery) -> None:
        facts = decisions.decode_facts(message.body)
        if isinstance(facts, Rejected):
            await park(self._publisher, topology.AUDIT_FACTS, message, facts.reason,
                       facts.error)
            return
        ahead, facts = decisions.split_started(facts)
        await self._write_aheads.hold(ahead)  # a batch holds one kind: write-aheads, or none
        if not facts:
            return
        problems = [decisions.storable_problem(fact) for fact in facts]
        if len(facts) == 1 and problems[0]:
            await park(self._publisher, topology.AUDIT_FACTS, message, "schema_invalid",
                       problems[0])
            return
        # A batch: its storable facts are stored, each unstorable one is parked on its own.
        results = await asyncio.gather(
            *(self.store_fact(fact) if problem is None
              else self._park_fact(message, fact, problem)
              for fact, problem in zip(facts, problems, strict=True)),
            return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # requeued; the facts stored meanwhile are dropped as duplicates

    async def store_fact(self, fact: AuditFact) -> None:
        """Hand ``fact`` to the writer once its event's acceptance is stored (see ordering.py);
        return once it is committed (see submit_retrying)."""
        if not self._gate.passes(fact):
            with metrics.AWAITING_ACCEPTANCE.track_inprogress():
                accepted = await self._gate.wait(fact)
            if not accepted:
                metrics.STORED_BEFORE_ACCEPTANCE.inc()
                log.warning("stored_before_acceptance", fact_id=fact.id, kind=fact.kind,
                            event_id=fact.event_id, waited=self._acceptance_wait)
        loop = asyncio.get_running_loop()
        started = loop.time()
        metrics.AWAITING_COMMIT.inc()
        try:
            await submit_retrying(self._batcher, fact, transient=is_transient,
                                  first_delay=RETRY_FIRST, max_delay=RETRY_MAX)
        finally:
            metrics.AWAITING_COMMIT.dec()
        metrics.WRITE_LATENCY.observe(loop.time() - started)

    async def _park_fact(self, message: Delivery, fact: AuditFact, why: str) -> None:
        await self._publisher.park_body(topology.AUDIT_FACTS, encode(fact),
                                        reason="schema_invalid", error=why,
                                        headers=message.headers, type=fact.type)
        metrics.PARKED.labels(topology.AUDIT_FACTS, "schema_invalid").inc()
        log.warning("fact_parked", queue=topology.AUDIT_FACTS, reason="schema_invalid",
                    error=why, fact_id=fact.id, kind=fact.kind)
