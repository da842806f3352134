"""What the broker counts towards a quorum queue's delivery limit (``x-delivery-count``).

The consumer's outage handling rests on these (docs/operations.md, "Dependency outages"):
requeueing, a closed channel and a lost connection each count one; a message held unsettled
counts nothing and can still be acked. Measured on RabbitMQ 3.10.8; a broker version that
counts differently fails here first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiormq
import pytest
from aiormq.abc import DeliveredMessage

pytestmark = pytest.mark.integration


class _Taker:
    """A consumer of one queue on a channel of its own (prefetch 1); keeps what it gets."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self.got: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    @classmethod
    async def on(cls, connection: aiormq.Connection, queue: str) -> _Taker:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=1)
        taker = cls(channel)
        await channel.basic_consume(queue, taker._deliver)
        return taker

    async def _deliver(self, message: DeliveredMessage) -> None:
        await self.got.put(message)

    async def next(self) -> tuple[DeliveredMessage, int]:
        message = await asyncio.wait_for(self.got.get(), timeout=10)
        count = (message.header.properties.headers or {}).get("x-delivery-count", 0)
        assert isinstance(count, int)
        return message, count


@pytest.fixture
async def quorum(amqp_url: str) -> AsyncIterator[tuple[aiormq.Connection, str]]:
    """A quorum queue of the test's own holding one persistent message."""
    connection = await aiormq.connect(amqp_url)
    name = f"dihya.test.count.{uuid.uuid4().hex[:8]}"
    channel = await connection.channel()
    await channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.basic_publish(b"m", routing_key=name,
                                properties=aiormq.spec.Basic.Properties(delivery_mode=2))
    yield connection, name
    await channel.queue_delete(name)
    await connection.close()


async def test_each_requeue_counts(quorum: tuple[aiormq.Connection, str]) -> None:
    connection, name = quorum
    taker = await _Taker.on(connection, name)
    counts = []
    for _ in range(3):
        message, count = await taker.next()
        counts.append(count)
        assert message.delivery_tag is not None
        await taker.channel.basic_nack(message.delivery_tag, requeue=True)
    counts.append((await taker.next())[1])
    assert counts == [0, 1, 2, 3]


async def test_a_closed_channel_and_a_lost_connection_count(
        quorum: tuple[aiormq.Connection, str], amqp_url: str) -> None:
    connection, name = quorum
    counts = []
    taker = await _Taker.on(connection, name)
    counts.append((await taker.next())[1])
    await taker.channel.close()  # holding it: the broker takes it back
    other = await aiormq.connect(amqp_url)
    taker = await _Taker.on(other, name)
    counts.append((await taker.next())[1])
    await other.close()  # holding it: the broker takes it back
    taker = await _Taker.on(connection, name)
    counts.append((await taker.next())[1])
    assert counts == [0, 1, 2]


async def test_a_held_message_counts_nothing_and_can_be_acked_late(
        quorum: tuple[aiormq.Connection, str]) -> None:
    connection, name = quorum
    taker = await _Taker.on(connection, name)
    message, count = await taker.next()
    assert count == 0
    other = await connection.channel()
    assert (await other.basic_get(name)).delivery_tag is None  # held: no one else gets it
    assert message.delivery_tag is not None
    await taker.channel.basic_ack(message.delivery_tag)
    assert (await other.basic_get(name)).delivery_tag is None  # acked: gone
    await other.close()
