"""Audit facts in batches: many facts of a kind leave as one confirmed message."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence

import structlog

from shared import outages, topology
from shared.batching import Batcher
from shared.broker.consumer import OUTAGE_FIRST, OUTAGE_MAX
from shared.broker.publisher import Publisher
from shared.contracts import MAX_FACTS_PER_BATCH, AuditFact, AuditFactBatch

log = structlog.get_logger("dihya.broker")

FACT_LINGER = 0.1
"""Seconds a batch of audit facts waits for more facts of its kind (see FactPublisher): only
the producing message's ack waits, so a longer linger costs prefetch slots, not latency."""


class FactPublisher:
    """Publishes audit facts in batches: :meth:`send` returns once the fact is confirmed.

    One :class:`shared.batching.Batcher` per fact kind (the routing key): the facts of a kind
    that arrive within ``linger`` seconds of the first, or while a batch is in flight, leave
    together as one :class:`AuditFactBatch`. The caller acks its own message only after
    :meth:`send` returned, as with :meth:`Publisher.send` — at-least-once is unchanged, the
    broker work per fact is not.

    Why linger: without load to group them, every fact would be a message of its own, consumed
    by audit (and ``delivery.attempted`` by ingest's health queue too). The wait delays only
    the *ack* of the message that produced the fact — its successors (jobs, the POST) have
    already left — so it costs no delivery latency, only a few more messages in flight.
    """

    def __init__(self, publisher: Publisher, *, size: int = MAX_FACTS_PER_BATCH,
                 linger: float = FACT_LINGER) -> None:
        self._publisher = publisher
        self._size = min(size, MAX_FACTS_PER_BATCH)
        self._linger = linger
        self._kinds: dict[str, Batcher[AuditFact, None]] = {}
        self._closed = False

    async def send(self, fact: AuditFact) -> None:
        batcher = self._kinds.get(fact.kind)
        if batcher is None:
            if self._closed:
                raise RuntimeError("the fact publisher is closed")
            batcher = Batcher(functools.partial(self._publish, fact.kind), size=self._size,
                              wait=self._linger, name=f"{fact.kind} facts")
            batcher.start()
            self._kinds[fact.kind] = batcher
        await batcher.submit(fact)

    async def send_until_confirmed(self, fact: AuditFact) -> None:
        """:meth:`send`, again and again (same fact, same id) while it fails for want of the
        broker (:func:`shared.outages.is_infrastructure`), backing off as a paused consumer
        does; any other failure is raised.

        For a fact about something done outside, that cannot be taken back — a POST: the
        message that led to it may be redelivered and do it again (a record of its own), but
        this one must be recorded too, even when its own message's ack is lost with the
        connection. Audit keeps one record if the fact arrives twice. Cancellation (the
        service stopping) ends the attempts.
        """
        delay = OUTAGE_FIRST
        while True:
            try:
                await self.send(fact)
                return
            except Exception as exc:
                if not outages.is_infrastructure(exc):
                    raise
                log.warning("fact_publish_retry", kind=fact.kind, fact_id=fact.id,
                            error=outages.describe(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_MAX)

    async def send_after(self, first: Awaitable[None], fact: AuditFact) -> None:
        """Publish ``fact`` on its own once ``first`` is confirmed — for a fact the audit log
        must show after another that travels in a lingering batch (a giving up after its
        attempt). Audit orders an event's facts after its acceptance by itself."""
        await first
        await self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)

    async def _publish(self, kind: str, facts: Sequence[AuditFact]) -> None:
        await self._publisher.send(topology.AUDIT_EXCHANGE, kind,
                                   AuditFactBatch(facts=list(facts)))

    async def close(self, grace: float = 10.0) -> None:
        """Publish what is pending (within ``grace``), then refuse new facts."""
        self._closed = True
        await asyncio.gather(*(b.stop(grace) for b in self._kinds.values()))

