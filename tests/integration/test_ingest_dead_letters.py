"""The dead-letter store: parked deliveries taken from the parking queues, listed, resent.

Deliveries are parked the way the deliverer and the signer park them: a ``DeliveryJob`` published
to the dead exchange with the source queue as routing key and the reason in ``x-dihya-reason``.
Ingest's intake is observed through the API (``wait_for`` on the list), what it resends through
a test queue bound to the work exchange (``sign``) and the audit exchange.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from shared import topology
from shared.contracts import AttemptRecord, DeliveryJob, DeliveryJobBatch, Event, encode, utcnow
from tests.conftest import wait_for
from tests.integration.test_ingest_api import Client, Observer

pytestmark = pytest.mark.integration

RESENT = ((topology.WORK_EXCHANGE, topology.SIGN), (topology.AUDIT_EXCHANGE, "delivery.#"))


def parked_job(endpoint: Mapping[str, Any], *, attempts: int, last_at: datetime | None = None,
               delivery_id: str | None = None, event_type: str = "order.paid") -> DeliveryJob:
    """A job as the deliverer parks it: ``attempts`` attempts made, attempt = the next one."""
    last = last_at or utcnow()
    history = tuple(
        AttemptRecord(attempt=n, at=last - timedelta(minutes=attempts - n), outcome="failed",
                      status_code=500, duration_ms=10.0 + n, error="HTTP 500")
        for n in range(1, attempts + 1))
    event = Event(id=f"evt_{uuid.uuid4().hex[:12]}", event=event_type,
                  timestamp=datetime(2025, 5, 20, 12, tzinfo=UTC),
                  data={"order": 42, "note": "a NUL \u0000 in JSON"})
    return DeliveryJob(delivery_id=delivery_id or f"dlv_{uuid.uuid4().hex[:20]}",
                       endpoint_id=endpoint["id"], url=endpoint["url"], event=event,
                       attempt=attempts + 1, history=history)


async def park(connection: AbstractRobustConnection, source: str, body: bytes,
               headers: Mapping[str, Any]) -> None:
    """Publish ``body`` into ``source``'s parking queue (confirmed), as a service parks it."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(topology.DEAD_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             headers=dict(headers), message_id=uuid.uuid4().hex),
            source, mandatory=True, timeout=10)
    finally:
        await channel.close()


async def park_job(connection: AbstractRobustConnection, job: DeliveryJob, reason: str,
                   source: str = topology.DELIVERER_JOBS) -> None:
    await park(connection, source, encode(job), {topology.REASON_HEADER: reason,
                                                 topology.ERROR_HEADER: "HTTP 500"})


async def listed(ingest: Client, endpoint_id: str, status: str = "failed",
                 token: str | None = None) -> dict[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {} if token is None else {"token": token}
    reply = await ingest.call("GET", f"/v1/endpoints/{endpoint_id}/deliveries?status={status}",
                              **kwargs)
    assert reply.status == 200, reply.text
    return {item["delivery_id"]: item for item in reply.body["items"]}


async def until_listed(ingest: Client, endpoint_id: str, *delivery_ids: str,
                       status: str = "failed") -> dict[str, dict[str, Any]]:
    async def present() -> bool:
        return set(delivery_ids) <= set(await listed(ingest, endpoint_id, status))

    await wait_for(present, timeout=15)
    return await listed(ingest, endpoint_id, status)


def resent(obs: Observer, delivery_id: str) -> list[dict[str, Any]]:
    return [m.json for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
            if m.json["delivery_id"] == delivery_id]


async def test_parked_deliveries_are_stored_listed_retried_and_fail_again_with_history(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, RESENT)
    admin = await ingest.token("admin")
    viewer = await ingest.token("viewer")
    publisher = await ingest.token("publisher")
    ep = await ingest.endpoint(["order.*"], url="https://hooks.example.com/orders")
    exhausted = parked_job(ep, attempts=3)
    unsigned = parked_job(ep, attempts=0)  # the signer parks before any attempt
    await park_job(broker, exhausted, "exhausted")
    await park_job(broker, unsigned, "no_secret", source=topology.SIGNER_JOBS)

    items = await until_listed(ingest, ep["id"], exhausted.delivery_id, unsigned.delivery_id)
    item = items[exhausted.delivery_id]
    assert item["event_id"] == exhausted.event.id and item["event_type"] == "order.paid"
    assert item["reason"] == "exhausted" and item["error"] == "HTTP 500"
    assert item["status"] == "failed" and item["next_attempt"] == 4
    assert [a["attempt"] for a in item["attempts"]] == [1, 2, 3]
    assert item["attempts"][0]["status_code"] == 500
    assert item["attempts"][0]["duration_ms"] == 11.0
    assert datetime.fromisoformat(item["failed_at"]) == exhausted.history[-1].at
    assert items[unsigned.delivery_id]["reason"] == "no_secret"
    assert items[unsigned.delivery_id]["attempts"] == []
    assert items[unsigned.delivery_id]["next_attempt"] == 1
    assert set(await listed(ingest, ep["id"], token=viewer["token"])) == set(items)
    assert (await ingest.call("GET", f"/v1/endpoints/{ep['id']}/deliveries",
                              token=publisher["token"])).status == 403

    # retry: the stored job goes back to the signer with the next attempt, history kept
    denied = await ingest.call("POST", f"/v1/deliveries/{exhausted.delivery_id}/retry",
                               token=viewer["token"])
    assert denied.status == 403
    reply = await ingest.call("POST", f"/v1/deliveries/{exhausted.delivery_id}/retry",
                              token=admin["token"])
    assert reply.status == 202, reply.text
    assert reply.body == {"delivery_id": exhausted.delivery_id, "endpoint_id": ep["id"],
                          "attempt": 4, "status": "retried"}
    await obs.wait(lambda _: bool(obs.facts("delivery.retry_requested",
                                            delivery_id=exhausted.delivery_id)))
    [job] = resent(obs, exhausted.delivery_id)
    again = DeliveryJob.model_validate(job)
    assert again.attempt == 4 and again.history == exhausted.history
    assert again.event == exhausted.event and again.url == ep["url"]
    [fact] = obs.facts("delivery.retry_requested", delivery_id=exhausted.delivery_id)
    assert fact["actor"] == admin["id"] and fact["endpoint_id"] == ep["id"]
    assert fact["attempt"] == 4 and fact["details"] == {"via": "retry", "was": "failed"}

    assert exhausted.delivery_id not in await listed(ingest, ep["id"])
    retried = (await listed(ingest, ep["id"], "retried"))[exhausted.delivery_id]
    assert retried["retried_by"] == admin["id"] and retried["retried_at"]
    twice = await ingest.call("POST", f"/v1/deliveries/{exhausted.delivery_id}/retry")
    assert twice.status == 409 and twice.body["error"]["code"] == "already_retried"
    unknown = await ingest.call("POST", "/v1/deliveries/dlv_nope/retry")
    assert unknown.status == 404 and unknown.body["error"]["code"] == "not_found"

    # the retried attempt fails too: the same row, failed again, every attempt kept
    failed_again = again.model_copy(update={"attempt": 5, "history": (*again.history,
        AttemptRecord(attempt=4, at=utcnow(), outcome="failed", status_code=503))})
    await park_job(broker, failed_again, "exhausted")
    row = (await until_listed(ingest, ep["id"], exhausted.delivery_id))[exhausted.delivery_id]
    assert [a["attempt"] for a in row["attempts"]] == [1, 2, 3, 4]
    assert row["attempts"][-1]["status_code"] == 503 and row["next_attempt"] == 5
    assert exhausted.delivery_id not in await listed(ingest, ep["id"], "retried")

    unsigned_retry = await ingest.call("POST", f"/v1/deliveries/{unsigned.delivery_id}/retry")
    assert unsigned_retry.status == 202 and unsigned_retry.body["attempt"] == 1


async def test_recover_resends_what_failed_since_a_time(
    ingest_sqlite: Client, broker: AbstractRobustConnection
) -> None:
    ingest = ingest_sqlite
    obs = await Observer.start(broker, RESENT)
    ep = await ingest.endpoint(["order.*"])
    other = await ingest.endpoint(["order.*"], url="https://other.example.com/")
    now = utcnow()
    old = parked_job(ep, attempts=2, last_at=now - timedelta(hours=2))
    new = parked_job(ep, attempts=8, last_at=now - timedelta(hours=1))
    elsewhere = parked_job(other, attempts=1, last_at=now - timedelta(minutes=5))
    for job in (old, new, elsewhere):
        await park_job(broker, job, "exhausted")
    await until_listed(ingest, ep["id"], old.delivery_id, new.delivery_id)
    await until_listed(ingest, other["id"], elsewhere.delivery_id)

    since = (now - timedelta(minutes=90)).astimezone(UTC).isoformat()
    reply = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/recover", json={"since": since})
    assert reply.status == 202, reply.text
    assert reply.body == {"endpoint_id": ep["id"], "count": 1, "delivery_ids": [new.delivery_id]}
    await obs.wait(lambda _: bool(obs.facts("delivery.retry_requested",
                                            delivery_id=new.delivery_id)))
    [job] = resent(obs, new.delivery_id)
    assert job["attempt"] == 9 and len(job["history"]) == 8
    [fact] = obs.facts("delivery.retry_requested", delivery_id=new.delivery_id)
    assert fact["actor"] == "tok_bootstrap_admin" and fact["details"]["via"] == "recover"
    assert resent(obs, old.delivery_id) == [] and resent(obs, elsewhere.delivery_id) == []
    assert set(await listed(ingest, ep["id"])) == {old.delivery_id}

    nothing = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/recover",
                                json={"since": since})
    assert nothing.status == 202 and nothing.body["count"] == 0
    naive = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/recover",
                              json={"since": "2025-05-20T12:00:00"})
    assert naive.status == 422 and naive.body["error"]["fields"][0]["field"] == "since"
    missing = await ingest.call("POST", "/v1/endpoints/ep_nope/recover", json={"since": since})
    assert missing.status == 404

    # resending to a disabled or deleted endpoint is refused, and says why
    assert (await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}",
                              json={"status": "disabled"})).status == 200
    off = await ingest.call("POST", f"/v1/deliveries/{old.delivery_id}/retry")
    assert off.status == 409 and off.body["error"]["code"] == "endpoint_disabled"
    assert "manual" in off.body["error"]["message"]
    off_recover = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/recover",
                                    json={"since": since})
    assert off_recover.status == 409
    assert (await ingest.call("DELETE", f"/v1/endpoints/{other['id']}")).status == 204
    gone = await ingest.call("POST", f"/v1/deliveries/{elsewhere.delivery_id}/retry")
    assert gone.status == 409 and gone.body["error"]["code"] == "endpoint_deleted"
    assert elsewhere.delivery_id in await listed(ingest, other["id"])  # still kept


async def test_unreadable_parked_messages_are_kept_and_the_intake_goes_on(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, [(topology.AUDIT_EXCHANGE, "delivery.parked")])
    ep = await ingest.endpoint(["order.*"])
    marker = uuid.uuid4().hex
    garbage = f"garbage {marker}".encode()
    poison = f'{{"poison": "{marker}"}}'.encode()
    await park(broker, topology.SIGNER_JOBS, garbage,
               {topology.REASON_HEADER: "invalid_message", topology.ERROR_HEADER: "bad JSON"})
    await park(broker, topology.DELIVERER_JOBS, poison,
               {"x-death": [{"count": 10, "queue": topology.DELIVERER_JOBS,
                             "reason": "delivery_limit"}]})
    odd = parked_job(ep, attempts=1, delivery_id=f"dlv_{marker}\u0000" + "x" * 80)
    await park(broker, topology.DELIVERER_JOBS, encode(odd),
               {topology.REASON_HEADER: "exhausted", topology.ERROR_HEADER: "NUL \u0000 here"})
    good = parked_job(ep, attempts=1)
    await park_job(broker, good, "gone", source=topology.SIGNER_JOBS)
    await until_listed(ingest, ep["id"], good.delivery_id)

    async def parked() -> dict[str, dict[str, Any]]:
        reply = await ingest.call("GET", "/v1/parked-messages?limit=1000")
        assert reply.status == 200, reply.text
        return {item["body"]: item for item in reply.body["items"]}

    async def both() -> bool:
        return {garbage.decode(), poison.decode(), encode(odd).decode()} <= set(await parked())

    await wait_for(both, timeout=15)
    rows = await parked()
    bad = rows[garbage.decode()]
    assert bad["queue"] == topology.dead_queue(topology.SIGNER_JOBS)
    assert bad["reason"] == "invalid_message" and bad["error"] == "bad JSON"
    assert bad["headers"][topology.REASON_HEADER] == "invalid_message"
    limit = rows[poison.decode()]
    assert limit["queue"] == topology.dead_queue(topology.DELIVERER_JOBS)
    assert limit["reason"] == "delivery_limit" and limit["headers"]["x-death"][0]["count"] == 10
    unfit = rows[encode(odd).decode()]  # a job, but its id could never be a key
    assert unfit["reason"] == "exhausted" and unfit["error"] == "NUL \ufffd here"
    # the broker parked it, no service audited it: ingest does
    await obs.wait(lambda _: any(f["details"].get("queue") == limit["queue"]
                                 and f["service"] == "ingest"
                                 for f in obs.facts("delivery.parked")))
    viewer = await ingest.token("viewer")
    assert (await ingest.call("GET", "/v1/parked-messages",
                              token=viewer["token"])).status == 403


async def test_a_batch_the_broker_parked_becomes_one_failed_delivery_per_job(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, [(topology.AUDIT_EXCHANGE, "delivery.parked"),
                                        (topology.WORK_EXCHANGE, topology.SIGN)])
    ep = await ingest.endpoint(["order.*"])
    jobs = [parked_job(ep, attempts=0) for _ in range(3)]  # never attempted: crashed the signer
    await park(broker, topology.SIGNER_JOBS, encode(DeliveryJobBatch(jobs=jobs)),
               {"x-death": [{"count": 10, "queue": topology.SIGNER_JOBS,
                             "reason": "delivery_limit"}], topology.BATCH_HEADER: 3})
    rows = await until_listed(ingest, ep["id"], *(j.delivery_id for j in jobs))
    assert all(rows[j.delivery_id]["reason"] == "delivery_limit" for j in jobs)
    # audited once per job, since no service did
    await obs.wait(lambda _: {f["delivery_id"] for f in obs.facts("delivery.parked")
                              if f["service"] == "ingest"} >= {j.delivery_id for j in jobs})
    # and each can be resent on its own
    reply = await ingest.call("POST", f"/v1/deliveries/{jobs[1].delivery_id}/retry")
    assert reply.status == 202, reply.text
    await obs.wait(lambda _: bool(resent(obs, jobs[1].delivery_id)))
    assert not resent(obs, jobs[0].delivery_id)


async def test_a_retry_the_broker_does_not_confirm_changes_nothing(
    ingest_sqlite: Client, broker: AbstractRobustConnection
) -> None:
    ingest = ingest_sqlite
    ep = await ingest.endpoint(["order.*"])
    job = parked_job(ep, attempts=2)
    await park_job(broker, job, "exhausted")
    await until_listed(ingest, ep["id"], job.delivery_id)
    channel = await broker.channel()
    jobs_queue = await channel.get_queue(topology.SIGNER_JOBS, ensure=False)
    await jobs_queue.unbind(topology.WORK_EXCHANGE, topology.SIGN)
    try:  # the signer's queue is unbound: the mandatory publish comes back, unroutable
        failed = await ingest.call("POST", f"/v1/deliveries/{job.delivery_id}/retry")
        recover = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/recover",
                                    json={"since": "2000-01-01T00:00:00Z"})
    finally:
        await jobs_queue.bind(topology.WORK_EXCHANGE, topology.SIGN)
        await channel.close()
    assert failed.status == 503 and failed.body["error"]["code"] == "broker_unavailable"
    assert recover.status == 503
    assert job.delivery_id in await listed(ingest, ep["id"])  # still failed, not marked
    again = await ingest.call("POST", f"/v1/deliveries/{job.delivery_id}/retry")
    assert again.status == 202 and again.body["attempt"] == 3


async def test_a_given_up_delivery_is_announced_as_delivery_exhausted_once(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, ((topology.EVENTS_EXCHANGE, "delivery.exhausted"),
                                        (topology.WORK_EXCHANGE, topology.SIGN)))
    ep = await ingest.endpoint(["order.*"], url="https://hooks.example.com/exhausted")
    ops = await ingest.endpoint(["delivery.exhausted"], url="https://ops.example.com/h")
    job = parked_job(ep, attempts=3)
    await park_job(broker, job, "exhausted")
    await park_job(broker, job, "exhausted")  # parked twice (a redelivery): one event id
    # a given-up delivery *of an operational event* is stored but not announced (no loop)
    loop = parked_job(ops, attempts=2, event_type="delivery.exhausted")
    await park_job(broker, loop, "exhausted")
    await until_listed(ingest, ep["id"], job.delivery_id)
    await until_listed(ingest, ops["id"], loop.delivery_id)

    def announced() -> list[dict[str, Any]]:
        return [m.json for m in obs.on(topology.EVENTS_EXCHANGE, "delivery.exhausted")]

    await obs.wait(lambda _: len(announced()) >= 2)
    assert {e["id"] for e in announced()} == {announced()[0]["id"]}
    data = announced()[0]["data"]
    assert data == {
        "endpoint_id": ep["id"], "delivery_id": job.delivery_id, "event_id": job.event.id,
        "event_type": "order.paid", "reason": "exhausted", "attempts": 3,
        "first_attempt_at": job.history[0].at.isoformat(),
        "last_attempt_at": job.history[-1].at.isoformat(),
        "last_status_code": 500, "last_error": "HTTP 500"}
    assert all(e["data"]["delivery_id"] != loop.delivery_id for e in announced())

    # the operator's endpoint receives it, completed in the four languages
    def to_ops() -> list[dict[str, Any]]:
        return [m.json for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
                if m.json["endpoint_id"] == ops["id"]]
    await obs.wait(lambda _: bool(to_ops()))
    details = to_ops()[0]["event"]["data"]["details"]
    assert details["en"] == (f"Delivery {job.delivery_id} to {ep['id']} given up (exhausted) "
                             "after 3 attempts.")
    assert set(details) == {"fr", "en", "ar", "tzm"}
