"""Reading a bounded number of messages off a queue, and a queue's depth: what a sweep needs
(the deliverer's catch-up, :mod:`services.deliverer.catchup`), where a :class:`Consumer`
consumes for ever.

aio-pika's public API only, on a channel the caller opens and closes: closing it hands back
every message taken and not settled (the broker returns them to the head of their queue, in
order), which is the at-least-once path of a sweep that stops half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

IDLE = 1.0
"""Seconds :func:`take` waits for a message before it decides the queue has no more for it
(messages of a wait queue may expire, and dead-letter, between the count and the read)."""

FILL = 0.005
"""Seconds :func:`take` waits for one more message to fill a batch (a batch costs the caller
a round trip of publisher confirms, whatever its size)."""


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    """Ready messages in ``queue`` now (a passive declare; unacked ones not counted). The
    queue must exist: a missing one closes the channel (``ChannelClosed``, 404).

    On the underlying channel: a robust channel's ``declare_queue(passive=True)`` of a queue
    it declared before hands back that queue object, with the count it had then."""
    underlay = await channel.get_underlay_channel()
    result = await underlay.queue_declare(queue, passive=True)
    return int(result.message_count or 0)


async def take(channel: AbstractChannel, queue: str, count: int, *, batch: int = 256,
               idle: float = IDLE) -> AsyncGenerator[list[AbstractIncomingMessage], None]:
    """The first ``count`` messages ``queue`` hands out, in batches of at most ``batch``, in
    queue order; it stops early once none came for ``idle`` seconds.

    The caller settles every message of a batch (ack, or nack to requeue) before it asks for
    the next one: the channel's prefetch is one batch, so the broker sends no more while the
    caller holds one (a caller that waits holds no more than a batch back). Use it in
    ``contextlib.aclosing``: on the way out the consumer is cancelled and what arrived beyond
    ``count`` is requeued.
    """
    if count <= 0:
        return
    await channel.set_qos(prefetch_count=min(batch, count))
    source = await channel.declare_queue(queue, passive=True)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await source.consume(inbox.put)
    taken = 0
    try:
        while taken < count:
            try:
                first = await asyncio.wait_for(inbox.get(), idle)
            except TimeoutError:
                return
            got = [first]
            wanted = min(batch, count - taken)
            while len(got) < wanted:
                if inbox.empty():  # the rest of a prefetch is usually on its way: fill up
                    try:
                        got.append(await asyncio.wait_for(inbox.get(), FILL))
                    except TimeoutError:
                        break
                else:
                    got.append(inbox.get_nowait())
            taken += len(got)
            yield got
    finally:
        with contextlib.suppress(Exception):
            await source.cancel(tag)
        while not inbox.empty():  # beyond the count: back to the head of the queue, in order
            with contextlib.suppress(Exception):
                await inbox.get_nowait().nack(requeue=True)
