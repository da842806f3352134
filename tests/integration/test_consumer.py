"""A consumer on the real broker: whatever order handlers finish in, and with some failing
once (nacked, requeued), every message is acked exactly when its handler succeeded — nothing
is left unacked (it would come back when the channel closes) and nothing acked unprocessed."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from shared import topology
from shared.broker import Consumer, Delivery, Publisher, connect, declare
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

N = 400


async def test_every_message_is_acked_once_its_handler_succeeded(amqp_url: str) -> None:
    name = f"dihya.test.acks.{uuid.uuid4().hex[:8]}"
    connection = await connect(amqp_url, service="test")
    try:
        channel = await connection.channel()
        await declare(channel)
        queue = await channel.declare_queue(name, durable=True,
                                            arguments=dict(topology.WORK_QUEUES[0].arguments))
        publisher = await Publisher.open(connection)
        await asyncio.gather(*(publisher.publish("", name, str(n).encode()) for n in range(N)))

        rng = random.Random(7)
        fail_once = set(rng.sample(range(N), 40))
        handled: dict[int, int] = {}
        succeeded: set[int] = set()

        async def handler(message: Delivery) -> None:
            n = int(message.body)
            handled[n] = handled.get(n, 0) + 1
            for _ in range(rng.randrange(6)):  # finish out of order
                await asyncio.sleep(0)
            if rng.random() < 0.02:
                await asyncio.sleep(0.1)  # now and then a slow one, as a slow receiver
            if n in fail_once and handled[n] == 1:
                raise RuntimeError("fails the first time")
            succeeded.add(n)

        consumer = Consumer(connection, name, handler, prefetch=200)
        await consumer.start()
        await wait_for(lambda: len(succeeded) == N, timeout=60)
        await consumer.stop(grace=5)  # closes its channel: anything unacked goes back

        wrong = {n: handled[n] for n in range(N) if handled[n] != (2 if n in fail_once else 1)}
        assert not wrong, (wrong, len(fail_once & set(wrong)))
        check = await channel.declare_queue(name, passive=True)
        assert check.declaration_result.message_count == 0  # every one acked
        await queue.delete(if_unused=False, if_empty=False)
        await publisher.close()
    finally:
        await connection.close()
