"""One body limit, one JSON rule and the routing-key rule at both of ingest's doors, on the real
broker with a real receiver (issue #18).

Over AMQP, a 5 MB event, a NaN, a duplicate key and a routing key that is not the event's type
are each parked in ``dihya.ingest.events.dead`` with the reason, audited as ``event.rejected``
and never delivered, while a good event published after them — and one an operator puts back
through the default exchange — reaches the receiver. Over HTTP the same inputs get a 4xx with
the rule's code. Signer and deliverer run in this process for the module; the receiver is a real
aiohttp server on 127.0.0.1 that checks each signature the guide's way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from cryptography.fernet import Fernet

from demo.receiver import Receiver
from services.deliverer.app import start as start_deliverer
from services.deliverer.settings import Settings as DelivererSettings
from services.ingest.decisions import ROUTED_AS_HEADER
from services.signer.app import start as start_signer
from services.signer.settings import Settings as SignerSettings
from shared import topology
from shared.broker import declare
from tests.conftest import free_port
from tests.integration.test_ingest_api import Observer
from tests.integration.test_ingest_event_catalog import (
    _text,
    delivered,
    ingest_for,
    subscribe,
)
from tests.integration.test_ingest_events import publish_raw, take_parked

pytestmark = pytest.mark.integration

LIMIT = 262_144  # DIHYA_INGEST_MAX_BODY_BYTES's default, which these ingests run with


async def drop_leftovers(amqp_url: str) -> None:
    """Empty the signer's and the deliverer's queues: earlier modules that ran ingest alone
    left jobs there (for endpoints no signer here knows). This module's signer would otherwise
    work through them — each waits for a secret, and is retried or parked — and hand the
    backlog, reshuffled, to the modules that follow (test_signer_service waits 10 s for a job
    of its own behind it)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare(channel)  # run alone, this module is the first to use the vhost
        for name in (topology.SIGNER_JOBS, topology.DELIVERER_JOBS):
            await (await channel.get_queue(name, ensure=False)).purge()


@pytest.fixture(scope="module")
async def receiver(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[Receiver]:
    """The receiver, with a signer and a deliverer behind whichever ingest a test starts."""
    await drop_leftovers(amqp_url)
    workdir = tmp_path_factory.mktemp("limits")
    signer = SignerSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "master_key": Fernet.generate_key().decode(),
        "database_url": f"sqlite:///{workdir}/signer.db", "shutdown_grace": 2.0})
    deliverer = DelivererSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "allowed_networks": "127.0.0.0/8",
        "shutdown_grace": 2.0})
    rec = Receiver()
    await rec.start()
    stops = [await start_signer(signer), await start_deliverer(deliverer)]
    try:
        yield rec
    finally:
        for stop in reversed(stops):
            await stop()
        await rec.stop()
        await drop_leftovers(amqp_url)


def bad_events(run: str) -> dict[str, tuple[str, bytes]]:
    """reason → (routing key, body): each would be delivered if ingest let it in."""
    big = orjson.dumps({"id": f"evt_big_{run}", "event": "limits.big",
                        "data": {"blob": "x" * (5 * 1024 * 1024)}})
    return {
        "body_too_large": ("limits.big", big),
        "non_finite_number": ("limits.nan", b'{"id": "evt_nan_' + run.encode()
                              + b'", "event": "limits.nan", "data": {"n": NaN}}'),
        "duplicate_key": ("limits.dup", b'{"id": "evt_dup_' + run.encode()
                          + b'", "event": "limits.dup", "data": {"amount": 1, "amount": 1000}}'),
        # a publisher whose topic permission allows limits.orders announces limits.admin
        "routing_key_mismatch": ("limits.orders", orjson.dumps(
            {"id": f"evt_route_{run}", "event": "limits.admin", "data": {}})),
    }


async def test_amqp_events_over_the_limits_are_parked_audited_and_never_delivered(
    receiver: Receiver, amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    run = uuid.uuid4().hex[:10]
    bad = bad_events(run)
    bad_ids = {f"evt_{tag}_{run}" for tag in ("big", "nan", "dup", "route")}
    good, moved = f"evt_good_{run}", f"evt_moved_{run}"
    async with ingest_for(amqp_url, tmp_path) as ingest:
        name = await subscribe(ingest, receiver, ["limits.#"])
        for reason, (routing_key, body) in bad.items():
            await publish_raw(broker, routing_key, body, headers={"x-test": f"{run}:{reason}"})
        await publish_raw(broker, "limits.good", orjson.dumps(
            {"id": good, "event": "limits.good", "data": {"n": 1.5}}))
        # an operator putting an event straight into ingest's queue (as a shovel or the
        # management UI's "move messages" does from the parking queue): judged by its body
        channel = await broker.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(
            orjson.dumps({"id": moved, "event": "limits.moved", "data": {}}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), topology.INGEST_EVENTS,
            mandatory=True, timeout=10)
        await channel.close()

        got = await delivered(receiver, name, {good, moved})
        assert got[good].json["data"] == {"n": 1.5}
        await obs.wait(lambda _: len(obs.facts("event.rejected")) >= len(bad))
        facts = {f["reason"]: f for f in obs.facts("event.rejected")}
        parked = await take_parked(
            broker, lambda m: _text((m.headers or {}).get("x-test", "")).partition(":")[2]
            if _text((m.headers or {}).get("x-test", "")).startswith(run) else None, set(bad))

        # moving the misrouted event back (a shovel keeps body and headers) does not let it
        # in: it is judged by the routing key it was first published with, and parked again
        misrouted = parked["routing_key_mismatch"]
        channel = await broker.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(
            misrouted.body, headers={**(misrouted.headers or {}), "x-test": f"{run}:again"},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), topology.INGEST_EVENTS,
            mandatory=True, timeout=10)
        await channel.close()
        await obs.wait(lambda _: len(obs.facts("event.rejected")) > len(bad))
        again = await take_parked(
            broker, lambda m: "again" if _text((m.headers or {}).get("x-test", "")) == (
                f"{run}:again") else None, {"again"})

    assert set(facts) == set(bad)
    assert facts["body_too_large"]["error"] == (
        f"the body is {len(bad['body_too_large'][1])} bytes; the limit is {LIMIT} "
        "(DIHYA_INGEST_MAX_BODY_BYTES)")
    assert facts["non_finite_number"]["event_type"] == "limits.nan"
    assert "NaN" in facts["non_finite_number"]["error"]
    assert facts["duplicate_key"]["event_type"] == "limits.dup"
    assert "'amount'" in facts["duplicate_key"]["error"]
    assert "1000" not in facts["duplicate_key"]["error"]  # names the key, never a value
    route = facts["routing_key_mismatch"]
    assert (route["event_type"], route["event_id"]) == ("limits.admin", f"evt_route_{run}")
    assert "'limits.orders'" in route["error"] and "'limits.admin'" in route["error"]
    for reason, message in parked.items():
        headers = message.headers or {}
        assert _text(headers[topology.REASON_HEADER]) == reason
        assert _text(headers[topology.SOURCE_HEADER]) == topology.INGEST_EVENTS
        assert _text(headers[ROUTED_AS_HEADER]) == bad[reason][0]
        assert message.body == bad[reason][1]  # kept verbatim, 5 MB included
    [second] = [f for f in obs.facts("event.rejected") if f["id"] != route["id"]
                and f["reason"] == "routing_key_mismatch"]
    assert second["event_id"] == f"evt_route_{run}"
    assert _text((again["again"].headers or {})[ROUTED_AS_HEADER]) == "limits.orders"

    # never delivered: no job was published for any of them, and the receiver got none
    assert all(obs.jobs(event_id) == [] for event_id in bad_ids)
    assert not obs.facts("event.accepted", event_id=f"evt_route_{run}")
    received = {d.json["id"] for d in receiver.received(name)}
    assert received == {good, moved}
    print(f"books: published {len(bad) + 3} (one a misrouted event moved back), accepted 2, "
          f"delivered {len(received)}, parked {len(parked) + len(again)} "
          f"({', '.join(sorted(parked))}, routing_key_mismatch again), audited "
          f"{len(obs.facts('event.rejected'))} rejections, lost 0, duplicates 0")


async def test_http_refuses_the_same_inputs_with_a_code(
    receiver: Receiver, amqp_url: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    async with ingest_for(amqp_url, tmp_path) as ingest:
        expected = {"body_too_large": 413, "non_finite_number": 400, "duplicate_key": 400}
        for reason, (_, body) in bad_events(run).items():
            if reason not in expected:
                continue  # over HTTP the routing key is the event's type by construction
            reply = await ingest.call("POST", "/v1/events", data=body,
                                      headers={"Content-Type": "application/json"})
            assert (reply.status, reply.body["error"]["code"]) == (expected[reason], reason), (
                reply.text[:300])

        # one limit: a request body within it, whose event is over it once ingest fills in
        # the id and timestamp, is refused too (ingest's own AMQP door would park it)
        base: dict[str, Any] = {"event": "limits.edge", "data": {"blob": ""}}
        blob = "y" * (LIMIT - len(orjson.dumps(base)))
        body = orjson.dumps({"event": "limits.edge", "data": {"blob": blob}})
        assert len(body) == LIMIT
        edge = await ingest.call("POST", "/v1/events", data=body,
                                 headers={"Content-Type": "application/json"})
        assert (edge.status, edge.body["error"]["code"]) == (413, "body_too_large"), edge.text
        shorter = orjson.dumps({"event": "limits.edge", "data": {"blob": blob[:-200]}})
        fits = await ingest.call("POST", "/v1/events", data=shorter,
                                 headers={"Content-Type": "application/json"})
        assert fits.status == 202, fits.text
