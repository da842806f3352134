"""An endpoint's rate limit through ingest: API → store → every DeliveryJob of it.

Real broker, both storages (``database_url``: SQLite, then PostgreSQL), ingest in-process; the
helpers are those of ``test_ingest_api.py`` and ``test_ingest_retry_schedule.py``.
"""

from __future__ import annotations

import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.integration.test_ingest_api import Client, Observer
from tests.integration.test_ingest_retry_schedule import _jobs_of

pytestmark = pytest.mark.integration


async def test_a_rate_limit_is_stored_shown_audited_and_carried_by_its_jobs(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    paced = await ingest.endpoint(["rate.*"], url="https://paced.example.com/h",
                                  rate_limit={"per_second": 5})
    plain = await ingest.endpoint(["rate.*"], url="https://plain.example.com/h")
    assert paced["rate_limit"] == {"per_second": 5, "burst": 1}
    assert plain["rate_limit"] is None
    got = await ingest.call("GET", f"/v1/endpoints/{paced['id']}")
    assert got.status == 200 and got.body["rate_limit"] == {"per_second": 5, "burst": 1}
    await obs.wait(lambda _: bool(obs.facts("endpoint.created", endpoint_id=paced["id"])))
    [created] = obs.facts("endpoint.created", endpoint_id=paced["id"])
    assert created["details"]["rate_limit"] == {"per_second": 5, "burst": 1}

    jobs = await _jobs_of(ingest, obs, "rate.one")
    assert jobs[paced["id"]]["rate_limit"] == {"per_second": 5, "burst": 1}
    assert jobs[plain["id"]]["rate_limit"] is None

    changed = await ingest.call("PATCH", f"/v1/endpoints/{plain['id']}",
                                json={"rate_limit": {"per_second": 0.5, "burst": 10}})
    assert changed.status == 200, changed.text
    assert changed.body["rate_limit"] == {"per_second": 0.5, "burst": 10}
    cleared = await ingest.call("PATCH", f"/v1/endpoints/{paced['id']}",
                                json={"rate_limit": None})
    assert cleared.status == 200 and cleared.body["rate_limit"] is None
    await obs.wait(lambda _: bool(obs.facts("endpoint.updated", endpoint_id=paced["id"])))
    [updated] = obs.facts("endpoint.updated", endpoint_id=paced["id"])
    assert updated["details"]["fields"] == ["rate_limit"]
    assert updated["details"]["rate_limit"] is None

    jobs = await _jobs_of(ingest, obs, "rate.two")
    assert jobs[paced["id"]]["rate_limit"] is None
    assert jobs[plain["id"]]["rate_limit"] == {"per_second": 0.5, "burst": 10}

    renamed = await ingest.call("PATCH", f"/v1/endpoints/{plain['id']}",
                                json={"description": "renamed"})
    assert renamed.body["rate_limit"] == {"per_second": 0.5, "burst": 10}  # left alone


async def test_a_bad_rate_limit_is_refused_naming_the_field(ingest: Client) -> None:
    for bad in ({"per_second": 0}, {"per_second": -1}, {"per_second": 10_001},
                {"per_second": 5, "burst": 0}, {"per_second": 5, "burst": 1001},
                {"burst": 3}, {"per_second": 5, "extra": 1}, 5, "5/10"):
        reply = await ingest.call("POST", "/v1/endpoints", json={
            "url": "https://hooks.example.com/h", "events": ["a.b"], "rate_limit": bad})
        assert reply.status == 422, (bad, reply.text)
        assert {f["field"].split(".")[0] for f in reply.body["error"]["fields"]} == {
            "rate_limit"}, bad
    ep = await ingest.endpoint(["a.b"], rate_limit={"per_second": 2, "burst": 4})
    patch = await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}",
                              json={"rate_limit": {"per_second": 0}})
    assert patch.status == 422
    kept = (await ingest.call("GET", f"/v1/endpoints/{ep['id']}")).body["rate_limit"]
    assert kept == {"per_second": 2, "burst": 4}


async def test_the_openapi_document_describes_the_rate_limit(ingest: Client) -> None:
    doc = (await ingest.call("GET", "/v1/openapi.json", token=None)).body
    schemas = doc["components"]["schemas"]
    for name in ("EndpointCreate", "EndpointUpdate", "EndpointOut", "EndpointCreated",
                 "EndpointPatched"):
        assert "rate_limit" in schemas[name]["properties"], name
    limit = schemas["RateLimit"]["properties"]
    assert (limit["per_second"]["minimum"], limit["per_second"]["maximum"]) == (0.01, 10_000)
    assert (limit["burst"]["minimum"], limit["burst"]["maximum"]) == (1, 1000)
