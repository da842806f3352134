"""Ordered (FIFO) endpoints in the deliverer: one delivery per key at a time, in lane order.

A FIFO lane (:func:`shared.topology.fifo_queue`) has one active consumer among the deliverer
replicas, so one process gets every message of a key, in the order ingest published them.
Within that process the messages of one key take turns (:class:`shared.turns.KeyTurns`) in
arrival order: the first holds its key while it is signed, POSTed, retried and finally
delivered or dead-lettered, and only then does the next one start. Different keys (of the
lane, or of other lanes) go on side by side, up to the lane's prefetch.

Signing happens at the last moment, for each attempt, by asking the signer
(:class:`SignNow`, RPC over direct reply-to): a delivery held behind a failing one never
carries a signature older than its POST.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import structlog
from aio_pika.abc import AbstractRobustConnection
from pydantic import Field, TypeAdapter, ValidationError

from services.deliverer.metrics import ORDERED
from shared import topology
from shared.broker.rpc import Requester
from shared.contracts import DeliveryJob, SignedDelivery, SignRefusal, encode

log = structlog.get_logger("dihya.deliverer")

ASK_AGAIN_AFTER = 1.0
"""Seconds before a sign-now request that got no answer is asked again."""


class SignNow:
    """Asks the signer to sign a job now; an unanswered request is asked again (the signer
    down or slow is an infrastructure fault: it costs the delivery no attempt)."""

    def __init__(self, connection: AbstractRobustConnection, timeout: float) -> None:
        self._requester = Requester(connection, topology.WORK_EXCHANGE, topology.SIGN_NOW)
        self._timeout = timeout

    async def sign(self, job: DeliveryJob) -> SignedDelivery | SignRefusal:
        """``job`` signed now, or the signer's refusal."""
        while True:
            try:
                answer = await self._requester.call(encode(job), type=job.type,
                                                    timeout=self._timeout)
            except TimeoutError as exc:
                ORDERED.labels("unanswered").inc()
                log.warning("sign_now_unanswered", delivery_id=job.delivery_id,
                            attempt=job.attempt, error=str(exc)[:200])
                await asyncio.sleep(ASK_AGAIN_AFTER)
                continue
            ORDERED.labels("signed").inc()
            return parse_answer(answer)

    async def close(self) -> None:
        await self._requester.close()


_ANSWER: TypeAdapter[SignedDelivery | SignRefusal] = TypeAdapter(
    Annotated[SignedDelivery | SignRefusal, Field(discriminator="type")])


def parse_answer(body: bytes) -> SignedDelivery | SignRefusal:
    """The signer's answer: a signed delivery or a refusal. One it cannot read counts as a
    refusal (``unsignable``): asking again would get the same."""
    try:
        return _ANSWER.validate_json(body)
    except ValidationError as exc:
        return SignRefusal(reason="unsignable",
                           error=f"unreadable sign-now answer: {exc.error_count()} errors")
