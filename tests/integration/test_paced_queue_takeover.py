"""What the paced queues rely on, checked on the real broker (RabbitMQ 3.10.8 here): a quorum
queue with ``x-single-active-consumer`` feeds one consumer among several, and when that
consumer's connection is gone the next one takes over — with the unacknowledged messages first,
in their original order, then the rest.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared import topology
from shared.broker import declare

pytestmark = pytest.mark.integration


async def test_one_consumer_is_fed_and_the_next_takes_over_in_order(amqp_url: str) -> None:
    first = await aio_pika.connect_robust(amqp_url)
    second = await aio_pika.connect(amqp_url)
    publisher = await aio_pika.connect(amqp_url)
    try:
        setup = await publisher.channel()
        await declare(setup)
        queue_name = topology.paced_queue(7)
        await (await setup.get_queue(queue_name)).purge()
        assert topology.PACED_QUEUES[7].arguments["x-single-active-consumer"] is True

        got: dict[str, list[tuple[int, bool]]] = {"first": [], "second": []}
        arrived = asyncio.Event()

        async def consume(connection: aio_pika.abc.AbstractConnection, name: str,
                          ack_first: int) -> None:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=10)
            queue = await channel.get_queue(queue_name)

            async def on_message(message: AbstractIncomingMessage) -> None:
                got[name].append((int(message.body), bool(message.redelivered)))
                if name == "second" or len(got[name]) <= ack_first:
                    await message.ack()
                arrived.set()

            await queue.consume(on_message)

        await consume(first, "first", ack_first=3)
        await consume(second, "second", ack_first=0)
        channel = await publisher.channel(publisher_confirms=True)
        for n in range(1, 31):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue_name)

        async with asyncio.timeout(20):  # the active one: acks three, then holds its prefetch
            while len(got["first"]) < 13:
                arrived.clear()
                await arrived.wait()
        assert [n for n, _ in got["first"]] == list(range(1, 14))
        assert got["second"] == []  # fed nothing while the first is there

        await first.close()  # gone, with 10 unacknowledged (as a killed process's would be)
        async with asyncio.timeout(20):
            while len(got["second"]) < 27:
                arrived.clear()
                await arrived.wait()
        print(f"\nbooks: published 30, acked by the first 3 (10 held), taken over by the second "
              f"{len(got['second'])}: {[n for n, _ in got['second']]}, redelivered "
              f"{[n for n, r in got['second'] if r]}")
        assert [n for n, _ in got["second"]] == list(range(4, 31))  # in order, none lost
        assert [n for n, r in got["second"] if r] == list(range(4, 14))
    finally:
        for connection in (first, second, publisher):
            if not connection.is_closed:
                await connection.close()
