"""The platform side of a fault scenario: events over HTTP and AMQP, published as a careful
client would, and the receiver's record of what arrived.

HTTP: half the events carry an ``Idempotency-Key``; every 5xx or transport failure is retried,
with the same key, or — without a key — with the id the 503 names (``error.event_id``) as the
body's ``id``. The ingest replicas are used in turn. AMQP: events go straight to the events
exchange with publisher confirms and a fixed ``message_id`` (the event id ingest gives them),
in pipelined batches; a batch whose confirms did not all arrive is published again, on a
connection to the next node of the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
import aiohttp
import orjson

from demo.receiver import Delivery, Receiver
from shared import topology
from tests.cluster.books import Arrival

HTTP_RATE = 30.0
AMQP_RATE = 30.0
"""Events per second each way: a steady stream that spans the fault, not one burst."""


@dataclass
class Load:
    """What one scenario's publishers were told: logical event → accepted ids."""

    scenario: str
    routing_key: str
    accepted: dict[str, set[str]] = field(default_factory=dict)
    http_5xx: int = 0
    transport_errors: int = 0
    unanswered_keyless: set[str] = field(default_factory=set)
    """Keyless HTTP events whose request got no answer (a transport error: the replica killed
    mid-request) and was sent again: the API cannot tell the retry from a new event, so a
    second id for one of these is the client's duplicate (docs: send an Idempotency-Key)."""

    def accept(self, logical: str, event_id: str) -> None:
        self.accepted.setdefault(logical, set()).add(event_id)


async def http_publish(load: Load, ingest_urls: Sequence[str], token: str, count: int,
                       workers: int = 6) -> None:
    """``count`` events over HTTP, half of them with an Idempotency-Key."""
    names = iter(range(count))
    replicas = itertools.cycle(ingest_urls)
    interval = workers / HTTP_RATE
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(n: int) -> None:
            logical = f"{load.scenario}-h{n}"
            body: dict[str, object] = {"event": load.routing_key, "data": {"n": logical}}
            headers = {"Authorization": f"Bearer {token}"}
            if n % 2 == 0:
                headers["Idempotency-Key"] = logical
            while True:
                try:
                    async with http.post(f"{next(replicas)}/v1/events", json=body,
                                         headers=headers) as resp:
                        reply = await resp.json(content_type=None)
                        if resp.status == 202:
                            load.accept(logical, reply["id"])
                            return
                        assert resp.status >= 500, (resp.status, reply)
                        load.http_5xx += 1
                        given = (reply or {}).get("error", {}).get("event_id")
                        if given and "Idempotency-Key" not in headers:
                            body["id"] = given  # what the 503 tells a keyless client to do
                except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                    load.transport_errors += 1
                    if "Idempotency-Key" not in headers and "id" not in body:
                        load.unanswered_keyless.add(logical)
                await asyncio.sleep(0.5)

        async def worker() -> None:
            for n in names:
                started = asyncio.get_running_loop().time()
                await one(n)
                spent = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(interval - spent, 0))

        await asyncio.gather(*(worker() for _ in range(workers)))


async def amqp_publish(load: Load, node_urls: Sequence[str], count: int,
                       batch: int = 15) -> None:
    """``count`` events straight to the events exchange, confirmed, republished on failure."""
    pending = [f"{load.scenario}-a{n}" for n in range(count)]
    nodes = itertools.cycle(node_urls)
    while pending:
        try:
            connection = await aio_pika.connect(next(nodes) + "?heartbeat=5", timeout=5)
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError):
            load.transport_errors += 1
            await asyncio.sleep(0.5)
            continue
        try:
            async with connection:
                channel = await connection.channel(publisher_confirms=True,
                                                   on_return_raises=True)
                exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE, ensure=False)
                while pending:
                    chunk = pending[:batch]
                    await asyncio.gather(*(
                        exchange.publish(aio_pika.Message(
                            orjson.dumps({"event": load.routing_key, "data": {"n": name}}),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=name,
                            content_type="application/json"),
                            load.routing_key, mandatory=True, timeout=10)
                        for name in chunk))
                    for name in chunk:  # ingest takes a body-less event's id from message_id
                        load.accept(name, name)
                    del pending[:len(chunk)]
                    await asyncio.sleep(batch / AMQP_RATE)
        except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError,
                ConnectionError, OSError, TimeoutError, RuntimeError):
            load.transport_errors += 1
            with contextlib.suppress(Exception):
                await connection.close()
            await asyncio.sleep(0.5)


class Arrivals:
    """The receiver's deliveries for one scenario, with the time each arrived."""

    def __init__(self, receiver: Receiver, scenario: str) -> None:
        self.scenario = scenario
        self.items: list[Arrival] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        previous = receiver.on_delivery

        def record(delivery: Delivery) -> None:
            if previous is not None:
                previous(delivery)
            if delivery.path != scenario:
                return
            payload = delivery.json
            self.items.append(Arrival(self._loop.time(), delivery.headers.get("webhook-id", ""),
                                      str(payload.get("id")),
                                      str(payload.get("data", {}).get("n"))))
            self._changed.set()

        receiver.on_delivery = record

    def logical(self) -> set[str]:
        return {a.logical for a in self.items}

    async def wait_for(self, wanted: set[str], timeout: float) -> bool:
        """Wait until every logical event of ``wanted`` arrived (False at the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not wanted <= self.logical():
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def wait_count(self, count: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.logical()) < count:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), max(deadline - loop.time(), 0.01))
