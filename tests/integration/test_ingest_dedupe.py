"""AMQP idempotency: an event id fanned out once is not fanned out again within the window —
across a restart of ingest and across replicas sharing the database.

"Dropped as a duplicate" is observed through ingest's process-wide counter
(``dihya_ingest_events_duplicate_total``): once it moved, the duplicate was acked without
publishing, so the job count can be asserted without sleeping.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from services.ingest.decisions import event_id_for
from shared.contracts import Event
from tests.conftest import wait_for
from tests.integration.test_ingest_api import Observer, running_ingest
from tests.integration.test_ingest_events import accepted, duplicates, publish_raw

pytestmark = pytest.mark.integration


async def test_the_same_message_id_fans_out_once_even_across_a_restart(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    message_id = f"m-{uuid.uuid4().hex}"
    body = orjson.dumps({"event": "dedupe.amqp", "data": {"n": 1}})
    expected = event_id_for(None, message_id)

    async with running_ingest(amqp_url, database_url) as ingest:
        ep = await ingest.endpoint(["dedupe.*"])
        await ingest.endpoint(["dedupe.#"], url="https://second.example.com/")
        recorded = accepted("dedupe.amqp")
        await publish_raw(broker, "dedupe.amqp", body, message_id=message_id, type=Event.TYPE)
        await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=expected)))
        # the id is recorded as fanned out after the jobs' confirms (and the acceptance fact):
        # a copy arriving before that is fanned out again under the same ids, by design
        await wait_for(lambda: accepted("dedupe.amqp") > recorded)
        assert len(obs.jobs(expected)) == 2
        before = duplicates()
        await publish_raw(broker, "dedupe.amqp", body, message_id=message_id)
        await wait_for(lambda: duplicates() > before)
        assert len(obs.jobs(expected)) == 2

    # a new ingest process on the same database remembers
    async with running_ingest(amqp_url, database_url) as ingest:
        before = duplicates()
        await publish_raw(broker, "dedupe.amqp", body, message_id=message_id)
        await wait_for(lambda: duplicates() > before)
        # a different message id is a different event: it still flows
        other = f"m-{uuid.uuid4().hex}"
        await publish_raw(broker, "dedupe.amqp", body, message_id=other)
        other_id = event_id_for(None, other)
        await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=other_id)))
        assert len(obs.jobs(other_id)) == 2
        assert len(obs.jobs(expected)) == 2
        assert len(obs.facts("event.accepted", event_id=expected)) == 1
        assert ep["id"] in {j["endpoint_id"] for j in obs.jobs(expected)}


async def test_replicas_sharing_the_database_fan_out_an_id_once(
    amqp_url: str, pg_url: str, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_ingest(amqp_url, pg_url))
        await stack.enter_async_context(running_ingest(amqp_url, pg_url))
        await first.endpoint(["replica.*"])
        body_id = f"order-{uuid.uuid4().hex[:10]}"
        body = orjson.dumps({"id": body_id, "event": "replica.paid", "data": {}})
        recorded = accepted("replica.paid")
        await publish_raw(broker, "replica.paid", body)
        await obs.wait(lambda _: bool(obs.facts("event.accepted", event_id=body_id)))
        await wait_for(lambda: accepted("replica.paid") > recorded)  # recorded: see above
        before = duplicates()
        for _ in range(4):  # competing consumers: each replica gets some of them
            await publish_raw(broker, "replica.paid", body)
        await wait_for(lambda: duplicates() >= before + 4)
        assert len(obs.jobs(body_id)) == 1


async def test_a_zero_window_turns_amqp_deduplication_off(
    amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/i.db",
                              idempotency_window=0) as ingest:
        await ingest.endpoint(["nowindow.*"])
        message_id = f"m-{uuid.uuid4().hex}"
        expected = event_id_for(None, message_id)
        body = orjson.dumps({"event": "nowindow.x", "data": {}})
        for _ in range(2):
            await publish_raw(broker, "nowindow.x", body, message_id=message_id)
        await obs.wait(lambda _: len(obs.facts("event.accepted", event_id=expected)) == 2)
        # redelivered ids stay stable: the receivers can still drop the copy
        assert len({j["delivery_id"] for j in obs.jobs(expected)}) == 1
