"""The shared consumer on the real broker: a dependency's failure holds the message, and the
consumer takes no more than its prefetch (no delivery counted); a message's own failure is
requeued (counted); and an "infrastructure" error that persists while the probe answers ends
up counted too."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from shared import topology
from shared.broker import Consumer, Delivery, Publisher, connect, declare
from shared.broker import consumer as consumer_module
from tests.conftest import ready_messages, wait_for
from tests.integration.conftest import is_fast

pytestmark = pytest.mark.integration


def _paused(queue: str) -> float | None:
    return REGISTRY.get_sample_value("dihya_consumer_paused", {"queue": queue})


def _count(message: Delivery) -> int:
    value = message.headers.get("x-delivery-count", 0)
    return value if isinstance(value, int) else 0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_an_outage_holds_and_pauses_and_counts_nothing(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, fast_path: bool) -> None:
    monkeypatch.setattr(consumer_module, "OUTAGE_FIRST", 0.05)  # probe often: a quick test
    monkeypatch.setattr(consumer_module, "OUTAGE_MAX", 0.2)
    name = f"dihya.test.outage.{uuid.uuid4().hex[:8]}"
    connection = await connect(amqp_url, service="test-outage", fast_path=fast_path)
    assert is_fast(connection) == fast_path
    try:
        channel = await connection.channel()
        await declare(channel)
        queue = await channel.declare_queue(name, durable=True,
                                            arguments=dict(topology.WORK_QUEUES[0].arguments))
        publisher = await Publisher.open(connection)
        database_up = asyncio.Event()
        calls: list[tuple[str, int]] = []  # (body, x-delivery-count) of every handler call
        done: set[str] = set()

        async def handler(message: Delivery) -> None:
            calls.append((message.body.decode(), _count(message)))
            if not database_up.is_set():
                raise ConnectionRefusedError(111, "the database is down")
            if message.body == b"poison" and _count(message) < 2:
                raise ValueError("bad content")  # its own failure: requeued, counted
            done.add(message.body.decode())

        async def probe() -> bool:
            return database_up.is_set()

        consumer = Consumer(connection, name, handler, prefetch=2, probe=probe)
        await consumer.start()
        for n in range(5):
            await publisher.publish("", name, f"m{n}".encode())
        await wait_for(lambda: not consumer.ready and len(calls) == 2)  # the prefetch, held
        await asyncio.sleep(1.0)  # the outage goes on: nothing more is taken or redelivered
        assert not consumer.ready and len(calls) == 2
        assert await ready_messages(channel, name) == 3  # the rest wait in the queue
        assert _paused(name) == 1

        database_up.set()
        await wait_for(lambda: consumer.ready and len(done) == 5, timeout=20)
        # every message handled with x-delivery-count 0: held and retried in place, never
        # requeued (the first messages' retry after the outage included)
        assert {count for _, count in calls} == {0}, calls
        assert _paused(name) == 0

        await publisher.publish("", name, b"poison")
        await wait_for(lambda: "poison" in done, timeout=20)
        assert [count for body, count in calls if body == "poison"] == [0, 1, 2]
        assert consumer.ready  # a message's own failure pauses nothing

        await consumer.stop(grace=5)
        assert await ready_messages(channel, name) == 0
        await queue.delete(if_unused=False, if_empty=False)
        await publisher.close()
    finally:
        await connection.close()


async def test_an_infrastructure_error_that_persists_while_the_probe_answers_counts(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misread error (the probe says the dependency is fine, the message keeps failing
    "for want of it") is released SUSPECT_AFTER times, then requeued like any failure."""
    monkeypatch.setattr(consumer_module, "OUTAGE_FIRST", 0.01)
    monkeypatch.setattr(consumer_module, "OUTAGE_MAX", 0.01)
    monkeypatch.setattr(consumer_module, "SUSPECT_AFTER", 3)
    name = f"dihya.test.suspect.{uuid.uuid4().hex[:8]}"
    connection = await connect(amqp_url, service="test-suspect")
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True,
                                            arguments=dict(topology.WORK_QUEUES[0].arguments))
        publisher = await Publisher.open(connection)
        counts: list[int] = []

        async def handler(message: Delivery) -> None:
            counts.append(_count(message))
            if len(counts) <= 4:
                raise TimeoutError("looks like an outage, is not one")

        async def probe() -> bool:
            return True

        consumer = Consumer(connection, name, handler, prefetch=1, probe=probe,
                            backoff=lambda _: 0.01)
        await consumer.start()
        await publisher.publish("", name, b"m")
        await wait_for(lambda: len(counts) == 5, timeout=20)
        # the first delivery: 1 failure + 3 releases, then requeued; the redelivery succeeds
        assert counts == [0, 0, 0, 0, 1]
        await consumer.stop(grace=5)
        await queue.delete(if_unused=False, if_empty=False)
        await publisher.close()
    finally:
        await connection.close()
