"""A message that crashes its consumer again and again is parked, and never blocks the queue.

This exercises the broker side of the guarantee with the exact queue arguments every work queue
gets (``shared.topology``): the consumer here fails on the poison message every time, the way a
bug would, and ``x-delivery-limit`` moves it to the parking queue with at-least-once
dead-lettering while the good message behind it is processed.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from shared import topology
from shared.broker import Consumer, Delivery, Publisher, connect, declare

pytestmark = pytest.mark.integration

QUEUE = "dihya.test.poison"


async def test_poison_is_parked_after_the_delivery_limit_and_the_rest_flows(
    amqp_url: str,
) -> None:
    connection = await connect(amqp_url, service="test")
    try:
        channel = await connection.channel()
        await declare(channel)
        args = {**topology.WORK_QUEUES[0].arguments, "x-dead-letter-routing-key": QUEUE}
        queue = await channel.declare_queue(QUEUE, durable=True, arguments=args)
        dead = await channel.declare_queue(topology.dead_queue(QUEUE), durable=True,
                                           arguments={"x-queue-type": "quorum"})
        await dead.bind(topology.DEAD_EXCHANGE, QUEUE)
        publisher = await Publisher.open(connection)

        seen: dict[bytes, int] = {}
        counts: list[object] = []  # the x-delivery-count the consumer's backoff was given
        good_done = asyncio.Event()

        async def handler(message: Delivery) -> None:
            seen[message.body] = seen.get(message.body, 0) + 1
            if message.body == b"poison":
                raise RuntimeError("this message crashes the consumer every time")
            good_done.set()

        await publisher.publish("", QUEUE, b"poison")
        await publisher.publish("", QUEUE, b"good")
        def backoff(deliveries: int) -> float:
            counts.append(deliveries)
            return 0.01

        consumer = Consumer(connection, QUEUE, handler, prefetch=1, backoff=backoff)
        await consumer.start()
        await asyncio.wait_for(good_done.wait(), 30)

        arrived: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future())

        async def on_parked(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if not arrived.done():
                arrived.set_result(message)

        await dead.consume(on_parked, no_ack=True)
        parked = await asyncio.wait_for(arrived, 30)
        await consumer.stop(grace=5)

        assert parked.body == b"poison"
        deaths = parked.headers["x-death"]
        assert deaths[0]["reason"] == "delivery_limit"
        assert deaths[0]["queue"] == QUEUE
        assert seen[b"poison"] == topology.DELIVERY_LIMIT + 1  # bounded, then parked
        assert seen[b"good"] == 1
        # each failure was held before its requeue, knowing how often it had been delivered
        assert counts[:3] == [0, 1, 2] and len(counts) == topology.DELIVERY_LIMIT + 1
        await queue.delete(if_unused=False, if_empty=False)
        await dead.delete(if_unused=False, if_empty=False)
        await publisher.close()
    finally:
        await connection.close()
