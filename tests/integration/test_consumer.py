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
from tests.conftest import drop_connections, ready_messages, wait_for
from tests.integration.conftest import is_fast, quick

pytestmark = pytest.mark.integration

N = 400


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_every_message_is_acked_once_its_handler_succeeded(amqp_url: str,
                                                                 fast_path: bool) -> None:
    name = f"dihya.test.acks.{uuid.uuid4().hex[:8]}"
    connection = await connect(amqp_url, service="test", fast_path=fast_path)
    assert is_fast(connection) == fast_path
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
        assert await ready_messages(channel, name) == 0  # every one acked
        await queue.delete(if_unused=False, if_empty=False)
        await publisher.close()
    finally:
        await connection.close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_a_consumer_hands_over_the_properties_and_is_restored_after_a_drop(
        vhost_url: tuple[str, str], fast_path: bool) -> None:
    """The consumer's messages reach handlers without aio-pika's message class (``Delivery``):
    what they read must be the message's own, and the robust connection must restore the
    consumer after the broker drops it — the message held across the drop comes back (its ack
    on the old channel is void), and new messages are taken again. On both paths: the fast
    one's direct consume and the plain one's aio-pika ``Queue.consume``."""
    url, vhost = vhost_url
    connection = await connect(quick(url), service="test-consumer-restore", fast_path=fast_path)
    assert is_fast(connection) == fast_path
    try:
        channel = await connection.channel()
        name = "dihya.test.restore"
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        publisher = await Publisher.open(connection)
        got: asyncio.Queue[Delivery] = asyncio.Queue()
        release = asyncio.Event()

        async def handler(message: Delivery) -> None:
            await got.put(message)
            if message.body == b"held":
                await release.wait()  # still in the handler when the connection drops

        consumer = Consumer(connection, name, handler, prefetch=10)
        await consumer.start()
        await publisher.publish("", name, b"held", headers={"x-dihya-event-id": "evt_1"},
                                type="test.v1")
        first = await asyncio.wait_for(got.get(), 10)
        assert (first.body, first.headers, first.type, first.redelivered) == (
            b"held", {"x-dihya-event-id": "evt_1"}, "test.v1", False)
        assert first.message_id  # the publisher gives every message a fresh one

        await drop_connections(vhost)
        release.set()
        again = await asyncio.wait_for(got.get(), 30)
        assert (again.body, again.redelivered, again.message_id) == (
            b"held", True, first.message_id)

        await publisher.publish("", name, b"after")
        after = await asyncio.wait_for(got.get(), 30)
        assert (after.body, after.headers, after.redelivered) == (b"after", {}, False)
        await consumer.stop(grace=5)

        assert await ready_messages(channel, name) == 0  # both acked on the new channel
        assert got.empty()
        await publisher.close()
    finally:
        await connection.close()
