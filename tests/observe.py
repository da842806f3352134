"""Watch what crosses an exchange: a private queue whose messages a test picks by predicate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from shared.contracts import CONTRACTS, EVENT_TYPE_TAG, AuditFactBatch, DeliveryJobBatch, Event

BATCHES = {AuditFactBatch.model_fields["type"].default: "facts",
           DeliveryJobBatch.model_fields["type"].default: "jobs"}
"""Batch message types, and the field holding their items."""
READERS = {**{m.model_fields["type"].default: m for m in CONTRACTS if "type" in m.model_fields},
           EVENT_TYPE_TAG: Event}
"""Each contract by its type tag: what a consumer reads a message as."""


@dataclass(frozen=True)
class Seen:
    """A copy of what crossed the exchange (a batch of audit facts or of delivery jobs: one
    per item, ``batch`` telling how many the message held)."""

    exchange: str
    routing_key: str
    type: str | None
    headers: dict[str, Any]
    body: bytes
    message_id: str | None = None
    batch: int | None = None

    @property
    def json(self) -> Any:
        """The message as its consumer reads it: a contract's fields left out on the wire
        (``null``, see :func:`shared.contracts.encode`) are back as ``None``; anything that is
        not a valid contract, as sent."""
        raw = orjson.loads(self.body)
        tag = raw.get("type") if isinstance(raw, dict) else None
        model = READERS.get(tag if isinstance(tag, str) else self.type or "")
        if model is None:
            return raw
        try:
            return model.model_validate(raw).model_dump(mode="json")
        except ValidationError:
            return raw


def seen(message: AbstractIncomingMessage) -> list[Seen]:
    """``message`` as the test sees it: an :class:`AuditFactBatch` becomes its facts and a
    :class:`DeliveryJobBatch` its jobs, each as if published alone, so a test looks for one
    fact or job whichever way it travelled."""
    copy = Seen(message.exchange or "", message.routing_key or "", message.type,
                dict(message.headers or {}), message.body, message.message_id)
    field = BATCHES.get(message.type or "")
    if field is None:
        return [copy]
    items = orjson.loads(message.body)[field]
    return [replace(copy, type=item["type"], body=orjson.dumps(item), batch=len(items))
            for item in items]


Matcher = Callable[[Seen], bool]


class Observer:
    """A private queue bound to an exchange; collects what arrives for the test to pick."""

    def __init__(self) -> None:
        self.received: list[Seen] = []
        self._changed = asyncio.Event()

    async def _on(self, message: AbstractIncomingMessage) -> None:
        self.received.extend(seen(message))
        self._changed.set()

    async def bind(self, channel: AbstractChannel, exchange: str, routing_key: str) -> Observer:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key)
        await queue.consume(self._on, no_ack=True)
        return self

    async def next(self, match: Matcher, timeout: float = 10.0) -> Seen:
        """The first message (already arrived or to come) that ``match`` accepts."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.received:
                    if match(message):
                        self.received.remove(message)
                        return message
                self._changed.clear()
                await self._changed.wait()
