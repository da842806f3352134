"""The dead-letter store's intake: consume the signer's and the deliverer's parking queues.

The deliverer parks a delivery whose attempts are exhausted (or that cannot be retried: 410,
SSRF) in ``dihya.deliverer.jobs.dead``; the signer parks what it cannot sign in
``dihya.signer.jobs.dead``; the broker parks there what crashed a consumer too often. Ingest
takes each of them into durable storage, where the API lists them and an administrator resends
them (``POST /v1/deliveries/{id}/retry``, ``POST /v1/endpoints/{id}/recover``).

* A message that is a :class:`~shared.contracts.DeliveryJob` (or a
  :class:`~shared.contracts.SignedDelivery`, whose job it carries) becomes a ``failed`` row,
  keyed by delivery id, with its reason and full attempt history; a
  :class:`~shared.contracts.DeliveryJobBatch` (parked by the broker) a row per job.
* Anything else is kept verbatim in ``parked_messages`` (queue, reason, headers, body): never
  lost, never blocking the messages behind it.

The message is acked only after its row is committed (:class:`shared.broker.Consumer` acks when
the handler returns). What the broker parked on its own was audited by nobody, so ingest
publishes a ``delivery.parked`` fact for it (id derived from the body: a redelivery repeats it,
audit keeps one). Each stored delivery is also announced as the operational event
``delivery.exhausted`` (reason and attempt summary; id derived from the delivery, so a
redelivery repeats it) — except deliveries of operational events themselves.
"""

from __future__ import annotations

import asyncio

import structlog

from services.ingest import metrics
from services.ingest.decisions import (
    broker_parked_fact,
    exhausted_event,
    json_safe,
    parked_message_id,
    read_dead_letters,
)
from services.ingest.message_log import MessageLog
from services.ingest.store import ParkedRecord, Store
from shared import topology
from shared.broker import Delivery, Publisher, confirm_all
from shared.contracts import utcnow

log = structlog.get_logger("dihya.ingest.dead_letters")

DEAD_LETTER_QUEUES = (topology.dead_queue(topology.DELIVERER_JOBS),
                      topology.dead_queue(topology.SIGNER_JOBS))
"""The parking queues whose deliveries ingest stores."""
STORAGE_BACKOFF = 1.0
"""Seconds to wait before handing a message back when storage failed: the parking queues have
no delivery limit (they are the end of the line), so this keeps a database outage from turning
into a busy redelivery loop."""


class DeadLetterHandler:
    """``Consumer`` handler of one parking queue."""

    def __init__(self, store: Store, publisher: Publisher, queue: str,
                 message_log: MessageLog | None = None) -> None:
        self._store = store
        self._log = message_log
        self._publisher = publisher
        self._queue = queue

    async def __call__(self, message: Delivery) -> None:
        headers = dict(message.headers or {})
        dead = read_dead_letters(message.body, headers)
        now = utcnow()
        try:
            if isinstance(dead, list):
                kept = [await self._store.record_failure(one, queue=self._queue, now=now)
                        for one in dead]
                if self._log is not None:  # the message log shows them failed too
                    await self._log.mark([job.delivery_id for job in kept], "failed", now)
            else:
                ident = parked_message_id(self._queue, message.message_id, message.body)
                safe = json_safe(headers)
                await self._store.park_message(ParkedRecord(
                    id=ident, queue=self._queue, reason=dead.reason, error=dead.error,
                    headers=safe if isinstance(safe, dict) else {}, body=message.body,
                    parked_at=now))
        except Exception as exc:
            log.error("dead_letter_not_stored", queue=self._queue, error=type(exc).__name__)
            await asyncio.sleep(STORAGE_BACKOFF)
            raise
        if not isinstance(dead, list):
            if dead.broker_parked:
                fact = broker_parked_fact(self._queue, dead, message.body, now)
                await self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
        elif dead[0].broker_parked:  # a batch's jobs share how it was parked
            facts = [broker_parked_fact(self._queue, one, message.body, now,
                                        of_batch=len(dead) > 1) for one in dead]
            await confirm_all(self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
                              for fact in facts)
        if isinstance(dead, list):  # the operational event delivery.exhausted, per delivery
            events = [e for e in (exhausted_event(one, now) for one in dead) if e is not None]
            await confirm_all(self._publisher.send(topology.EVENTS_EXCHANGE, e.event, e)
                              for e in events)
            for one, job in zip(dead, kept, strict=True):
                metrics.DEAD_LETTERS.labels(queue=self._queue, kind="delivery").inc()
                log.warning("delivery_dead_lettered", queue=self._queue,
                            delivery_id=job.delivery_id, endpoint_id=job.endpoint_id,
                            event_id=job.event.id, attempt=job.attempt, reason=one.reason,
                            attempts=len(job.history))
        else:
            metrics.DEAD_LETTERS.labels(queue=self._queue, kind="unreadable").inc()
            log.warning("unreadable_message_parked", queue=self._queue, reason=dead.reason,
                        error=dead.error, size=len(message.body))
