"""The pipeline end to end: four real processes, the real broker, a real receiver.

An event published over HTTP or AMQP is validated, fanned out, signed, delivered, verified by
the receiver the guide's way and by the official Standard Webhooks library, and audited.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import aio_pika
import orjson
import pytest
from dihya_receiver import InMemoryNonceStore, InvalidSignature, verify

from demo.receiver import Receiver
from launcher.processes import System
from shared import topology
from shared.signing_keys import generate_signing_key, public_key_of
from tests.conftest import wait_for
from tests.e2e.conftest import Api, Tap

DETAILS = {"fr": "Modèle créé", "en": "Template created", "ar": "تم إنشاء القالب",
           "tzm": "ⵉⵜⵜⵓⵙⴽⴰ ⵓⵎⴷⵢⴰ"}


def template_event(lang: str = "fr", **data: Any) -> dict[str, Any]:
    return {"event": "template.created", "timestamp": "2025-05-20T12:00:00Z", "lang": lang,
            "data": {"template_id": "abc123", "user_id": "user42", "details": DETAILS, **data}}


async def publish_amqp(url: str, routing_key: str, body: bytes, **props: Any) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **props),
            routing_key, mandatory=True, timeout=10)


async def drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message currently in ``queue`` (acked: the test owns them now)."""
    conn = await aio_pika.connect(url)
    out = []
    async with conn:
        channel = await conn.channel()
        q = await channel.get_queue(queue, ensure=False)
        while (msg := await q.get(fail=False, no_ack=True)) is not None:
            out.append(msg)
    return out


async def test_http_and_amqp_events_arrive_signed_and_verified(
    api: Api, receiver: Receiver, amqp_url: str
) -> None:
    await api.endpoint(receiver, "verify", ["template.created"])
    http_id = await api.publish(template_event("ar"))
    amqp_id = f"evt_amqp_{uuid.uuid4().hex[:10]}"
    await publish_amqp(amqp_url, "template.created",
                       orjson.dumps({**template_event("tzm"), "id": amqp_id}),
                       type="dihya.event.v1")

    got = await receiver.wait(lambda ds: {http_id, amqp_id} <= {
        d.json["id"] for d in ds if d.path == "verify"})
    for d in (d for d in got if d.path == "verify"):
        assert d.guide_ok, "X-Dihya-Signature must verify the guide's Flask way"
        assert d.standard_ok is True, "the standardwebhooks package must verify the headers"
        body = d.json
        assert body["event"] == "template.created"
        assert body["data"]["details"] == DETAILS  # the four languages survive the trip
        assert d.headers["webhook-id"] == body["id"]
        assert d.headers["X-Dihya-Event"] == "template.created"
        assert d.headers["Content-Type"].startswith("application/json")
        assert body["delivery"]["nonce"] and body["delivery"]["timestamp"] == int(
            d.headers["webhook-timestamp"])
    langs = {d.json["id"]: d.json["lang"] for d in got}
    assert langs[http_id] == "ar" and langs[amqp_id] == "tzm"


async def test_fan_out_one_delivery_per_subscribed_endpoint(api: Api, receiver: Receiver) -> None:
    await api.endpoint(receiver, "fan-a", ["incident.*"])
    await api.endpoint(receiver, "fan-b", ["incident.security"])
    await api.endpoint(receiver, "fan-c", ["template.deleted"])
    event_id = await api.publish({"event": "incident.security", "data": {"user_id": "u1"}})
    marker = await api.publish({"event": "template.deleted", "data": {}})

    await receiver.wait(lambda ds: any(d.json["id"] == marker for d in ds))
    await receiver.wait(lambda ds: len([d for d in ds if d.json["id"] == event_id]) >= 2)
    # fan-c's own delivery (the marker) has arrived, so the incident's fan-out is complete
    hits = sorted(d.path for d in receiver.received() if d.json["id"] == event_id)
    assert hits == ["fan-a", "fan-b"]


async def test_audit_shows_the_accepted_event_and_each_attempt(
    api: Api, receiver: Receiver
) -> None:
    ep = await api.endpoint(receiver, "audited", ["audit.demo"])
    event_id = await api.publish({"event": "audit.demo", "data": {"user_id": "user42"}})
    await receiver.wait(lambda ds: any(d.json["id"] == event_id for d in ds))

    async def trail() -> list[dict[str, Any]]:
        return await api.records(event_id=event_id)

    await wait_for(lambda: _has_attempt(trail), timeout=20)
    records = await trail()
    kinds = [r["kind"] for r in records]
    assert kinds.count("event.accepted") == 1
    attempts = [r for r in records if r["kind"] == "delivery.attempted"]
    assert len(attempts) == 1
    attempt = attempts[0]
    assert attempt["endpoint_id"] == ep["id"]
    assert attempt["status_code"] == 200 and attempt["outcome"] == "delivered"
    assert attempt["duration_ms"] is not None and attempt["duration_ms"] >= 0
    by_endpoint = await api.records(endpoint_id=ep["id"])
    assert {r["id"] for r in attempts} <= {r["id"] for r in by_endpoint}


async def _has_attempt(trail: Any) -> bool:
    return any(r["kind"] == "delivery.attempted" for r in await trail())


async def test_failed_delivery_is_retried_then_dead_lettered_and_audited(
    api: Api, receiver: Receiver, amqp_url: str
) -> None:
    receiver.statuses["down"] = [500, 500, 500]
    ep = await api.endpoint(receiver, "down", ["order.failed"])
    event_id = await api.publish({"event": "order.failed", "data": {}})

    async def dead_lettered() -> bool:
        return any(r["kind"] == "delivery.dead_lettered"
                   for r in await api.records(event_id=event_id))

    await wait_for(dead_lettered, timeout=30)
    hits = receiver.received("down")
    assert len(hits) == 3  # the first attempt and two retries (schedule 150ms, 300ms)
    assert len({d.headers["webhook-id"] for d in hits}) == 1  # stable id across attempts
    assert len({d.json["delivery"]["nonce"] for d in hits}) == 3  # re-signed every time
    records = await api.records(event_id=event_id)
    attempts = [r for r in records if r["kind"] == "delivery.attempted"]
    assert [r["status_code"] for r in attempts] == [500, 500, 500]
    assert all(r["endpoint_id"] == ep["id"] for r in attempts)

    # the dead-letter store has it, with its reason and full attempt history
    async def stored() -> list[dict[str, Any]]:
        _, page = await api.call("GET", "ingest", f"/v1/endpoints/{ep['id']}/deliveries",
                                 api.system.admin_token, params={"status": "failed"},
                                 expect=200)
        return [d for d in page["items"] if d["event_id"] == event_id]

    await wait_for(stored, timeout=20)
    [failed] = await stored()
    assert failed["reason"] == "exhausted"
    assert [a["status_code"] for a in failed["attempts"]] == [500, 500, 500]

    # a manual retry sends it again (re-signed, same webhook-id) and is audited with who asked
    receiver.statuses["down"] = [200]
    await api.call("POST", "ingest", f"/v1/deliveries/{failed['delivery_id']}/retry",
                   api.system.admin_token, expect=202)
    await receiver.wait(lambda ds: sum(d.path == "down" for d in ds) == 4)
    assert receiver.received("down")[-1].headers["webhook-id"] == event_id

    async def retry_audited() -> bool:
        return any(r["kind"] == "delivery.retry_requested" and r["actor"]
                   for r in await api.records(event_id=event_id))

    await wait_for(retry_audited, timeout=20)


async def test_bad_input_over_http_gets_clear_errors(api: Api) -> None:
    status, body = await api.call("POST", "ingest", "/v1/events", api.system.admin_token,
                                  {"event": "Not An Event!", "lang": "de"})
    assert status == 422
    fields = {f["field"] for f in body["error"]["fields"]}
    assert {"event", "lang", "data"} <= fields
    status, body = await api.call("POST", "ingest", "/v1/events", api.system.admin_token,
                                  data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, _ = await api.call("POST", "ingest", "/v1/events", None, template_event())
    assert status == 401


async def test_bad_input_over_amqp_is_dead_lettered_audited_and_the_next_event_flows(
    api: Api, receiver: Receiver, amqp_url: str
) -> None:
    await api.endpoint(receiver, "after-bad", ["bad.next"])
    await publish_amqp(amqp_url, "bad.json", b"{definitely not json")
    await publish_amqp(amqp_url, "bad.schema", orjson.dumps({"event": "bad.schema"}))
    good = f"evt_good_{uuid.uuid4().hex[:8]}"
    await publish_amqp(amqp_url, "bad.next", orjson.dumps({"id": good, "event": "bad.next",
                                                           "data": {}}))
    await receiver.wait(lambda ds: any(d.json["id"] == good for d in ds))

    async def rejected() -> list[dict[str, Any]]:
        return await api.records(kind="event.rejected")

    await wait_for(lambda: _count(rejected, 2), timeout=20)
    reasons = {r["reason"] for r in await rejected()}
    assert {"invalid_json", "schema_invalid"} <= reasons
    parked = await drain(amqp_url, topology.dead_queue(topology.INGEST_EVENTS))
    by_reason = {m.headers[topology.REASON_HEADER]: m for m in parked}
    assert by_reason["invalid_json"].body == b"{definitely not json"
    assert b"bad.schema" in by_reason["schema_invalid"].body


async def _count(fetch: Any, n: int) -> bool:
    return len(await fetch()) >= n


async def test_roles_are_enforced(api: Api) -> None:
    _, pub = await api.call("POST", "ingest", "/v1/tokens", api.system.admin_token,
                            {"role": "publisher"}, expect=201)
    status, body = await api.call("POST", "ingest", "/v1/endpoints", pub["token"],
                                  {"url": "https://example.com/h", "events": ["a.b"]})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, _ = await api.call("GET", "audit", "/v1/audit/records", pub["token"])
    assert status in (401, 403)
    await api.publish({"event": "roles.ok", "data": {}}, token=pub["token"])


async def signer_applied(api: Api, endpoint_id: str, done: Any) -> None:
    """Wait until the signer applied a control message for ``endpoint_id`` matching ``done``
    (its ``secret.set`` audit fact): the control queue and the job queue are separate, so a
    job published right after a change could otherwise be signed before the change lands."""
    async def applied() -> bool:
        return any(r["service"] == "signer" and done(r["details"])
                   for r in await api.records(kind="secret.set", endpoint_id=endpoint_id))
    await wait_for(applied, timeout=30)


async def test_ed25519_endpoint_is_signed_v1a_verified_by_public_key_and_rotates(
    api: Api, receiver: Receiver, system: System
) -> None:
    token = system.admin_token
    url = receiver.url("ed25519")
    status, refused = await api.call("POST", "ingest", "/v1/endpoints", token, {
        "url": url, "events": ["template.created"], "signature_scheme": "ed25519",
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    assert status == 422, refused
    _, ep = await api.call("POST", "ingest", "/v1/endpoints", token, {
        "url": url, "events": ["template.created"], "signature_scheme": "ed25519"}, expect=201)
    assert ep["secret"] is None and ep["signature_scheme"] == "ed25519"
    [first] = ep["public_keys"]
    assert first["key"].startswith("whpk_") and first["valid_until"] is None
    _, shown = await api.call("GET", "ingest", f"/v1/endpoints/{ep['id']}", token, expect=200)
    assert shown["public_keys"] == ep["public_keys"]
    receiver.statuses["ed25519"] = [200] * 10  # it cannot check X-Dihya-Signature: none is sent

    event_id = await api.publish(template_event("en"))
    [got] = [d for d in await receiver.wait(lambda ds: any(
        d.path == "ed25519" and d.json["id"] == event_id for d in ds))
        if d.path == "ed25519" and d.json["id"] == event_id]
    assert "X-Dihya-Signature" not in got.headers
    assert got.headers["webhook-signature"].startswith("v1a,")
    assert verify(got.body, got.headers, first["key"])["id"] == event_id

    status, refused = await api.call("POST", "ingest", f"/v1/endpoints/{ep['id']}/secret/rotate",
                                     token, {"secret": "x" * 32})
    assert status == 422, refused
    _, rotated = await api.call("POST", "ingest", f"/v1/endpoints/{ep['id']}/secret/rotate",
                                token, {"overlap_seconds": 3600}, expect=200)
    await signer_applied(api, ep["id"], lambda d: d.get("previous_valid_until") is not None)
    assert rotated["secret"] is None and rotated["public_key"] != first["key"]
    _, shown = await api.call("GET", "ingest", f"/v1/endpoints/{ep['id']}", token, expect=200)
    assert [k["key"] for k in shown["public_keys"]] == [rotated["public_key"], first["key"]]
    assert shown["public_keys"][1]["valid_until"] is not None

    second = await api.publish(template_event("fr"))
    [again] = [d for d in await receiver.wait(lambda ds: any(
        d.path == "ed25519" and d.json["id"] == second for d in ds))
        if d.path == "ed25519" and d.json["id"] == second]
    assert [s.split(",")[0] for s in again.headers["webhook-signature"].split()] == ["v1a"] * 2
    for key in (rotated["public_key"], first["key"]):  # either key verifies during the overlap
        verify(again.body, again.headers, key, nonce_store=InMemoryNonceStore())
    with pytest.raises(InvalidSignature):
        verify(again.body, again.headers, public_key_of(generate_signing_key()),
               nonce_store=InMemoryNonceStore())


GATEWAY_KEY = "gw-key-7c1d0e5a-never-in-a-log"
ROTATED_GATEWAY_KEY = "gw-key-2-b94f1a2c-never-in-a-log"


async def test_custom_headers_reach_the_receiver_masked_in_the_api_and_refused_if_reserved(
    api: Api, receiver: Receiver, system: System
) -> None:
    token = system.admin_token
    url = receiver.url("custom-headers")
    for reserved in ("Content-Type", "host", "webhook-id", "X-Dihya-Signature",
                     "Transfer-Encoding", "Connection"):
        status, refused = await api.call("POST", "ingest", "/v1/endpoints", token, {
            "url": url, "events": ["incident.*"], "headers": {reserved: "x"}})
        assert status == 422, (reserved, refused)
    status, refused = await api.call("POST", "ingest", "/v1/endpoints", token, {
        "url": url, "events": ["incident.*"], "headers": {"X-Api-Key": "a\r\nInjected: 1"}})
    assert status == 422 and "Injected" not in orjson.dumps(refused).decode()

    _, ep = await api.call("POST", "ingest", "/v1/endpoints", token, {
        "url": url, "events": ["incident.*"], "headers": {"X-Api-Key": GATEWAY_KEY}},
        expect=201)
    receiver.secrets["custom-headers"] = ep["secret"]
    assert ep["headers"] == {"X-Api-Key": "********"}
    _, shown = await api.call("GET", "ingest", f"/v1/endpoints/{ep['id']}", token, expect=200)
    assert shown["headers"] == {"X-Api-Key": "********"}

    first = await api.publish({"event": "incident.security", "data": {"n": 1}})
    [got] = [d for d in await receiver.wait(lambda ds: any(
        d.path == "custom-headers" and d.json["id"] == first for d in ds))
        if d.path == "custom-headers" and d.json["id"] == first]
    assert got.headers["X-Api-Key"] == GATEWAY_KEY
    assert got.guide_ok and got.standard_ok  # Dihya's own headers are untouched

    _, patched = await api.call("PATCH", "ingest", f"/v1/endpoints/{ep['id']}", token,
                                {"headers": {"X-Api-Key": ROTATED_GATEWAY_KEY,
                                             "X-Tenant": "t-1"}}, expect=200)
    assert patched["headers"] == {"X-Api-Key": "********", "X-Tenant": "********"}
    await signer_applied(api, ep["id"], lambda d: d.get("header_names") == ["X-Api-Key",
                                                                              "X-Tenant"])
    second = await api.publish({"event": "incident.security", "data": {"n": 2}})
    [again] = [d for d in await receiver.wait(lambda ds: any(
        d.path == "custom-headers" and d.json["id"] == second for d in ds))
        if d.path == "custom-headers" and d.json["id"] == second]
    assert again.headers["X-Api-Key"] == ROTATED_GATEWAY_KEY
    assert again.headers["X-Tenant"] == "t-1"

    _, cleared = await api.call("PATCH", "ingest", f"/v1/endpoints/{ep['id']}", token,
                                {"headers": {}}, expect=200)
    assert cleared["headers"] == {}
    await signer_applied(api, ep["id"], lambda d: d.get("header_names") == [])
    third = await api.publish({"event": "incident.security", "data": {"n": 3}})
    [last] = [d for d in await receiver.wait(lambda ds: any(
        d.path == "custom-headers" and d.json["id"] == third for d in ds))
        if d.path == "custom-headers" and d.json["id"] == third]
    assert "X-Api-Key" not in last.headers and "X-Tenant" not in last.headers


async def test_no_secret_in_any_log_line_audit_record_error_or_broker_message(
    api: Api, system: System, amqp_url: str, receiver: Receiver, tap: Tap
) -> None:
    # Runs after the tests above (file order): every endpoint secret issued in this module.
    rejected_secret = "whsec_refused secret with spaces 0123456789"
    status, error_body = await api.call(
        "POST", "ingest", "/v1/endpoints", system.admin_token,
        {"url": "https://example.com/h", "events": ["a.b"], "secret": rejected_secret})
    assert status == 422
    assert rejected_secret not in orjson.dumps(error_body).decode()

    issued = [s for s in receiver.secrets.values() if s]
    assert len(issued) >= 5
    records = await api.records()
    assert records, "the audit log should not be empty here"
    blob = orjson.dumps(records)
    for name in ("ingest", "signer", "deliverer", "audit"):
        blob += system.log_path(name).read_bytes()
    for queue in topology.WORK_QUEUES:
        for msg in await drain(amqp_url, topology.dead_queue(queue.name)):
            blob += msg.body + orjson.dumps(msg.headers, default=str)
    handovers = b""
    for msg in tap.messages:
        raw = msg.body + orjson.dumps(msg.headers, default=str)
        if msg.exchange == topology.CONTROL_EXCHANGE and (msg.routing_key or "").startswith(
                "secret."):
            handovers += raw  # the one kind of message allowed to carry a secret
        else:
            blob += raw
    assert len(tap.messages) > 50, "the tap saw the traffic"
    signing_keys = set(re.findall(rb"whsk_[A-Za-z0-9+/=]+", handovers))
    assert signing_keys, "the ed25519 endpoint's signing keys were handed to the signer"
    for key in signing_keys:
        assert key not in blob, "an ed25519 signing key leaked"
    for value in (GATEWAY_KEY, ROTATED_GATEWAY_KEY):  # custom header values, likewise
        assert value.encode() in handovers, "the custom headers were handed to the signer"
        assert value.encode() not in blob, "a custom header value leaked"
    for secret in issued:
        assert secret.encode() in handovers, "each secret was handed to the signer"
        assert secret.encode() not in blob, "a webhook secret leaked"
    assert system.admin_token.encode() not in blob + handovers, "the admin token leaked"
