"""The message log API against the real broker and both storages: events fanned out by ingest,
attempts reported as the deliverer reports them (``delivery.attempted`` facts on the audit
exchange), failures parked as the deliverer parks them; then what ``/v1/events``,
``/v1/deliveries``, resend, bulk retry, endpoint health, payload retention and the GDPR subject
routes answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import sqlalchemy as sa
from aio_pika.abc import AbstractRobustConnection

from services.ingest.app import purge_message_log
from services.ingest.decisions import delivery_id
from services.ingest.health import HEALTH_QUEUE
from services.ingest.message_log import MessageLog, log_events
from services.ingest.settings import Settings
from shared import topology
from shared.broker import Publisher, declare
from shared.contracts import AuditFact, utcnow
from shared.db import make_engine
from tests.conftest import wait_for
from tests.integration.test_ingest_api import Client, Observer, running_ingest
from tests.integration.test_ingest_dead_letters import park_job, parked_job
from tests.integration.test_ingest_health import judged

pytestmark = pytest.mark.integration

WATCH = ((topology.WORK_EXCHANGE, topology.SIGN),
         (topology.AUDIT_EXCHANGE, "delivery.retry_requested"))


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection.channel() as channel:
        await declare(channel)
        await (await channel.get_queue(HEALTH_QUEUE)).purge()
    yield connection
    await connection.close()


@pytest.fixture
async def publisher(broker: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    pub = await Publisher.open(broker)
    yield pub
    await pub.close()


async def report(publisher: Publisher, event_id: str, endpoint_id: str, attempt: int, *,
                 status: int | None, retry_in_ms: int | None = None) -> AuditFact:
    """Publish a delivery.attempted fact as the deliverer does; wait until ingest took it."""
    before = judged()
    step: dict[str, Any] = ({"next": "retry", "retry_in_ms": retry_in_ms}
                            if retry_in_ms is not None
                            else {"next": "done"} if status and status < 300
                            else {"next": "dead_letter", "dead_letter_reason": "exhausted"})
    fact = AuditFact(
        id=f"fct_{uuid.uuid4().hex}", kind="delivery.attempted", occurred_at=utcnow(),
        service="deliverer", event_id=event_id, event_type="order.paid",
        endpoint_id=endpoint_id, delivery_id=delivery_id(event_id, endpoint_id),
        attempt=attempt, url="https://a.example.com/h",
        outcome="delivered" if status is not None and status < 300 else "failed",
        status_code=status, duration_ms=12.5, error=None if status else "timeout",
        details={"response_excerpt": "ok" if status == 200 else "", **step,
                 "request_headers": {"webhook-id": "x", "webhook-signature": "v1,abcdefgh…"},
                 "response_headers": {"Content-Type": "text/plain"}})
    await publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
    await wait_for(lambda: judged() > before, timeout=15)
    return fact


async def publish(ingest: Client, event: str, data: dict[str, Any]) -> str:
    reply = await ingest.call("POST", "/v1/events", json={"event": event, "data": data})
    assert reply.status == 202, reply.text
    return str(reply.body["id"])


async def logged(ingest: Client, *event_ids: str) -> None:
    """Wait until the message log lists every one of ``event_ids``."""
    async def listed() -> bool:
        reply = await ingest.call("GET", "/v1/events?limit=200")
        return {i["id"] for i in reply.body["items"]} >= set(event_ids)
    await wait_for(listed, timeout=15)


async def test_message_log_shows_events_deliveries_attempts_and_resends(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    obs = await Observer.start(broker, WATCH)
    async with running_ingest(amqp_url, database_url) as ingest:
        a = await ingest.endpoint(["order.*"], url="https://a.example.com/h")
        b = await ingest.endpoint(["order.*"], url="https://b.example.com/h")
        first = await publish(ingest, "order.paid", {"order": 1, "user_id": "user42"})
        second = await publish(ingest, "order.paid", {"order": 2})
        third = await publish(ingest, "order.shipped", {"order": 3})
        await logged(ingest, first, second, third)

        page = (await ingest.call("GET", "/v1/events")).body
        assert [i["id"] for i in page["items"]] == [third, second, first]  # newest first
        assert page["next_cursor"] is None
        assert page["items"][2]["deliveries"] == {"total": 2, "delivered": 0, "failed": 0,
                                                  "pending": 2, "held": 0}

        # attempt 1 to A fails and will be retried, attempt 2 is delivered
        await report(publisher, first, a["id"], 1, status=500, retry_in_ms=5000)
        detail = (await ingest.call("GET", f"/v1/events/{first}")).body
        [to_a] = [d for d in detail["deliveries"] if d["endpoint_id"] == a["id"]]
        assert to_a["status"] == "pending" and to_a["next_retry_at"] is not None
        await report(publisher, first, a["id"], 2, status=200)
        await report(publisher, first, a["id"], 2, status=200)  # a redelivered fact: once

        detail = (await ingest.call("GET", f"/v1/events/{first}")).body
        assert detail["event"] == "order.paid" and detail["payload"]["id"] == first
        assert detail["payload"]["data"]["order"] == 1 and detail["payload"]["timestamp"]
        by_endpoint = {d["endpoint_id"]: d for d in detail["deliveries"]}
        to_a, to_b = by_endpoint[a["id"]], by_endpoint[b["id"]]
        assert to_a["id"] == delivery_id(first, a["id"]) and to_a["url"] == a["url"]
        assert to_a["status"] == "delivered" and to_a["next_retry_at"] is None
        assert [(x["attempt"], x["outcome"], x["status_code"]) for x in to_a["attempts"]] == [
            (1, "failed", 500), (2, "delivered", 200)]
        attempt = to_a["attempts"][1]
        assert attempt["latency_ms"] == 12.5 and attempt["response_excerpt"] == "ok"
        assert attempt["request_headers"]["webhook-signature"] == "v1,abcdefgh…"
        assert attempt["response_headers"] == {"Content-Type": "text/plain"}
        assert to_b["status"] == "pending" and to_b["attempts"] == []

        # filters and paging
        async def ids(query: str) -> list[str]:
            reply = await ingest.call("GET", "/v1/events" + query)
            assert reply.status == 200, reply.text
            return [i["id"] for i in reply.body["items"]]

        assert await ids("?status=delivered") == [first]
        assert await ids(f"?endpoint={b['id']}") == [third, second, first]
        assert await ids("?type=order.shipped") == [third]
        assert await ids("?until=2000-01-01T00:00:00Z") == []
        one = (await ingest.call("GET", "/v1/events?limit=2")).body
        assert [i["id"] for i in one["items"]] == [third, second] and one["next_cursor"]
        two = (await ingest.call("GET", f"/v1/events?limit=2&cursor={one['next_cursor']}")).body
        assert [i["id"] for i in two["items"]] == [first] and two["next_cursor"] is None
        bad = await ingest.call("GET", "/v1/events?cursor=bm90LWEtY3Vyc29y")
        assert bad.status == 422 and bad.body["error"]["code"] == "validation_failed"
        assert (await ingest.call("GET", "/v1/events/evt_nope")).status == 404

        deliveries = (await ingest.call("GET", "/v1/deliveries?status=delivered")).body
        [item] = deliveries["items"]
        assert item["id"] == to_a["id"] and item["event_id"] == first
        assert item["event"] == "order.paid" and item["attempts_count"] == 2
        assert item["last_attempt_at"] is not None
        everything = (await ingest.call("GET", f"/v1/deliveries?event={first}")).body
        assert {i["endpoint_id"] for i in everything["items"]} == {a["id"], b["id"]}

        # resend a delivered delivery: its next attempt, same delivery id, audited
        viewer = await ingest.token("viewer")
        refused = await ingest.call("POST", f"/v1/deliveries/{to_a['id']}/resend",
                                    token=viewer["token"])
        assert refused.status == 403
        assert (await ingest.call("GET", "/v1/events", token=viewer["token"])).status == 200
        resent = await ingest.call("POST", f"/v1/deliveries/{to_a['id']}/resend")
        assert resent.status == 202, resent.text
        assert resent.body == {"delivery_id": to_a["id"], "attempt": 3}
        await obs.wait(lambda _: bool(obs.facts("delivery.retry_requested",
                                                delivery_id=to_a["id"])))
        [job] = [j for j in obs.jobs(first) if j["attempt"] == 3]
        assert job["delivery_id"] == to_a["id"] and job["url"] == a["url"]
        assert job["event"] == detail["payload"]
        [fact] = obs.facts("delivery.retry_requested", delivery_id=to_a["id"])
        assert fact["actor"] == "tok_bootstrap_admin" and fact["details"]["via"] == "resend"
        again = await ingest.call("POST", f"/v1/deliveries/{to_a['id']}/resend")
        assert again.status == 409 and again.body["error"]["code"] == "delivery_in_flight"
        pending = await ingest.call("POST", f"/v1/deliveries/{to_b['id']}/resend")
        assert pending.status == 409
        assert (await ingest.call("POST", "/v1/deliveries/dlv_nope/resend")).status == 404

        # health: A had one failed and one delivered attempt in the last 24 hours
        listed = (await ingest.call("GET", "/v1/endpoints?include=health")).body
        health = {i["id"]: i["health"] for i in listed["items"]}
        assert health[a["id"]]["attempts"] == 2 and health[a["id"]]["success_rate"] == 0.5
        assert health[a["id"]]["state"] == "enabled"
        assert health[a["id"]]["last_delivery_at"] is not None
        assert len(health[a["id"]]["hours"]) == 24
        assert sum(h["delivered"] + h["failed"] for h in health[a["id"]]["hours"]) == 2
        assert health[b["id"]]["attempts"] == 0 and health[b["id"]]["success_rate"] is None
        plain = (await ingest.call("GET", "/v1/endpoints")).body
        assert all(i["health"] is None for i in plain["items"])
        one_health = (await ingest.call("GET", f"/v1/endpoints/{a['id']}/health")).body
        assert one_health["endpoint_id"] == a["id"] and one_health["failed"] == 1


async def test_bulk_retry_sends_every_failed_delivery_of_the_endpoint_once(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    obs = await Observer.start(broker, WATCH)
    async with running_ingest(amqp_url, database_url) as ingest:
        ep = await ingest.endpoint(["order.*"])
        jobs = [parked_job(ep, attempts=2) for _ in range(3)]
        for job in jobs:
            await park_job(broker, job, "exhausted")

        async def failed() -> int:
            reply = await ingest.call("GET", f"/v1/endpoints/{ep['id']}/deliveries")
            return len(reply.body["items"])
        await wait_for(lambda: _equal(failed(), 3), timeout=15)

        reply = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/retry-failed")
        assert reply.status == 202, reply.text
        assert reply.body == {"retried": 3}
        await obs.wait(lambda _: len(obs.facts("delivery.retry_requested",
                                               endpoint_id=ep["id"])) == 3)
        sent = [j for m in obs.on(topology.WORK_EXCHANGE, topology.SIGN)
                for j in [m.json] if j["endpoint_id"] == ep["id"]]
        assert sorted(j["delivery_id"] for j in sent) == sorted(j.delivery_id for j in jobs)
        assert all(j["attempt"] == 3 for j in sent)
        again = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/retry-failed")
        assert again.status == 202 and again.body == {"retried": 0}  # nothing sent twice
        missing = await ingest.call("POST", "/v1/endpoints/ep_nope/retry-failed")
        assert missing.status == 404


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def subjects(url: str, *event_ids: str) -> dict[str, str | None]:
    """The data subject each log row names, read from the table itself (no API shows it)."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(log_events.c.id, log_events.c.subject)
                .where(log_events.c.id.in_(event_ids)))
            return {row.id: row.subject for row in rows}
    finally:
        await engine.dispose()


async def test_payloads_expire_and_go_with_their_subject(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection, publisher: Publisher
) -> None:
    """GDPR on both storages: the export holds the payload, erasure removes it and the
    subject's link to the row, and so does the retention sweep."""
    url = database_url
    async with running_ingest(amqp_url, url) as ingest:
        ep = await ingest.endpoint(["order.*"])
        mine = await publish(ingest, "order.paid", {"order": 1, "user_id": "alice@example.com"})
        other = await publish(ingest, "order.paid", {"order": 2, "user_id": "bob"})
        await logged(ingest, mine, other)
        auditor = await ingest.token("auditor")

        export = await ingest.call("GET", "/v1/subjects/alice@example.com/export",
                                   token=auditor["token"])
        assert export.status == 200, export.text
        [item] = export.body["events"]
        assert item["id"] == mine and item["payload"]["data"]["user_id"] == "alice@example.com"
        refused = await ingest.call("POST", "/v1/subjects/alice@example.com/erasure",
                                    token=auditor["token"])
        assert refused.status == 403
        erased = await ingest.call("POST", "/v1/subjects/alice@example.com/erasure")
        assert erased.status == 200 and erased.body == {"subject_events": 1}
        assert (await ingest.call("GET", f"/v1/events/{mine}")).body["payload"] is None
        again = await ingest.call("GET", "/v1/subjects/alice@example.com/export")
        assert again.body["events"] == []
        assert await subjects(url, mine, other) == {mine: None, other: "bob"}
        assert (await ingest.call("GET", f"/v1/events/{other}")).body["payload"] is not None

        # a delivered delivery whose payload is gone cannot be resent
        await report(publisher, mine, ep["id"], 1, status=200)
        gone = await ingest.call("POST", f"/v1/deliveries/{delivery_id(mine, ep['id'])}/resend")
        assert gone.status == 409 and gone.body["error"]["code"] == "payload_not_retained"

    # retention, by default 30 days (pinned: the issue asks for that default): a sweep 29 days
    # on keeps the payload, 31 days on forgets it and keeps the log rows
    assert Settings.model_fields["payload_retention_days"].default == 30
    settings = Settings(database_url=url)
    assert settings.payload_retention_days == 30
    engine = make_engine(url)
    try:
        log_store = MessageLog(engine)
        assert await purge_message_log(log_store, settings, utcnow()) == (0, 0)
        assert await purge_message_log(
            log_store, settings, utcnow() + timedelta(days=29)) == (0, 0)
        kept = await log_store.get_event(other)
        assert kept is not None and kept[0].payload is not None
        assert await purge_message_log(
            log_store, settings, utcnow() + timedelta(days=31)) == (1, 0)
        found = await log_store.get_event(other)
        assert found is not None and found[0].payload is None
        # the purge forgets who the row was about too: bob's export is empty, his row nameless
        assert await log_store.subject_events("bob") == []
        assert await subjects(url, other) == {other: None}
        assert await purge_message_log(
            log_store, settings, utcnow() + timedelta(days=91)) == (0, 2)
        assert await log_store.get_event(other) is None
    finally:
        await engine.dispose()


async def test_no_payload_is_stored_when_retention_is_zero(
    amqp_url: str, tmp_path: Path, broker: AbstractRobustConnection
) -> None:
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/ingest.db",
                              payload_retention_days=0) as ingest:
        await ingest.endpoint(["order.*"])
        event_id = await publish(ingest, "order.paid", {"order": 1, "user_id": "carol"})
        await logged(ingest, event_id)
        detail = (await ingest.call("GET", f"/v1/events/{event_id}")).body
        assert detail["payload"] is None and len(detail["deliveries"]) == 1
        # no payload, no link to its subject either: the log names no one
        export = (await ingest.call("GET", "/v1/subjects/carol/export")).body
        assert export["events"] == []
        assert await subjects(f"sqlite:///{tmp_path}/ingest.db", event_id) == {event_id: None}


@pytest.fixture
async def own_broker(vhost_url: tuple[str, str]) -> AsyncIterator[AbstractRobustConnection]:
    """A connection to a virtual host of the test's own, its topology declared: an audit
    service started on the suite's shared one would first store every fact earlier tests
    left in its queue (20+ s late in a full run)."""
    connection = await aio_pika.connect_robust(vhost_url[0])
    async with connection.channel() as channel:
        await declare(channel)
    yield connection
    await connection.close()


async def test_erasing_a_subject_in_the_audit_log_erases_its_payloads_in_ingest(
    vhost_url: tuple[str, str], database_url: str, tmp_path: Path,
    own_broker: AbstractRobustConnection
) -> None:
    """GDPR Art. 17 across services: the audit service's erasure (its HTTP API) announces
    ``subject.erase`` on the control exchange; ingest's message log drops the payloads. A bad
    control message is parked, and the consumer goes on."""
    from urllib.parse import quote

    import aiohttp
    from pydantic import SecretStr

    from services.audit.app import start as start_audit
    from services.audit.settings import AuditSettings
    from tests.conftest import free_port
    from tests.integration.test_ingest_api import ADMIN

    amqp_url, broker = vhost_url[0], own_broker
    publisher = await Publisher.open(broker)
    subject = f"dora-{uuid.uuid4().hex[:8]}@example.com"
    audit = AuditSettings(host="127.0.0.1", port=free_port(),
                          database_url=f"sqlite:///{tmp_path}/audit.db",
                          amqp_url=SecretStr(amqp_url), admin_token=SecretStr(ADMIN),
                          shutdown_grace=1.0, mode="development")  # keys generated in its DB
    stop_audit = await start_audit(audit)
    try:
        async with running_ingest(amqp_url, database_url) as ingest:
            await ingest.endpoint(["order.*"])
            mine = await publish(ingest, "order.paid", {"order": 1, "user_id": subject})
            kept = await publish(ingest, "order.paid", {"order": 2, "user_id": "someone-else"})
            await logged(ingest, mine, kept)
            # a control message that is no erasure request: parked, not retried
            await publisher.publish(topology.CONTROL_EXCHANGE, "subject.erase", b"{}")

            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{audit.port}/v1/audit/subjects/"
                    f"{quote(subject, safe='')}/erasure",
                    headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
                assert resp.status == 200, await resp.text()

            async def erased() -> bool:
                reply = await ingest.call("GET", f"/v1/events/{mine}")
                return bool(reply.body["payload"] is None)

            await wait_for(erased, timeout=15)
            export = await ingest.call("GET", f"/v1/subjects/{quote(subject, safe='')}/export")
            assert export.body["events"] == []
            other = await ingest.call("GET", f"/v1/events/{kept}")
            assert other.body["payload"]["data"]["user_id"] == "someone-else"
            assert await subjects(database_url, mine, kept) == {mine: None,
                                                                kept: "someone-else"}

            async def parked() -> bool:
                async with broker.channel() as channel:
                    queue = await channel.declare_queue(
                        topology.dead_queue(topology.INGEST_CONTROL), passive=True)
                    return (queue.declaration_result.message_count or 0) >= 1

            await wait_for(parked, timeout=15)
            async with broker.channel() as channel:
                await (await channel.get_queue(
                    topology.dead_queue(topology.INGEST_CONTROL))).purge()
    finally:
        await stop_audit()


@pytest.mark.parametrize("direct", [False, True], ids=["engine", "direct"])
async def test_attempts_in_one_batch_out_of_order_and_repeated(database_url: str,
                                                               direct: bool) -> None:
    """The set-based attempt writer: one batch with a delivery the log never saw fanned out,
    attempts out of order and a repeated one; then a late, older attempt alone. On each
    backend, through the engine and through the direct writer ingest uses."""
    from datetime import UTC, datetime

    from services.ingest.app import MIGRATIONS
    from services.ingest.decisions.messages import LogAttempt, LogDelivery
    from shared.db import direct_writer, migrate

    at = datetime(2026, 12, 6, 12, tzinfo=UTC)

    def attempt(delivery: str, n: int, outcome: str, retry: bool = False) -> LogAttempt:
        return LogAttempt(delivery_id=delivery, endpoint_id="ep_1", event_id="evt_1",
                          url="https://r.example/h", attempt=n, at=at + timedelta(seconds=n),
                          outcome=outcome,  # type: ignore[arg-type]  # a literal
                          status_code=200 if outcome == "delivered" else 500, latency_ms=1.0,
                          next_retry_at=at + timedelta(minutes=n) if retry else None)

    engine = make_engine(database_url)
    writer = direct_writer(engine) if direct else None
    assert (writer is not None) == direct
    try:
        await migrate(engine, MIGRATIONS)
        log_store = MessageLog(engine, writer)
        await log_store.record([], [LogDelivery("dlv_known", "evt_1", "ep_1", "u", "pending",
                                                at)])
        await log_store.record_attempts([
            attempt("dlv_known", 2, "delivered"), attempt("dlv_known", 1, "failed", True),
            attempt("dlv_known", 2, "delivered"), attempt("dlv_new", 1, "failed", True),
        ], at)
        known = await log_store.get_delivery("dlv_known")
        new = await log_store.get_delivery("dlv_new")
        assert known is not None and new is not None
        assert (known.status, known.attempts_count, known.last_attempt) == ("delivered", 2, 2)
        assert known.next_retry_at is None
        assert (new.status, new.attempts_count, new.next_retry_at) == (
            "pending", 1, at + timedelta(minutes=1))
        # a late fact of an older attempt: counted, the status stays
        await log_store.record_attempts([attempt("dlv_new", 3, "delivered")], at)
        await log_store.record_attempts([attempt("dlv_new", 2, "failed", True)], at)
        new = await log_store.get_delivery("dlv_new")
        assert new is not None
        assert (new.status, new.attempts_count, new.last_attempt) == ("delivered", 3, 3)
    finally:
        if writer is not None:
            await writer.close()
        await engine.dispose()


async def test_the_direct_writer_stores_the_engines_rows(database_pair: tuple[str, str]
                                                         ) -> None:
    """Ingest writes the message log with plain sqlite3 on SQLite (shared.db.DirectSQLite)
    and plain asyncpg on PostgreSQL (shared.db.DirectPostgres); the same events, deliveries
    and attempts written through the engine into another database read back identical,
    column for column, through the engine (which every read uses)."""
    from datetime import UTC, datetime

    from services.ingest.app import MIGRATIONS
    from services.ingest.decisions.messages import LogAttempt, LogDelivery, LogEvent
    from services.ingest.message_log import log_attempts, log_deliveries
    from shared.db import direct_writer, migrate

    at = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
    events = [LogEvent("evt_1", "user.created", at, "en", "alice",
                       {"event": "user.created", "data": {"user_id": "alice", "n": [1, 2.5]},
                        "note": "é ✓", "none": None}, "ten_1"),
              LogEvent("evt_2", "user.deleted", at, None, None, None, None)]
    deliveries = [LogDelivery("dlv_1", "evt_1", "ep_1", "https://r.example/h", "pending", at),
                  LogDelivery("dlv_2", "evt_2", "ep_1", "https://r.example/h", "held", at)]

    def attempt(delivery: str, n: int, outcome: str, retry: bool = False) -> LogAttempt:
        return LogAttempt(delivery_id=delivery, endpoint_id="ep_1", event_id="evt_1",
                          url="https://r.example/h", attempt=n, at=at + timedelta(seconds=n),
                          outcome=outcome,  # type: ignore[arg-type]  # a literal
                          status_code=200 if outcome == "delivered" else 500,
                          latency_ms=1.25, request_headers={"content-type": "application/json"},
                          response_headers={"x-ünï": "1"}, response_excerpt="ok ✓",
                          error=None if outcome == "delivered" else "HTTP 500",
                          next_retry_at=at + timedelta(minutes=n) if retry else None)

    attempts = [attempt("dlv_1", 1, "failed", True), attempt("dlv_1", 2, "delivered"),
                attempt("dlv_unseen", 1, "failed", True), attempt("dlv_2", 1, "failed")]
    tables = (log_events, log_deliveries, log_attempts)
    stored: list[list[list[Any]]] = []
    for direct, url in zip((False, True), database_pair, strict=True):
        engine = make_engine(url)
        writer = direct_writer(engine) if direct else None
        assert (writer is not None) == direct
        try:
            await migrate(engine, MIGRATIONS)
            log_store = MessageLog(engine, writer)
            await log_store.record(events, deliveries)
            await log_store.record(events, deliveries)  # a redelivery changes nothing
            await log_store.record_attempts(attempts[:2], at)
            await log_store.record_attempts(attempts, at + timedelta(seconds=5))
            # a newer attempt, then an older one seen late: counted, the status unchanged
            await log_store.record_attempts([attempt("dlv_2", 3, "delivered")],
                                            at + timedelta(seconds=6))
            await log_store.record_attempts([attempt("dlv_2", 2, "failed", True)],
                                            at + timedelta(seconds=7))
            async with engine.connect() as conn:
                stored.append([
                    [tuple(row) for row in await conn.execute(
                        sa.select(table).order_by(*table.primary_key.columns))]
                    for table in tables])
        finally:
            if writer is not None:
                await writer.close()
            await engine.dispose()
    engine_rows, direct_rows = stored
    assert [len(rows) for rows in direct_rows] == [2, 3, 6]
    assert direct_rows == engine_rows


async def test_a_test_event_of_a_type_goes_to_one_endpoint_only(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, ((topology.WORK_EXCHANGE, topology.SIGN),
                                        (topology.AUDIT_EXCHANGE, "event.accepted")))
    async with running_ingest(amqp_url, database_url) as ingest:
        target = await ingest.endpoint(["order.*"], url="https://target.example.com/h")
        other = await ingest.endpoint(["template.#"], url="https://other.example.com/h")
        reply = await ingest.call("POST", f"/v1/endpoints/{target['id']}/test",
                                  json={"event": "template.created", "lang": "fr"})
        assert reply.status == 202, reply.text
        event_id = reply.body["id"]
        assert reply.body["delivery_id"] == delivery_id(event_id, target["id"])
        await obs.wait(lambda _: bool(obs.jobs(event_id))
                       and bool(obs.facts("event.accepted", event_id=event_id)))
        [job] = obs.jobs(event_id)  # the endpoint subscribed to the type gets nothing
        assert job["endpoint_id"] == target["id"] and job["url"] == target["url"]
        data = job["event"]["data"]
        assert data["test"] is True and data["template_id"] == "example-template_id"
        assert set(data["details"]) == {"fr", "en", "ar", "tzm"}  # completed from the catalog
        [fact] = obs.facts("event.accepted", event_id=event_id)
        assert fact["actor"] == "tok_bootstrap_admin" and fact["details"]["test"] is True
        detail = (await ingest.call("GET", f"/v1/events/{event_id}")).body
        assert [d["endpoint_id"] for d in detail["deliveries"]] == [target["id"]]
        assert other["id"] not in reply.text

        default = await ingest.call("POST", f"/v1/endpoints/{target['id']}/test", json={})
        assert default.status == 202 and default.body["event"] == "dihya.test"
        missing = await ingest.call("POST", "/v1/endpoints/ep_nope/test", json={})
        assert missing.status == 404
        await ingest.call("PATCH", f"/v1/endpoints/{target['id']}", json={"status": "disabled"})
        off = await ingest.call("POST", f"/v1/endpoints/{target['id']}/test", json={})
        assert off.status == 409 and off.body["error"]["code"] == "endpoint_disabled"
        bad = await ingest.call("POST", f"/v1/endpoints/{other['id']}/test",
                                json={"event": "Not A Type"})
        assert bad.status == 422
