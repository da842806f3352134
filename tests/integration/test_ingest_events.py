"""Events through ingest, over HTTP and straight over AMQP, on the real broker.

Observation relies on RabbitMQ's per-channel ordering: ingest publishes an event's jobs before
its ``event.accepted`` fact on one channel, so once the fact is seen in a queue bound to both,
every job of that event is already there — counts are exact, without sleeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY

from services.ingest.decisions import accepted_fact_id, delivery_id, event_id_for
from services.ingest.metrics import event_type_label
from shared import topology
from shared.contracts import MAX_JOBS_PER_BATCH, Event
from tests.conftest import wait_for
from tests.integration.test_ingest_api import Client, Observer, running_ingest

pytestmark = pytest.mark.integration

DETAILS = {"fr": "Modèle créé", "en": "Template created", "ar": "تم إنشاء القالب",
           "tzm": "ⵉⵜⵜⵓⵙⴽⴰ ⵓⵎⴷⵢⴰ"}


def template(event: str = "template.created", **over: Any) -> dict[str, Any]:
    return {"event": event, "timestamp": "2025-05-20T12:00:00Z", "lang": "fr",
            "data": {"template_id": "abc123", "user_id": "user42", "details": DETAILS}, **over}


async def publish_raw(connection: AbstractRobustConnection, routing_key: str, body: bytes,
                      **props: Any) -> None:
    """Publish to the events exchange the way a platform service would (confirmed)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **props),
            routing_key, mandatory=True, timeout=10)
    finally:
        await channel.close()


def duplicates() -> float:
    """Events ingest dropped as already fanned out (the metric is process-wide)."""
    return REGISTRY.get_sample_value("dihya_ingest_events_duplicate_total") or 0.0


def accepted(event_type: str) -> float:
    """Events of a type ingest fanned out and recorded as such (counted after the record)."""
    return REGISTRY.get_sample_value("dihya_ingest_events_accepted_total",
                                     {"event_type": event_type_label(event_type)}) or 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def take_parked(connection: AbstractRobustConnection,
                      key: Callable[[AbstractIncomingMessage], str | None], wanted: set[str],
                      timeout: float = 15.0) -> dict[str, AbstractIncomingMessage]:
    """Take this test's messages from ingest's parking queue (acked); leave others there."""
    channel = await connection.channel()
    queue = await channel.get_queue(topology.dead_queue(topology.INGEST_EVENTS), ensure=False)
    found: dict[str, AbstractIncomingMessage] = {}
    done = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        name = key(message)
        if name in wanted:
            found[name] = message
            await message.ack()
            if set(found) == wanted:
                done.set()
        # anything else stays unacked and returns to the queue when the channel closes

    await queue.consume(on_message)
    try:
        async with asyncio.timeout(timeout):
            await done.wait()
    except TimeoutError:
        raise AssertionError(f"parked messages missing: {wanted - set(found)}") from None
    finally:
        await channel.close()
    return found


# -- over HTTP ----------------------------------------------------------------------------


async def test_http_event_fans_out_to_each_matching_enabled_endpoint(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    exact = await ingest.endpoint(["template.created"], url="https://a.example.com/h")
    wild = await ingest.endpoint(["incident.*", "template.#"], url="https://b.example.com/h")
    other = await ingest.endpoint(["incident.#"], url="https://c.example.com/h")
    off = await ingest.endpoint(["#"], url="https://d.example.com/h")
    assert (await ingest.call("PATCH", f"/v1/endpoints/{off['id']}",
                              json={"status": "disabled"})).status == 200

    reply = await ingest.call("POST", "/v1/events", json=template(lang="ar"))
    assert reply.status == 202, reply.text
    event_id = reply.body["id"]
    assert event_id.startswith("evt_") and reply.body == {"id": event_id,
                                                         "event": "template.created"}

    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=event_id)))
    jobs = obs.jobs(event_id)
    assert sorted(j["endpoint_id"] for j in jobs) == sorted([exact["id"], wild["id"]])
    for job in jobs:
        assert job["delivery_id"] == delivery_id(event_id, job["endpoint_id"])
        assert job["url"] == {exact["id"]: exact["url"], wild["id"]: wild["url"]}[
            job["endpoint_id"]]
        assert job["attempt"] == 1 and job["type"] == "dihya.delivery_job.v1"
        assert job["event"]["timestamp"] == "2025-05-20T12:00:00Z"
        assert job["event"]["lang"] == "ar" and job["event"]["data"]["details"] == DETAILS
    sign = [m for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
            if m.json["event"]["id"] == event_id]
    assert all(m.type == "dihya.delivery_job.v1" for m in sign)
    # one event's two jobs, submitted together, leave as one batch (or, if the first left
    # alone, as single jobs with their ids in headers)
    assert all(m.headers[topology.BATCH_HEADER] == m.batch if m.batch
               else _text(m.headers["x-dihya-event-id"]) == event_id for m in sign)
    [fact] = obs.facts("event.accepted", event_id=event_id)
    assert fact["id"] == accepted_fact_id(event_id) and fact["event_type"] == "template.created"
    assert fact["details"] == {"endpoints": 2, "subject": "user42", "lang": "ar"}

    given = await ingest.call("POST", "/v1/events",
                              json={"id": "order-42", "event": "incident.fire", "data": {}})
    assert given.status == 202 and given.body["id"] == "order-42"
    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id="order-42")))
    jobs = obs.jobs("order-42")
    assert sorted(j["endpoint_id"] for j in jobs) == sorted([wild["id"], other["id"]])
    assert all(j["event"]["timestamp"] for j in jobs)  # filled in


async def test_idempotency_key_replays_the_first_answer_and_publishes_once(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, [(topology.EVENTS_EXCHANGE, "#"),
                                        (topology.WORK_EXCHANGE, topology.SIGN),
                                        (topology.AUDIT_EXCHANGE, "event.accepted")])
    await ingest.endpoint(["idem.#"])
    publisher = await ingest.token("publisher")
    key = {"Idempotency-Key": "order-7/attempt"}

    first = await ingest.call("POST", "/v1/events", json={"event": "idem.one", "data": {}},
                              headers=key)
    assert first.status == 202 and "Idempotent-Replayed" not in first.headers
    again = await ingest.call("POST", "/v1/events", json={"event": "idem.one", "data": {}},
                              headers=key)
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    other_token = await ingest.call("POST", "/v1/events", token=publisher["token"],
                                    json={"event": "idem.one", "data": {}}, headers=key)
    assert other_token.status == 202 and other_token.body["id"] != first.body["id"]

    racing = await asyncio.gather(*(
        ingest.call("POST", "/v1/events", json={"event": "idem.race", "data": {}},
                    headers={"Idempotency-Key": "race"}) for _ in range(6)))
    assert {r.status for r in racing} == {202}
    assert len({r.body["id"] for r in racing}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in racing) == 1

    sentinel = await ingest.call("POST", "/v1/events", json={"event": "idem.end", "data": {}})
    # everything ingest published before the sentinel precedes it in the observer's queue
    await obs.wait(lambda _: any(m.json.get("id") == sentinel.body["id"]
                                 for m in obs.on(topology.EVENTS_EXCHANGE)))
    published = [m.json["id"] for m in obs.on(topology.EVENTS_EXCHANGE)]
    assert published.count(first.body["id"]) == 1
    assert published.count(racing[0].body["id"]) == 1
    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=first.body["id"])))
    assert len(obs.jobs(first.body["id"])) == 1


async def test_an_unroutable_event_gets_a_503_and_the_retry_goes_through(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    channel = await broker.channel()
    events_queue = await channel.get_queue(topology.INGEST_EVENTS, ensure=False)
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    await events_queue.unbind(topology.EVENTS_EXCHANGE, "#")
    try:  # the events exchange now routes nowhere: the mandatory publish fails
        failed = await ingest.call("POST", "/v1/events", json={"event": "k.v", "data": {}},
                                   headers=key)
    finally:
        await events_queue.bind(topology.EVENTS_EXCHANGE, "#")
        await channel.close()
    assert failed.status == 503 and failed.body["error"]["code"] == "broker_unconfirmed"
    assert "may or may not have been accepted" in failed.body["error"]["message"]
    retried = await ingest.call("POST", "/v1/events", json={"event": "k.v", "data": {}},
                                headers=key)
    assert retried.status == 202 and "Idempotent-Replayed" not in retried.headers
    assert retried.body["id"] == failed.body["error"]["event_id"]  # the same event, at last


async def test_the_cli_says_an_unconfirmed_event_may_exist_and_its_retry_keeps_the_id(
    ingest: Client, broker: AbstractRobustConnection, tmp_path: Path
) -> None:
    """``dihya events publish`` against the real ingest when the broker cannot take the event:
    it names the id, says the event may or may not have been accepted, and the command it
    gives (``--id``) publishes that same event once the broker is back."""
    import io
    import re
    import shlex

    from cli.errors import Exit
    from cli.main import run
    from tests.integration.test_ingest_api import ADMIN

    env = {"DIHYA_INGEST_URL": ingest.base, "DIHYA_TOKEN": ADMIN, "HOME": "/nonexistent"}

    async def dihya(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, list(argv), env=env, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    path = tmp_path / "event.json"
    path.write_bytes(orjson.dumps({"event": "cli.unconfirmed", "data": {"n": 1}}))
    channel = await broker.channel()
    events_queue = await channel.get_queue(topology.INGEST_EVENTS, ensure=False)
    await events_queue.unbind(topology.EVENTS_EXCHANGE, "#")
    try:  # the events exchange routes nowhere: the mandatory publish is not confirmed
        code, _, err = await dihya("events", "publish", str(path))
    finally:
        await events_queue.bind(topology.EVENTS_EXCHANGE, "#")
        await channel.close()
    assert code == Exit.UNAVAILABLE, err
    assert "may or may not have been accepted" in err and "Nothing was changed" not in err
    command = re.search(r"`(dihya events publish [^`]+)`", err)
    assert command, err
    argv = shlex.split(command.group(1))[1:]
    event_id = argv[argv.index("--id") + 1]
    assert event_id.startswith("evt_") and event_id in err.split("`")[0]
    code, out, err = await dihya(*argv, "--json")
    assert code == Exit.OK, err
    assert orjson.loads(out)["id"] == event_id  # the same event, not a new one


async def test_an_unconfirmed_event_keeps_its_id_and_is_delivered_once(
    amqp_url: str, broker: AbstractRobustConnection, tmp_path: Path
) -> None:
    """Issue #17, item 1: the publish reached the queue but its confirm came too late (a
    1 ms publish timeout here; a broker node frozen or lost in production). The 503 says so
    and names the id; the retry — with the same key, or without a key but with that id —
    yields the same id, and the consumer's deduplication fans the event out once."""
    obs = await Observer.start(broker, [(topology.EVENTS_EXCHANGE, "unconfirmed.#"),
                                        (topology.WORK_EXCHANGE, topology.SIGN),
                                        (topology.AUDIT_EXCHANGE, "event.accepted")])
    database = f"sqlite:///{tmp_path}/ingest.db"
    async with running_ingest(amqp_url, database) as ingest:
        await ingest.endpoint(["unconfirmed.#"])
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    async with running_ingest(amqp_url, database, publish_timeout=0.001) as hasty:
        keyed = await hasty.call("POST", "/v1/events", headers=key,
                                 json={"event": "unconfirmed.keyed", "data": {}})
        bare = await hasty.call("POST", "/v1/events",
                                json={"event": "unconfirmed.bare", "data": {}})
    for failed in (keyed, bare):
        assert failed.status == 503, failed.text
        assert failed.body["error"]["code"] == "broker_unconfirmed"
    keyed_id, bare_id = keyed.body["error"]["event_id"], bare.body["error"]["event_id"]
    assert "retry with the same Idempotency-Key" in keyed.body["error"]["message"]
    assert "`error.event_id` as the body's `id`" in bare.body["error"]["message"]
    async with running_ingest(amqp_url, database) as ingest:
        # the first copies did reach the queue: this ingest fans them out (or the hasty one
        # did, if its consumer took them before it stopped; its fan-out publishes time out too)
        await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=keyed_id)
                                      and obs.facts("event.accepted", event_id=bare_id)))
        again = await ingest.call("POST", "/v1/events", headers=key,
                                  json={"event": "unconfirmed.keyed", "data": {}})
        assert again.status == 202 and again.body["id"] == keyed_id
        assert "Idempotent-Replayed" not in again.headers  # unconfirmed: published again
        replay = await ingest.call("POST", "/v1/events", headers=key,
                                   json={"event": "unconfirmed.keyed", "data": {}})
        assert replay.status == 202 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.body["id"] == keyed_id  # confirmed now: replayed, not published
        resent = await ingest.call("POST", "/v1/events",
                                   json={"id": bare_id, "event": "unconfirmed.bare", "data": {}})
        assert resent.status == 202 and resent.body["id"] == bare_id
        sentinel = await ingest.call("POST", "/v1/events",
                                     json={"event": "unconfirmed.end", "data": {}})
        await obs.wait(lambda _: bool(obs.facts("event.accepted",
                                                event_id=sentinel.body["id"])))
    published = [m.json["id"] for m in obs.on(topology.EVENTS_EXCHANGE)]
    assert published.count(keyed_id) == 2 and published.count(bare_id) == 2  # both copies
    assert len({m.json["id"] for m in obs.on(topology.EVENTS_EXCHANGE)}) == 3  # no new id
    for event_id in (keyed_id, bare_id):  # each fanned out under one delivery id (the
        # hasty ingest's own fan-out may have reached the queue unconfirmed too: same ids)
        assert len({job["delivery_id"] for job in obs.jobs(event_id)}) == 1
        assert len({f["id"] for f in obs.facts("event.accepted", event_id=event_id)}) == 1


async def test_outside_the_window_a_key_starts_a_new_event(amqp_url: str, tmp_path: Path
                                                           ) -> None:
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/i.db",
                              idempotency_window=0) as ingest:
        key = {"Idempotency-Key": "same"}
        one = await ingest.call("POST", "/v1/events", json={"event": "w.x", "data": {}},
                                headers=key)
        two = await ingest.call("POST", "/v1/events", json={"event": "w.x", "data": {}},
                                headers=key)
        assert one.status == two.status == 202
        assert one.body["id"] != two.body["id"] and "Idempotent-Replayed" not in two.headers


async def test_bad_http_events_get_clear_errors_and_never_a_5xx(ingest_sqlite: Client) -> None:
    ingest = ingest_sqlite
    viewer = await ingest.token("viewer")
    assert (await ingest.call("POST", "/v1/events", token=viewer["token"],
                              json=template())).status == 403
    assert (await ingest.call("POST", "/v1/events", token=None, json=template())).status == 401
    bad = await ingest.call("POST", "/v1/events", json={"event": "Not An Event!", "lang": "de"})
    assert bad.status == 422
    assert {"event", "lang", "data"} <= {f["field"] for f in bad.body["error"]["fields"]}
    long_key = await ingest.call("POST", "/v1/events", json=template(),
                                 headers={"Idempotency-Key": "k" * 256})
    assert long_key.status == 422
    assert long_key.body["error"]["fields"][0]["field"] == "Idempotency-Key"
    plain = await ingest.call("POST", "/v1/events", data=b"{}",
                              headers={"Content-Type": "text/plain"})
    assert plain.status == 415
    too_big = template(data={"blob": "x" * 300_000})
    assert (await ingest.call("POST", "/v1/events", json=too_big)).status == 413

    nasty: list[bytes] = [
        b"null", b"[]", b'"event"', b"{}", b'{"event": null, "data": {}}',
        b'{"event": "a.b", "data": []}', b'{"event": "a.b", "data": {}, "id": "bad id!"}',
        b'{"event": "a.b", "data": {}, "timestamp": "2025-05-20T12:00:00"}',
        b'{"event": "a.b", "data": {}, "timestamp": "yesterday"}',
        b'{"event": "a.b", "data": {"n": 1e999}}', b'{"event": "a.b", "data": {"n": NaN}}',
        b'{"event": "a.b", "data": {"s": "\\ud800"}}',
        b'{"event": "' + b"a" * 200 + b'", "data": {}}',
        b'{"event": "a.b", "data": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"event": "a.b", "data": {}, "extra": true}', b"\xff\xfe", b"",
    ]
    for body in nasty:
        reply = await ingest.call("POST", "/v1/events", data=body,
                                  headers={"Content-Type": "application/json"})
        assert 400 <= reply.status < 500, (body[:60], reply.status, reply.text[:200])
        assert reply.body["error"]["code"], body[:60]

    # a large valid body arrives in many TCP segments and must be read whole
    large = await ingest.call("POST", "/v1/events", json=template(data={"blob": "y" * 200_000}))
    assert large.status == 202, large.text[:300]
    for odd in (b'{"event": "a.b", "data": {}, "timestamp": 1747742400}',
                b'{"event": "a.b", "data": {"n": 123456789012345678901234567890}}'):
        reply = await ingest.call("POST", "/v1/events", data=odd,
                                  headers={"Content-Type": "application/json"})
        assert reply.status == 202, reply.text


# -- over AMQP ----------------------------------------------------------------------------


async def test_an_event_published_over_amqp_fans_out_with_a_stable_id(
    ingest_sqlite: Client, broker: AbstractRobustConnection
) -> None:
    ingest = ingest_sqlite
    obs = await Observer.start(broker)
    ep = await ingest.endpoint(["amqp.#"])
    accepted_before = accepted("amqp.direct")
    message_id = f"m-{uuid.uuid4().hex}"
    body = orjson.dumps({"event": "amqp.direct", "data": {"user_id": "u1"}})
    await publish_raw(broker, "amqp.direct", body, message_id=message_id, type=Event.TYPE)
    expected = event_id_for(None, message_id)
    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=expected)))
    [job] = obs.jobs(expected)
    assert job["endpoint_id"] == ep["id"] and job["delivery_id"] == delivery_id(expected,
                                                                                ep["id"])
    assert job["event"]["timestamp"] is not None
    # its id recorded as fanned out: that comes after the fact's confirm (and is counted then);
    # a copy arriving before it would be fanned out again, under the same ids
    await wait_for(lambda: accepted("amqp.direct") > accepted_before)

    # the same message again (same message_id): same event id, already fanned out → dropped
    before = duplicates()
    await publish_raw(broker, "amqp.direct", body, message_id=message_id)
    await wait_for(lambda: duplicates() > before)
    assert len(obs.jobs(expected)) == 1
    assert len(obs.facts("event.accepted", event_id=expected)) == 1

    own_id = f"evt_own_{uuid.uuid4().hex[:8]}"
    await publish_raw(broker, "amqp.own", orjson.dumps({"id": own_id, "event": "amqp.own",
                                                        "data": {}}))
    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=own_id)))
    assert [j["endpoint_id"] for j in obs.jobs(own_id)] == [ep["id"]]


async def test_the_jobs_of_events_in_flight_together_leave_in_batches(
    ingest_sqlite: Client, broker: AbstractRobustConnection
) -> None:
    ingest = ingest_sqlite
    obs = await Observer.start(broker)
    endpoints = [(await ingest.endpoint(["batch.#"]))["id"] for _ in range(2)]
    ids = [f"evt_batch_{uuid.uuid4().hex[:12]}" for _ in range(300)]
    channel = await broker.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
    await asyncio.gather(*(exchange.publish(aio_pika.Message(
        orjson.dumps({"id": i, "event": "batch.made", "data": {}}),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "batch.made") for i in ids))
    await channel.close()

    ours = set(ids)

    def sign() -> list[Any]:
        return [m for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
                if m.json["event"]["id"] in ours]

    await obs.wait(lambda _: len(sign()) >= 2 * len(ids), timeout=30)
    # every job exactly once, whichever message carried it
    assert sorted(m.json["delivery_id"] for m in sign()) == sorted(
        delivery_id(i, ep) for i in ids for ep in endpoints)
    sizes = [m.batch or 1 for m in sign()]
    assert max(sizes) > 2  # several events' jobs in one message, not only one event's two
    assert max(sizes) <= MAX_JOBS_PER_BATCH
    assert all(m.headers[topology.BATCH_HEADER] == m.batch for m in sign() if m.batch)


async def test_bad_amqp_messages_are_parked_audited_and_the_next_event_flows(
    ingest_sqlite: Client, broker: AbstractRobustConnection
) -> None:
    ingest = ingest_sqlite
    obs = await Observer.start(broker)
    ep = await ingest.endpoint(["after.bad"])
    run = uuid.uuid4().hex
    bad = {
        "invalid_json": b"{definitely not json",
        "schema_invalid": orjson.dumps({"event": "bad.schema", "data": "nope",
                                        "password": "hunter2-do-not-echo"}),
        "unsupported_type": orjson.dumps(template("bad.type")),
    }
    for reason, body in bad.items():
        props: dict[str, Any] = {"headers": {"x-test": f"{run}:{reason}"}}
        if reason == "unsupported_type":
            props["type"] = "dihya.delivery_job.v1"
        await publish_raw(broker, "bad.message", body, **props)
    good = f"evt_good_{run[:8]}"
    await publish_raw(broker, "after.bad", orjson.dumps({"id": good, "event": "after.bad",
                                                         "data": {}}))

    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=good)))
    assert [j["endpoint_id"] for j in obs.jobs(good)] == [ep["id"]]
    await obs.wait(lambda _: len(obs.facts("event.rejected")) >= 3)
    facts = {f["reason"]: f for f in obs.facts("event.rejected")}
    assert set(facts) == set(bad)
    assert facts["schema_invalid"]["event_type"] == "bad.schema"
    assert "data" in facts["schema_invalid"]["error"]
    assert "password" in facts["schema_invalid"]["error"]
    assert "hunter2" not in orjson.dumps(facts).decode()
    assert facts["unsupported_type"]["event_type"] == "bad.type"
    assert facts["invalid_json"]["event_type"] is None
    assert all(f["service"] == "ingest" and f["kind"] == "event.rejected"
               for f in facts.values())

    parked = await take_parked(
        broker, lambda m: _text((m.headers or {}).get("x-test", "")).partition(":")[2] or None
        if _text((m.headers or {}).get("x-test", "")).startswith(run) else None, set(bad))
    for reason, message in parked.items():
        headers = message.headers or {}
        assert _text(headers[topology.REASON_HEADER]) == reason
        assert _text(headers[topology.SOURCE_HEADER]) == topology.INGEST_EVENTS
        assert _text(headers[topology.ERROR_HEADER])
        assert message.body == bad[reason]


async def test_an_event_over_the_fanout_limit_is_parked_not_delivered(
    amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/i.db", max_fanout=1) as ingest:
        await ingest.endpoint(["cap.*"])
        await ingest.endpoint(["cap.#"], url="https://other.example.com/")
        reply = await ingest.call("POST", "/v1/events", json={"event": "cap.many", "data": {}})
        assert reply.status == 202
        event_id = reply.body["id"]
        await obs.wait(lambda _: bool(obs.facts("event.rejected", event_id=event_id)))
        [fact] = obs.facts("event.rejected", event_id=event_id)
        assert fact["reason"] == "fanout_limit" and fact["event_type"] == "cap.many"
        assert obs.jobs(event_id) == []  # decided before any job was published
        parked = await take_parked(
            broker, lambda m: "mine" if event_id.encode() in m.body else None, {"mine"})
        assert _text((parked["mine"].headers or {})[topology.REASON_HEADER]) == "fanout_limit"
