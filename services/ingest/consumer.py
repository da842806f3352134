"""The one path every event takes: consume ``dihya.ingest.events``, validate, fan out.

Events published over HTTP and events published straight to the events exchange arrive here
alike. The handler publishes the delivery jobs and the ``event.accepted`` fact and awaits every
confirm before it returns; only then does :class:`shared.broker.Consumer` ack the event. If any
publish fails the handler raises and the event is requeued: a crash at any point can duplicate
jobs (with the same delivery ids) but never lose one.

A message that cannot be an event is parked in ``dihya.ingest.events.dead`` with its reason and
audited, then acked: a bad message never stops the consumer nor blocks the ones behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable

import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.ingest import metrics
from services.ingest.handlers import (
    Rejection,
    accepted_fact,
    complete,
    decode,
    plan,
    rejected_fact,
)
from services.ingest.store import Store
from shared import topology
from shared.broker import Publisher
from shared.contracts import utcnow

log = structlog.get_logger("dihya.ingest.consumer")


async def confirm_all(publishes: Iterable[Awaitable[None]]) -> None:
    """Await every publish (confirms pipelined), then raise the first failure, if any.

    ``gather(return_exceptions=True)`` lets every publish settle first, so no publish is left
    running unobserved when the handler gives the message back.
    """
    results = await asyncio.gather(*publishes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class EventHandler:
    """``Consumer`` handler for the ingest events queue."""

    def __init__(self, store: Store, publisher: Publisher, *, max_fanout: int) -> None:
        self._store = store
        self._publisher = publisher
        self._max_fanout = max_fanout

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        decoded = decode(message.body, message.type)
        if isinstance(decoded, Rejection):
            await self._reject(message, decoded)
            return
        now = utcnow()
        event = complete(decoded, message_id=message.message_id, now=now)
        assert event.id is not None
        jobs = plan(event, await self._store.enabled_endpoints())
        if len(jobs) > self._max_fanout:
            await self._reject(message, Rejection(
                "fanout_limit",
                f"{len(jobs)} endpoints match; DIHYA_INGEST_MAX_FANOUT is {self._max_fanout}",
                event.event), event_id=event.id)
            return
        fact = accepted_fact(event, jobs, now)
        # Jobs first, the fact last: on one channel a queue receives them in this order.
        await confirm_all(
            [self._publisher.send(topology.WORK_EXCHANGE, topology.SIGN, job,
                                  headers={"x-dihya-event-id": event.id,
                                           "x-dihya-delivery-id": job.delivery_id})
             for job in jobs]
            + [self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)]
        )
        metrics.accepted(event.event, len(jobs))
        log.info("event_accepted", event_id=event.id, event_type=event.event,
                 endpoints=len(jobs), redelivered=message.redelivered,
                 delivery_ids=[j.delivery_id for j in jobs][:20])

    async def _reject(self, message: AbstractIncomingMessage, rejection: Rejection,
                      *, event_id: str | None = None) -> None:
        fact = rejected_fact(rejection, utcnow(), event_id=event_id)
        await confirm_all([
            self._publisher.park(topology.INGEST_EVENTS, message, reason=rejection.reason,
                                 error=rejection.error),
            self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact),
        ])
        metrics.rejected(rejection.event_type, rejection.reason)
        log.warning("event_rejected", reason=rejection.reason, error=rejection.error,
                    event_type=rejection.event_type, event_id=event_id)
