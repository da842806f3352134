# ruff: noqa: F811 - the fixtures imported below are requested by name as parameters
"""An endpoint's own retry schedule in the deliverer: its tiers are declared on first use.

The deliverer runs in-process on the real RabbitMQ with the deployment schedule of
``test_deliverer_service.py`` (200 ms, 400 ms); the jobs here carry schedules of their own
(``DeliveryJob.retry_schedule_ms``) whose tiers no one declared. Fixtures and helpers are
imported from ``test_deliverer_service.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from prometheus_client import REGISTRY

from services.deliverer.consumer import WaitTiers
from shared import topology
from shared.broker import Publisher
from shared.contracts import DeliveryJob
from tests.integration.test_deliverer_service import (  # noqa: F401 - fixtures
    Observer,
    Receiver,
    amqp,
    audit,
    channel,
    dead,
    deliverer,
    fact,
    fact_of,
    hand_over,
    job_of,
    make_job,
    publisher,
    receiver,
    signed_for,
    to_signer,
)

pytestmark = pytest.mark.integration


async def queue_exists(connection: AbstractRobustConnection, name: str) -> bool:
    """Passive declare on a throw-away channel (a missing queue closes the channel)."""
    ch = await connection.channel()
    try:
        await ch.declare_queue(name, passive=True)
        return True
    except aio_pika.exceptions.ChannelClosed:
        return False
    finally:
        with contextlib.suppress(Exception):
            await ch.close()


def declared() -> float:
    return REGISTRY.get_sample_value("dihya_deliverer_tiers_declared_total") or 0.0


def own_job(url: str, schedule: tuple[int, ...]) -> DeliveryJob:
    return make_job(url).model_copy(update={"retry_schedule_ms": schedule})


async def test_a_500_retries_through_a_tier_of_the_endpoints_own_declared_on_first_use(
        amqp_url: str, amqp: AbstractRobustConnection, receiver: Receiver,
        publisher: Publisher, audit: Observer, to_signer: Observer, dead: Observer) -> None:
    tier = topology.retry_queue(250)
    assert tier == "dihya.retry.250ms"
    assert not await queue_exists(amqp, tier)  # neither the deployment's nor declared yet
    receiver.scripts["own"] = [web.Response(status=500)]
    async with deliverer(amqp_url):
        job = own_job(receiver.url("own"), (250,))
        await hand_over(publisher, signed_for(job))
        first = await fact(audit, fact_of("delivery.attempted", job.delivery_id, 1))
        assert (first.outcome, first.status_code, first.details["next"]) == (
            "failed", 500, "retry")
        assert 200 <= int(first.details["retry_in_ms"]) <= 300  # type: ignore[arg-type]

        message = await to_signer.next(job_of(job.delivery_id, 2))
        assert message.exchange == topology.WORK_EXCHANGE
        assert message.routing_key == topology.SIGN
        deaths: Any = message.headers.get("x-death") or []
        assert [d["queue"] for d in deaths] == [tier]  # it waited in the new tier
        assert await queue_exists(amqp, tier)
        retry = DeliveryJob.model_validate_json(message.body)
        assert retry.retry_schedule_ms == (250,)  # the schedule rides along every attempt

        # the signer's part: attempt 2 fails too, and one delay means two attempts at most
        await hand_over(publisher, signed_for(retry))
        parked = await dead.next(job_of(job.delivery_id))
        assert parked.headers[topology.REASON_HEADER] == "exhausted"
        kept = DeliveryJob.model_validate_json(parked.body)
        assert [r.attempt for r in kept.history] == [1, 2]
    assert len(receiver.hits_on("own")) == 2


async def test_an_empty_schedule_dead_letters_the_first_failure_as_exhausted(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        dead: Observer) -> None:
    receiver.scripts["once"] = [web.Response(status=500)]
    async with deliverer(amqp_url):  # whose own schedule (200ms,400ms) would retry it
        job = own_job(receiver.url("once"), ())
        await hand_over(publisher, signed_for(job))
        parked = await dead.next(job_of(job.delivery_id))
        assert parked.headers[topology.REASON_HEADER] == "exhausted"
        kept = DeliveryJob.model_validate_json(parked.body)
        assert kept.attempt == 2 and [r.status_code for r in kept.history] == [500]
        lettered = await fact(audit, fact_of("delivery.dead_lettered", job.delivery_id))
        assert (lettered.reason, lettered.attempt) == ("exhausted", 1)
        attempted = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
        assert attempted.details["next"] == "dead_letter"
    assert len(receiver.hits_on("once")) == 1


async def test_many_jobs_racing_for_a_new_tier_declare_it_once(
        amqp_url: str, amqp: AbstractRobustConnection, receiver: Receiver,
        publisher: Publisher, to_signer: Observer) -> None:
    receiver.scripts["race"] = [web.Response(status=503)]
    before = declared()
    async with deliverer(amqp_url):
        jobs = [own_job(receiver.url("race"), (350, 700)) for _ in range(20)]
        await asyncio.gather(*(hand_over(publisher, signed_for(j)) for j in jobs))
        for job in jobs:
            message = await to_signer.next(job_of(job.delivery_id, 2))
            deaths: Any = message.headers.get("x-death") or []
            assert [d["queue"] for d in deaths] == [topology.retry_queue(350)]
    assert declared() - before == 1
    assert not await queue_exists(amqp, topology.retry_queue(700))  # not needed yet


async def test_concurrent_ensures_share_one_declaration_and_a_failure_is_retried(
        amqp: AbstractRobustConnection) -> None:
    tiers = WaitTiers(amqp, (200, 400))
    assert 200 in tiers and 450 not in tiers
    before = declared()
    await asyncio.gather(*(tiers.ensure(450) for _ in range(25)))
    assert 450 in tiers and declared() - before == 1
    await tiers.ensure(450)  # known: nothing declared again
    await tiers.ensure(200)  # declared at start: taken on trust
    assert declared() - before == 1

    # A queue of the tier's name with other arguments makes the broker refuse the declare:
    # every waiter sees the error, nothing is cached, and a later call tries again.
    clash = topology.retry_queue(555)
    ch = await amqp.channel()
    await ch.declare_queue(clash, durable=True)
    results = await asyncio.gather(*(tiers.ensure(555) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, aio_pika.exceptions.ChannelClosed) for r in results), results
    assert 555 not in tiers
    await ch.queue_delete(clash)
    await ch.close()
    await tiers.ensure(555)
    assert 555 in tiers and await queue_exists(amqp, clash)
