"""Endpoint health from ``delivery.attempted`` facts; held deliveries; re-enable and recover.

Facts are published to the audit exchange as the deliverer publishes them. Ingest's judgement of
each is counted (``dihya_ingest_health_facts_total``), so a test waits for "this fact was judged"
instead of sleeping, and can then assert that nothing (more) was announced.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY

from services.ingest.decisions import delivery_id
from services.ingest.health import HEALTH_QUEUE
from shared import topology
from shared.broker import Publisher, declare
from shared.contracts import AuditFact, utcnow
from tests.conftest import wait_for
from tests.integration.test_ingest_api import Client, Observer, running_ingest

pytestmark = pytest.mark.integration

WATCH = ((topology.WORK_EXCHANGE, topology.SIGN), (topology.AUDIT_EXCHANGE, "endpoint.#"),
         (topology.AUDIT_EXCHANGE, "delivery.held"), (topology.AUDIT_EXCHANGE, "event.accepted"),
         (topology.AUDIT_EXCHANGE, "delivery.retry_requested"),
         (topology.EVENTS_EXCHANGE, "endpoint.disabled"))


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    """The broker, with ingest's health queue declared and emptied: facts other tests of this
    session left there would otherwise be judged first and satisfy :func:`attempted` early."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection.channel() as channel:
        await declare(channel)
        queue = await channel.get_queue(HEALTH_QUEUE)
        await queue.purge()
    yield connection
    await connection.close()


@pytest.fixture
async def publisher(broker: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    pub = await Publisher.open(broker)
    yield pub
    await pub.close()


def judged() -> float:
    """How many delivery.attempted facts ingest has judged (process-wide metric)."""
    return sum(REGISTRY.get_sample_value("dihya_ingest_health_facts_total", {"result": r})
               or 0.0 for r in ("ignored", "unchanged", "updated", "disabled"))


async def attempted(publisher: Publisher, endpoint_id: str, *, status: int | None,
                    at: datetime | None = None) -> AuditFact:
    """Publish a delivery.attempted fact as the deliverer does and wait until ingest judged it."""
    before = judged()
    fact = AuditFact(id=f"fct_{uuid.uuid4().hex}", kind="delivery.attempted",
                     occurred_at=at or utcnow(), service="deliverer", endpoint_id=endpoint_id,
                     delivery_id=f"dlv_{uuid.uuid4().hex[:20]}", attempt=1,
                     outcome="delivered" if status is not None and status < 300 else "failed",
                     status_code=status, error=None if status else "timeout")
    await publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
    await wait_for(lambda: judged() > before, timeout=15)
    return fact


async def endpoint(ingest: Client, endpoint_id: str) -> dict[str, Any]:
    reply = await ingest.call("GET", f"/v1/endpoints/{endpoint_id}")
    assert reply.status == 200, reply.text
    return dict(reply.body)


async def test_410_disables_the_endpoint_once_and_announces_it_to_subscribers(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    obs = await Observer.start(broker, WATCH)
    async with running_ingest(amqp_url, database_url) as ingest:
        target = await ingest.endpoint(["order.*"], url="https://gone.example.com/h")
        ops = await ingest.endpoint(["endpoint.disabled"], url="https://ops.example.com/h")
        bystander = await ingest.endpoint(["order.*"], url="https://fine.example.com/h")

        trigger = await attempted(publisher, target["id"], status=410)
        state = await endpoint(ingest, target["id"])
        assert state["status"] == "disabled" and state["disabled_reason"] == "gone"
        assert state["disabled_at"] and state["failing_since"]
        assert (await endpoint(ingest, bystander["id"]))["status"] == "enabled"

        def announced(_: Any) -> bool:
            return any(j["endpoint_id"] == ops["id"] and j["event"]["event"] == "endpoint.disabled"
                       for j in (m.json for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)))

        await obs.wait(announced)
        [job] = [m.json for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
                 if m.json["endpoint_id"] == ops["id"]]
        data = job["event"]["data"]
        assert {k: v for k, v in data.items() if k != "details"} == {
            "endpoint_id": target["id"], "url": target["url"], "reason": "gone"}
        # completed from the event-type catalog, like every event, in the four languages
        assert data["details"]["en"] == f"Endpoint {target['id']} was disabled (gone)."
        assert set(data["details"]) == {"fr", "en", "ar", "tzm"}
        assert job["url"] == ops["url"]
        [event] = obs.on(topology.EVENTS_EXCHANGE, "endpoint.disabled")
        assert event.json["id"] == job["event"]["id"]
        [fact] = obs.facts("endpoint.disabled", endpoint_id=target["id"])
        assert fact["reason"] == "gone" and fact["service"] == "ingest"
        assert fact["details"]["trigger"] == trigger.id and fact["actor"] is None

        # only once per disable: more failures of the disabled endpoint announce nothing
        await attempted(publisher, target["id"], status=410)
        await attempted(publisher, target["id"], status=500)
        assert len(obs.facts("endpoint.disabled", endpoint_id=target["id"])) == 1
        assert len(obs.on(topology.EVENTS_EXCHANGE, "endpoint.disabled")) == 1
        # facts about unknown endpoints are judged and ignored
        await attempted(publisher, "ep_unknown", status=410)


async def test_failing_longer_than_disable_after_disables_and_a_success_resets(
    amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    obs = await Observer.start(broker, WATCH)
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/i.db",
                              disable_after=60) as ingest:
        flaky = await ingest.endpoint(["order.*"])
        dead = await ingest.endpoint(["order.*"])
        t0 = utcnow() - timedelta(minutes=10)

        await attempted(publisher, flaky["id"], status=500, at=t0)
        assert datetime.fromisoformat((await endpoint(ingest, flaky["id"]))["failing_since"]) \
            == t0
        await attempted(publisher, flaky["id"], status=None, at=t0 + timedelta(seconds=30))
        await attempted(publisher, flaky["id"], status=200, at=t0 + timedelta(seconds=40))
        state = await endpoint(ingest, flaky["id"])
        assert state["failing_since"] is None and state["status"] == "enabled"
        await attempted(publisher, flaky["id"], status=503, at=t0 + timedelta(seconds=90))
        state = await endpoint(ingest, flaky["id"])  # a new run began at 90 s: not 60 s yet
        assert state["status"] == "enabled"

        await attempted(publisher, dead["id"], status=500, at=t0)
        await attempted(publisher, dead["id"], status=429, at=t0 + timedelta(seconds=59))
        assert (await endpoint(ingest, dead["id"]))["status"] == "enabled"
        await attempted(publisher, dead["id"], status=None, at=t0 + timedelta(seconds=61))
        state = await endpoint(ingest, dead["id"])
        assert state["status"] == "disabled" and state["disabled_reason"] == "failing"
        assert datetime.fromisoformat(state["failing_since"]) == t0
        await obs.wait(lambda _: bool(obs.facts("endpoint.disabled", endpoint_id=dead["id"])))
        assert obs.facts("endpoint.disabled", endpoint_id=flaky["id"]) == []
        await obs.wait(lambda _: any(m.json["data"]["endpoint_id"] == dead["id"]
                                     for m in obs.on(topology.EVENTS_EXCHANGE)))


async def test_events_for_a_disabled_endpoint_are_held_offered_and_recovered(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    obs = await Observer.start(broker, WATCH)
    async with running_ingest(amqp_url, database_url) as ingest:
        ep = await ingest.endpoint(["invoice.*"])
        live = await ingest.endpoint(["invoice.*"], url="https://live.example.com/")
        await attempted(publisher, ep["id"], status=410)
        assert (await endpoint(ingest, ep["id"]))["status"] == "disabled"

        ids = []
        for n in range(3):
            reply = await ingest.call("POST", "/v1/events",
                                      json={"event": "invoice.sent", "data": {"n": n}})
            assert reply.status == 202
            ids.append(reply.body["id"])
        # (in whichever order they leave, audit stores a held fact after its event's
        # acceptance: tests/integration/test_audit_gdpr.py)
        await obs.wait(lambda _: all(obs.facts("delivery.held", event_id=i)
                                     and obs.facts("event.accepted", event_id=i) for i in ids))
        for event_id in ids:
            assert [j["endpoint_id"] for j in obs.jobs(event_id)] == [live["id"]]
            [held] = obs.facts("delivery.held", event_id=event_id)
            assert held["endpoint_id"] == ep["id"] and held["reason"] == "endpoint_disabled"
            assert held["delivery_id"] == delivery_id(event_id, ep["id"])
            assert held["details"] == {"disabled_reason": "gone"}
        page = await ingest.call("GET", f"/v1/endpoints/{ep['id']}/deliveries?status=held")
        assert {i["event_id"] for i in page.body["items"]} == set(ids)
        assert all(i["reason"] == "endpoint_disabled" and i["attempts"] == []
                   for i in page.body["items"])

        admin = await ingest.token("admin")
        enabled = await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}", token=admin["token"],
                                    json={"status": "enabled"})
        assert enabled.status == 200, enabled.text
        assert enabled.body["held_deliveries"] == 3 and enabled.body["status"] == "enabled"
        assert enabled.body["failing_since"] is None and enabled.body["disabled_reason"] is None
        await obs.wait(lambda _: bool(obs.facts("endpoint.enabled", endpoint_id=ep["id"])))
        [fact] = obs.facts("endpoint.enabled", endpoint_id=ep["id"])
        assert fact["actor"] == admin["id"] and fact["details"] == {"held_deliveries": 3}
        # a late failure fact from before the re-enable does not disable it again
        await attempted(publisher, ep["id"], status=410, at=utcnow() - timedelta(minutes=1))
        assert (await endpoint(ingest, ep["id"]))["status"] == "enabled"

        reply = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/recover",
                                  token=admin["token"], json={"since": utcnow().isoformat()})
        assert reply.status == 202, reply.text
        expected = {delivery_id(i, ep["id"]) for i in ids}
        assert reply.body["count"] == 3 and set(reply.body["delivery_ids"]) == expected
        await obs.wait(lambda _: len(obs.facts("delivery.retry_requested",
                                               endpoint_id=ep["id"])) == 3)
        for event_id in ids:
            [job] = [j for j in obs.jobs(event_id) if j["endpoint_id"] == ep["id"]]
            assert job["attempt"] == 1 and job["history"] == [] and job["url"] == ep["url"]
        facts = obs.facts("delivery.retry_requested", endpoint_id=ep["id"])
        assert {f["actor"] for f in facts} == {admin["id"]}
        assert {f["details"]["was"] for f in facts} == {"held"}
        left = await ingest.call("GET", f"/v1/endpoints/{ep['id']}/deliveries?status=held")
        assert left.body["items"] == []
        again = await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}",
                                  json={"description": "back"})
        assert again.body["held_deliveries"] == 0


async def test_ingest_declares_its_health_queue_and_its_parking_queue(
    amqp_url: str, tmp_path: Path
) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        await declare(channel)
        for name in (HEALTH_QUEUE, topology.dead_queue(HEALTH_QUEUE)):
            await channel.queue_delete(name)
        async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/i.db"):
            # passive declares raise (and close the channel) if the queues do not exist
            await channel.declare_queue(HEALTH_QUEUE, passive=True)
            await channel.declare_queue(topology.dead_queue(HEALTH_QUEUE), passive=True)
            # redeclaring with the documented arguments succeeds (a mismatch would fail)
            by_name = {q.name: q for q in topology.queues()}
            queue, dead = by_name[HEALTH_QUEUE], by_name[topology.dead_queue(HEALTH_QUEUE)]
            assert queue.arguments["x-queue-type"] == "quorum"
            assert queue.arguments["x-dead-letter-exchange"] == topology.DEAD_EXCHANGE
            assert queue.arguments["x-dead-letter-routing-key"] == HEALTH_QUEUE
            assert queue.arguments["x-delivery-limit"] == topology.DELIVERY_LIMIT
            assert queue.bindings == ((topology.AUDIT_EXCHANGE, "delivery.attempted"),)
            assert dead.bindings == ((topology.DEAD_EXCHANGE, HEALTH_QUEUE),)
            await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
            await channel.declare_queue(dead.name, durable=True, arguments=dead.arguments)
        await channel.close()
    finally:
        await connection.close()


async def test_n_consecutive_failures_announce_failing_once_and_a_success_recovered(
    amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    watch = ((topology.WORK_EXCHANGE, topology.SIGN),
             (topology.EVENTS_EXCHANGE, "endpoint.failing"),
             (topology.EVENTS_EXCHANGE, "endpoint.recovered"))
    obs = await Observer.start(broker, watch)
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/i.db",
                              failing_after=3) as ingest:
        target = await ingest.endpoint(["order.*"], url="https://flaky.example.com/h")
        ops = await ingest.endpoint(["endpoint.failing", "endpoint.recovered"],
                                    url="https://ops.example.com/h")
        t0 = utcnow() - timedelta(minutes=5)

        def events(kind: str) -> list[dict[str, Any]]:
            return [m.json for m in obs.on(topology.EVENTS_EXCHANGE, kind)
                    if m.json["data"]["endpoint_id"] == target["id"]]

        for i in range(2):
            await attempted(publisher, target["id"], status=500, at=t0 + timedelta(seconds=i))
        assert events("endpoint.failing") == []  # two is not yet three
        third = await attempted(publisher, target["id"], status=None,
                                at=t0 + timedelta(seconds=2))
        await obs.wait(lambda _: bool(events("endpoint.failing")))
        for i in range(3, 6):  # more failures of the same run announce nothing more
            await attempted(publisher, target["id"], status=503, at=t0 + timedelta(seconds=i))
        [failing] = events("endpoint.failing")
        assert failing["data"]["failures"] == 3 and failing["data"]["url"] == target["url"]
        assert failing["data"]["failing_since"] == t0.isoformat()
        # its id derives from the fact that crossed the threshold: a redelivery repeats it
        assert failing["id"] == "evt_" + hashlib.sha256(
            f"endpoint.failing:{third.id}".encode()).hexdigest()[:26]

        await attempted(publisher, target["id"], status=200, at=t0 + timedelta(seconds=10))
        await obs.wait(lambda _: bool(events("endpoint.recovered")))
        await attempted(publisher, target["id"], status=200, at=t0 + timedelta(seconds=90))
        assert len(events("endpoint.recovered")) == 1

        # the operator's endpoint gets both, completed in the four languages
        def jobs() -> list[dict[str, Any]]:
            return [m.json for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
                    if m.json["endpoint_id"] == ops["id"]]
        await obs.wait(lambda _: len(jobs()) == 2)
        kinds = sorted(j["event"]["event"] for j in jobs())
        assert kinds == ["endpoint.failing", "endpoint.recovered"]
        for job in jobs():
            assert set(job["event"]["data"]["details"]) == {"fr", "en", "ar", "tzm"}
        [fail_job] = [j for j in jobs() if j["event"]["event"] == "endpoint.failing"]
        assert fail_job["event"]["data"]["details"]["en"] == (
            f"Endpoint {target['id']} failed 3 times in a row.")

        # a run shorter than the threshold announces nothing, and no recovery either
        await attempted(publisher, target["id"], status=500, at=t0 + timedelta(seconds=100))
        await attempted(publisher, target["id"], status=200, at=t0 + timedelta(seconds=101))
        assert len(events("endpoint.failing")) == 1 and len(events("endpoint.recovered")) == 1
