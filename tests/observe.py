"""Watch what crosses an exchange: a private queue whose messages a test picks by predicate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

Matcher = Callable[[AbstractIncomingMessage], bool]


class Observer:
    """A private queue bound to an exchange; collects what arrives for the test to pick."""

    def __init__(self) -> None:
        self.received: list[AbstractIncomingMessage] = []
        self._changed = asyncio.Event()

    async def _on(self, message: AbstractIncomingMessage) -> None:
        self.received.append(message)
        self._changed.set()

    async def bind(self, channel: AbstractChannel, exchange: str, routing_key: str) -> Observer:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key)
        await queue.consume(self._on, no_ack=True)
        return self

    async def next(self, match: Matcher, timeout: float = 10.0) -> AbstractIncomingMessage:
        """The first message (already arrived or to come) that ``match`` accepts."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.received:
                    if match(message):
                        self.received.remove(message)
                        return message
                self._changed.clear()
                await self._changed.wait()
