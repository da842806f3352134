"""An endpoint's own retry schedule through ingest: API (seconds) → store → DeliveryJob (ms).

Real broker, both storages (``database_url``: SQLite, then PostgreSQL), ingest in-process; the
helpers are those of ``test_ingest_api.py``. Jobs are read once the event's ``event.accepted``
fact is seen: ingest publishes the jobs first on the same channel, so they are all there.
"""

from __future__ import annotations

from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.integration.test_ingest_api import Client, Observer

pytestmark = pytest.mark.integration


async def _jobs_of(ingest: Client, obs: Observer, event: str) -> dict[str, dict[str, Any]]:
    """Publish an event of type ``event``; its jobs by endpoint id."""
    reply = await ingest.call("POST", "/v1/events", json={"event": event, "data": {}})
    assert reply.status == 202, reply.text
    event_id = reply.body["id"]
    await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=event_id)))
    return {job["endpoint_id"]: job for job in obs.jobs(event_id)}


async def test_an_endpoints_own_schedule_is_stored_shown_and_carried_by_its_jobs(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    own = await ingest.endpoint(["sched.*"], url="https://own.example.com/h",
                                retry_schedule=[1, 2.5, 60])
    plain = await ingest.endpoint(["sched.*"], url="https://plain.example.com/h")
    assert own["retry_schedule"] == [1, 2.5, 60] and plain["retry_schedule"] is None

    got = await ingest.call("GET", f"/v1/endpoints/{own['id']}")
    assert got.status == 200 and got.body["retry_schedule"] == [1, 2.5, 60]
    listed = await ingest.call("GET", "/v1/endpoints")
    shown = {item["id"]: item["retry_schedule"] for item in listed.body["items"]}
    assert shown[own["id"]] == [1, 2.5, 60] and shown[plain["id"]] is None
    await obs.wait(lambda _: bool(obs.facts("endpoint.created", endpoint_id=own["id"])))
    [created] = obs.facts("endpoint.created", endpoint_id=own["id"])
    assert created["details"]["retry_schedule"] == [1, 2.5, 60]

    jobs = await _jobs_of(ingest, obs, "sched.one")
    assert jobs[own["id"]]["retry_schedule_ms"] == [1000, 2500, 60000]
    assert jobs[plain["id"]]["retry_schedule_ms"] is None  # the deployment's

    # [] is a schedule too: a single attempt
    once = await ingest.call("PATCH", f"/v1/endpoints/{plain['id']}",
                             json={"retry_schedule": []})
    assert once.status == 200, once.text
    assert once.body["retry_schedule"] == []
    # null clears it: back to the deployment's schedule
    cleared = await ingest.call("PATCH", f"/v1/endpoints/{own['id']}",
                                json={"retry_schedule": None})
    assert cleared.status == 200, cleared.text
    assert cleared.body["retry_schedule"] is None
    again = await ingest.call("GET", f"/v1/endpoints/{own['id']}")
    assert again.body["retry_schedule"] is None and again.body["url"] == own["url"]
    await obs.wait(lambda _: bool(obs.facts("endpoint.updated", endpoint_id=own["id"])))
    [updated] = obs.facts("endpoint.updated", endpoint_id=own["id"])
    assert updated["details"]["fields"] == ["retry_schedule"]
    assert updated["details"]["retry_schedule"] is None

    jobs = await _jobs_of(ingest, obs, "sched.two")
    assert jobs[own["id"]]["retry_schedule_ms"] is None
    assert jobs[plain["id"]]["retry_schedule_ms"] == []

    # other changes leave the schedule alone
    renamed = await ingest.call("PATCH", f"/v1/endpoints/{plain['id']}",
                                json={"description": "renamed"})
    assert renamed.status == 200 and renamed.body["retry_schedule"] == []


async def test_a_bad_schedule_is_refused_naming_the_field(ingest: Client) -> None:
    for bad in ([0.5], [172801], [1] * 21, ["5s"], "5s,5m"):
        reply = await ingest.call("POST", "/v1/endpoints", json={
            "url": "https://hooks.example.com/h", "events": ["a.b"], "retry_schedule": bad})
        assert reply.status == 422, (bad, reply.text)
        assert {f["field"].split(".")[0] for f in reply.body["error"]["fields"]} == {
            "retry_schedule"}
    ep = await ingest.endpoint(["a.b"], retry_schedule=[5])
    patch = await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}",
                              json={"retry_schedule": [-1]})
    assert patch.status == 422
    assert (await ingest.call("GET", f"/v1/endpoints/{ep['id']}")).body["retry_schedule"] == [5]


async def test_the_openapi_document_describes_the_schedule(ingest: Client) -> None:
    doc = (await ingest.call("GET", "/v1/openapi.json", token=None)).body
    schemas = doc["components"]["schemas"]
    for name in ("EndpointCreate", "EndpointUpdate", "EndpointOut", "EndpointCreated",
                 "EndpointPatched"):
        assert "retry_schedule" in schemas[name]["properties"], name
    request = schemas["EndpointCreate"]["properties"]["retry_schedule"]
    [array] = [s for s in request["anyOf"] if s.get("type") == "array"]
    assert array["maxItems"] == 20
    assert array["items"] == {"type": "number", "minimum": 1, "maximum": 172800}
    assert "deployment" in array["description"]
