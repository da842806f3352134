# ruff: noqa: F811 - the fixtures imported below are requested by name as parameters
"""The catch-up sweeper on the real RabbitMQ (a virtual host of its own): a request for one
endpoint sends its retries waiting in a tier to the signer, in order, and moves every other
retry, in order and with the wait it had left, into the tier's side queue; the next sweep
moves that side queue, then the tier, into the other side queue. The sweeper runs in-process
behind a real :class:`~shared.broker.Consumer` of ``dihya.deliverer.catch-up``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY

from services.deliverer.catchup import REQUESTS_PREFETCH, Sweeper
from services.deliverer.consumer import WaitTiers
from services.deliverer.decisions.catchup import retry_headers
from services.deliverer.settings import Settings
from shared import topology
from shared.broker import Consumer, Publisher, connect, declare_topology
from shared.contracts import CatchUpRequest, DeliveryJob, Event, encode, utcnow
from tests.conftest import ready_messages, wait_for
from tests.integration.conftest import vhost_url  # noqa: F401 - fixture
from tests.observe import Matcher, Observer, Seen

pytestmark = pytest.mark.integration

TIER = 60_000


def swept(step: str) -> float:
    return REGISTRY.get_sample_value("dihya_deliverer_catch_up_total", {"step": step}) or 0.0


@dataclass
class Rig:
    connection: AbstractRobustConnection
    publisher: Publisher
    channel: AbstractChannel
    to_signer: Observer

    async def retry(self, n: int, endpoint: str, *, headers: bool = True,
                    waited_ms: int = 0) -> DeliveryJob:
        """A retry of ``endpoint`` as the deliverer parks it in the tier (``waited_ms`` ago)."""
        job = DeliveryJob(delivery_id=f"dlv_{n:04d}", endpoint_id=endpoint,
                          url="https://r.example/h", attempt=2,
                          event=Event(id=f"evt_{n:04d}", event="a.b", timestamp=utcnow(),
                                      data={}))
        now_ms = int(time.time() * 1000) - waited_ms
        await self.publisher.publish(
            topology.RETRY_EXCHANGE, topology.retry_queue(TIER), encode(job),
            headers=retry_headers(endpoint, now_ms, TIER) if headers else None,
            type=job.type, expiration=TIER / 1000)
        return job

    async def ask(self, endpoint: str, at_offset_s: float = 0.0) -> None:
        request = CatchUpRequest(endpoint_id=endpoint,
                                 requested_at=utcnow() + timedelta(seconds=at_offset_s))
        await self.publisher.send(topology.WORK_EXCHANGE, topology.CATCH_UP_KEY, request)

    async def drain(self, queue: str) -> list[AbstractIncomingMessage]:
        """Every message of ``queue``, in order, taken off it."""
        source = await self.channel.declare_queue(queue, passive=True)
        out = []
        while (message := await source.get(no_ack=True, fail=False)) is not None:
            out.append(message)
        return out


@pytest.fixture
async def rig(vhost_url: tuple[str, str]) -> AsyncIterator[Rig]:
    url, _ = vhost_url
    settings = Settings(retry_schedule="60s", catch_up=True, catch_up_min_tier="30s")
    connection = await connect(url, service="test-catch-up")
    # what the deliverer declares at start: its retry and defer tiers (the sweep paces by both)
    await declare_topology(connection, retry_delays_ms=(TIER,),
                           defer_delays_ms=settings.defer_delays_ms)
    publisher = await Publisher.open(connection)
    sweeper = Sweeper(settings, connection, publisher, WaitTiers(connection, (TIER,)))
    consumer = Consumer(connection, topology.CATCH_UP, sweeper.on_request,
                        prefetch=REQUESTS_PREFETCH)
    await consumer.start()
    channel = await connection.channel()
    to_signer = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.SIGN)
    try:
        yield Rig(connection, publisher, channel, to_signer)
    finally:
        await sweeper.close()
        await consumer.stop(1.0)
        await channel.close()
        await publisher.close()
        await connection.close()


def job_of(delivery_id: str) -> Matcher:
    def match(seen: Seen) -> bool:
        return bool(orjson.loads(seen.body)["delivery_id"] == delivery_id)
    return match


def ids(messages: list[AbstractIncomingMessage]) -> list[str]:
    return [str(orjson.loads(m.body)["delivery_id"]) for m in messages]


async def test_a_sweep_sends_the_endpoints_retries_and_moves_the_others_in_order(
        rig: Rig) -> None:
    jobs = [await rig.retry(n, "ep_e" if n % 2 else "ep_x", waited_ms=1000 * (12 - n))
            for n in range(12)]
    old = await rig.retry(12, "ep_x", headers=False)  # parked before the headers existed
    sweeps, early, moved = swept("sweeps"), swept("sent_early"), swept("moved")
    await rig.ask("ep_e")

    sent = [await rig.to_signer.next(job_of(j.delivery_id)) for j in jobs
            if j.endpoint_id == "ep_e"]
    assert [s.type for s in sent] == [DeliveryJob.model_fields["type"].default] * 6
    assert all(s.headers[topology.ENDPOINT_HEADER] == "ep_e" for s in sent)
    assert all("x-death" not in s.headers for s in sent)
    await wait_for(lambda: swept("sweeps") == sweeps + 1, timeout=20)
    assert (swept("sent_early") - early, swept("moved") - moved) == (6, 7)

    assert await ready_messages(rig.channel, topology.retry_queue(TIER)) == 0
    side = await rig.drain(topology.side_queue(TIER, "b"))
    others = [j for j in jobs if j.endpoint_id == "ep_x"]
    assert ids(side) == [j.delivery_id for j in others] + [old.delivery_id]  # queue order
    now_ms = time.time() * 1000
    for message, job in zip(side, others, strict=False):
        due = int(message.headers[topology.DUE_HEADER])  # type: ignore[arg-type]
        n = int(job.delivery_id[4:])
        assert abs(due - (now_ms - 1000 * (12 - n) + TIER)) < 5_000  # its due time, kept
        remaining = float(message.expiration or 0) * 1000
        assert 0 < remaining <= TIER and abs(remaining - (due - now_ms)) < 5_000
    # the old one waits its whole expiration again (documented lateness), its due time now set
    assert float(side[-1].expiration or 0) == TIER / 1000
    assert topology.DUE_HEADER in side[-1].headers
    assert not await rig.drain(topology.side_queue(TIER, "a"))


async def test_the_next_sweep_moves_the_side_queue_then_the_tier_into_the_other_side(
        rig: Rig) -> None:
    first = [await rig.retry(n, "ep_x") for n in range(4)]
    sweeps = swept("sweeps")
    await rig.ask("ep_nobody")
    await wait_for(lambda: swept("sweeps") == sweeps + 1, timeout=20)
    assert await ready_messages(rig.channel, topology.side_queue(TIER, "b")) == 4

    later = [await rig.retry(n, "ep_x") for n in range(4, 7)]
    await rig.ask("ep_other")
    await wait_for(lambda: swept("sweeps") == sweeps + 2, timeout=20)
    assert not await rig.drain(topology.side_queue(TIER, "b"))
    assert ids(await rig.drain(topology.side_queue(TIER, "a"))) == [
        j.delivery_id for j in first + later]


async def test_a_request_older_than_its_endpoints_last_sweep_is_dropped(rig: Rig) -> None:
    await rig.retry(0, "ep_e")
    sweeps, collapsed = swept("sweeps"), swept("collapsed")
    await rig.ask("ep_e")
    await rig.to_signer.next(job_of("dlv_0000"))
    await wait_for(lambda: swept("sweeps") == sweeps + 1, timeout=20)
    await rig.retry(1, "ep_e")
    await rig.ask("ep_e", at_offset_s=-60)  # asked before that sweep began
    await wait_for(lambda: swept("collapsed") == collapsed + 1, timeout=20)
    assert swept("sweeps") == sweeps + 1
    assert await ready_messages(rig.channel, topology.retry_queue(TIER)) == 1  # left waiting
    assert await ready_messages(rig.channel, topology.CATCH_UP) == 0
