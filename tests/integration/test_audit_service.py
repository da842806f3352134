"""Audit service against the real RabbitMQ and each real store (SQLite file, PostgreSQL).

The service runs in-process on a free port; facts go through the audit exchange exactly as the
other services publish them. Each test purges the audit queues first: the broker's vhost is
shared by the whole test session.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import jsonschema
import orjson
import pytest
import sqlalchemy as sa
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydantic import SecretStr

from services.audit.app import start
from services.audit.decisions import encode_cursor
from services.audit.settings import AuditSettings
from shared import topology
from shared.broker import FactPublisher, Publisher, connect, declare
from shared.contracts import AuditFact, AuditFactBatch, TokenGrant, decode_facts, utcnow
from shared.db import make_engine
from shared.openapi import component
from shared.runtime import Stop
from shared.web import hash_token
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

ADMIN = "admin-" + uuid.uuid4().hex
BASE = datetime(2001, 1, 1, tzinfo=UTC)  # facts of these tests happen in 2001: easy to window
KINDS = ("event.accepted", "delivery.attempted", "delivery.dead_lettered")
QUEUES = (topology.AUDIT_FACTS, topology.AUDIT_CONTROL,
          topology.dead_queue(topology.AUDIT_FACTS), topology.dead_queue(topology.AUDIT_CONTROL))


@dataclass
class Broker:
    connection: AbstractRobustConnection
    channel: AbstractChannel
    publisher: Publisher

    async def send_facts(self, facts: list[AuditFact]) -> None:
        await asyncio.gather(*(
            self.publisher.send(topology.AUDIT_EXCHANGE, f.kind, f) for f in facts
        ))

    async def ready(self, queue: str = topology.AUDIT_FACTS) -> int:
        """Messages ready in ``queue``, counted by fetching them unacked and handing them back.

        RabbitMQ 3.10 answers 0 for a quorum queue's message count in ``queue.declare-ok``, so
        the count is taken the hard way. Each call adds one to those messages' delivery count:
        call it for a check, never in a polling loop (the delivery limit would park them).
        """
        channel = await self.connection.channel()
        try:
            target = await channel.get_queue(queue, ensure=False)
            count = 0
            while await target.get(fail=False, timeout=5) is not None:
                count += 1
            return count
        finally:
            await channel.close()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    connection = await connect(amqp_url, service="audit-tests")
    channel = await connection.channel()
    await declare(channel)
    for name in QUEUES:
        await (await channel.get_queue(name, ensure=False)).purge()
    publisher = await Publisher.open(connection)
    yield Broker(connection, channel, publisher)
    await publisher.close()
    await connection.close()


@dataclass
class Audit:
    base: str
    session: aiohttp.ClientSession
    stop: Stop

    async def get(self, path: str, token: str | None = ADMIN, **params: str
                  ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.base + path, params=params, headers=headers) as resp:
            body = await resp.read()
            assert resp.content_type == "application/json" or path == "/metrics", body
            return resp.status, orjson.loads(body) if path != "/metrics" else body.decode()

    async def records(self, token: str = ADMIN, limit: str = "500", **filters: str
                      ) -> list[dict[str, Any]]:
        """Every record matching ``filters``, walking all pages."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {**filters, "limit": limit} | ({"cursor": cursor} if cursor else {})
            status, body = await self.get("/v1/audit/records", token, **params)
            assert status == 200, body
            found += body["records"]
            cursor = body["next_cursor"]
            if cursor is None:
                return found
            assert len(body["records"]) == int(limit)

    async def count(self, **filters: str) -> int:
        return len(await self.records(**filters))


def settings_for(amqp_url: str, database_url: str, **extra: Any) -> AuditSettings:
    # acceptance_wait 0: these facts are made up, most events have no acceptance; the wait
    # for it is tested in test_audit_gdpr.py
    # development mode: signing keys generated in the database (production refuses to start
    # without them: test_audit_heads.py)
    values: dict[str, Any] = {"batch_wait": 0.01, "shutdown_grace": 2.0, "acceptance_wait": 0,
                              "mode": "development", **extra}
    return AuditSettings(
        host="127.0.0.1", port=free_port(), database_url=database_url,
        amqp_url=SecretStr(amqp_url), admin_token=SecretStr(ADMIN), **values,
    )


@contextlib.asynccontextmanager
async def running(settings: AuditSettings) -> AsyncIterator[Audit]:
    stop = await start(settings)
    try:
        async with aiohttp.ClientSession() as session:
            yield Audit(f"http://{settings.host}:{settings.port}", session, stop)
    finally:
        await stop()


@pytest.fixture
async def audit(amqp_url: str, database_url: str, broker: Broker) -> AsyncIterator[Audit]:
    async with running(settings_for(amqp_url, database_url)) as service:
        yield service


def make_facts(n: int, run: str) -> list[AuditFact]:
    """Odd facts are about a data subject (``user_<run>_<i % 4>``), in events of that subject
    alone: a fact without a subject of its own is about the subject of its event."""
    return [
        AuditFact(
            id=f"fct_{run}_{i:04d}", kind=KINDS[i % 3], occurred_at=BASE + timedelta(seconds=i),
            service="deliverer",
            event_id=f"evt_{run}_u{i % 4}" if i % 2 else f"evt_{run}_{i % 7}",
            event_type="incident.security" if i % 10 == 0 else "template.created",
            endpoint_id=f"ep_{run}_{i % 5}", delivery_id=f"dlv_{run}_{i % 11}",
            # one attempt per (delivery, attempt) pair: a second delivery.attempted of a pair
            # would be another POST of it, recorded with details.repeat — by write order
            attempt=1 + i % 4 + 4 * (i // 44), url="https://example.test/hook",
            outcome="delivered" if i % 3 == 0 else "failed", status_code=200 + i % 3,
            duration_ms=10.25 + i, details={"subject": f"user_{run}_{i % 4}"} if i % 2 else {},
            tenant=f"ten_{run}_{i % 3}" if i % 6 else None,  # every sixth: platform-wide
        )
        for i in range(n)
    ]


def ids(records: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in records}


def window(start: int, end: int) -> dict[str, str]:
    return {"since": (BASE + timedelta(seconds=start)).isoformat(),
            "until": (BASE + timedelta(seconds=end)).isoformat()}


# ------------------------------------------------------------------ query API

async def test_facts_are_recorded_filtered_and_paginated(audit: Audit, broker: Broker) -> None:
    run = uuid.uuid4().hex[:8]
    facts = make_facts(300, run)
    await broker.send_facts(facts)

    async def all_stored() -> bool:
        return await audit.count(**window(0, 300)) == 300

    await wait_for(all_stored, timeout=30)

    # Every page walked: stable seq order, no duplicate, no gap.
    walked = await audit.records(limit="37")
    seqs = [r["seq"] for r in walked]
    assert seqs == list(range(1, len(walked) + 1))
    assert ids(walked) >= {f.id for f in facts}
    # newest first (what the console shows): the same records, walked backwards, with filters
    backwards = await audit.records(limit="37", order="desc")
    assert [r["seq"] for r in backwards] == seqs[::-1]
    forward = await audit.records(limit="7", **window(0, 20))
    newest = await audit.records(limit="7", order="desc", **window(0, 20))
    assert len(newest) == 20 and [r["id"] for r in newest] == [r["id"] for r in forward][::-1]

    by_id = {r["id"]: r for r in walked}
    sample = facts[13]
    record = by_id[sample.id]
    assert record["kind"] == sample.kind and record["event_id"] == sample.event_id
    assert record["occurred_at"] == "2001-01-01T00:00:13.000000Z"
    # About a data subject: subject and details are sealed (hashed as ciphertext) and shown
    # opened in `personal`, which is not hashed.
    assert (record["subject"], record["details"]) == (None, {})
    assert record["subject_ref"].startswith("sbj_") and record["sealed"].startswith("v1.")
    assert record["personal"] == {"subject": f"user_{run}_1",
                                  "details": {"subject": f"user_{run}_1"}}
    assert "user_" not in record["sealed"]
    plain = by_id[facts[12].id]
    assert plain["details"] == {} and plain["subject"] is None
    assert not {"subject_ref", "sealed", "personal", "tenant"} & set(plain)
    assert record["tenant"] == f"ten_{run}_1"  # hashed with the record (verified below)
    assert (record["attempt"], record["status_code"], record["duration_ms"]) == (2, 201, 23.25)
    assert len(record["hash"]) == len(record["prev_hash"]) == 64

    def expect(pred: Any) -> set[str]:
        return {f.id for f in facts if pred(f)}

    mine = window(0, 300)
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({"event_id": f"evt_{run}_3"}, expect(lambda f: f.event_id == f"evt_{run}_3")),
        ({"endpoint_id": f"ep_{run}_2"}, expect(lambda f: f.endpoint_id == f"ep_{run}_2")),
        ({"delivery_id": f"dlv_{run}_10"}, expect(lambda f: f.delivery_id == f"dlv_{run}_10")),
        ({"kind": "delivery.dead_lettered", **mine},
         expect(lambda f: f.kind == "delivery.dead_lettered")),
        ({"outcome": "delivered", **mine}, expect(lambda f: f.outcome == "delivered")),
        ({"event_type": "incident.security", **mine},
         expect(lambda f: f.event_type == "incident.security")),
        ({"subject": f"user_{run}_3"},
         expect(lambda f: f.details.get("subject") == f"user_{run}_3")),
        (window(100, 150), {f.id for f in facts[100:150]}),
        ({"tenant": f"ten_{run}_2"}, expect(lambda f: f.tenant == f"ten_{run}_2")),
        ({"event_id": f"evt_{run}_1", "kind": "event.accepted"},
         expect(lambda f: f.event_id == f"evt_{run}_1" and f.kind == "event.accepted")),
    ]
    for filters, expected in cases:
        assert expected, filters
        found = await audit.records(limit="9", **filters)
        assert ids(found) == expected, filters
        assert [r["seq"] for r in found] == sorted(r["seq"] for r in found)

    status, body = await audit.get("/v1/audit/verify")
    assert status == 200 and body["ok"] and body["records"] == len(walked)

    # The OpenAPI document describes exactly what the API returns.
    status, doc = await audit.get("/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"] == "3.1.0"
    assert set(doc["components"]["schemas"]["AuditRecord"]["properties"]) == set(record)
    # ... and every record served (sealed ones too), and the verify report, validate against it
    for each in walked:
        jsonschema.validate(each, component(doc, "AuditRecord"))
    jsonschema.validate(body, component(doc, "VerifyReport"))


async def test_bad_queries_get_422_naming_the_parameter(audit: Audit) -> None:
    for params, field in [
        ({"since": "yesterday"}, "since"), ({"until": "2001-02-30T00:00:00Z"}, "until"),
        ({"limit": "0"}, "limit"), ({"limit": "100000"}, "limit"), ({"cursor": "%%"}, "cursor"),
        ({"kind": "nope"}, "kind"), ({"colour": "red"}, "colour"),
        ({"event_id": "a\x00b"}, "event_id"),
    ]:
        status, body = await audit.get("/v1/audit/records", **params)
        assert status == 422, (params, body)
        assert body["error"]["code"] == "invalid_query"
        assert [f["field"] for f in body["error"]["fields"]] == [field]
    status, body = await audit.get("/v1/audit/records", cursor=encode_cursor(10**9))
    assert (status, body) == (200, {"records": [], "next_cursor": None})
    status, body = await audit.get("/v1/audit/nothing-here")
    assert status == 404 and "error" in body


async def test_ops_routes(audit: Audit, broker: Broker) -> None:
    status, body = await audit.get("/healthz", token=None)
    assert (status, body) == (200, {"status": "ok"})
    status, body = await audit.get("/readyz", token=None)
    assert status == 200 and body == {"ready": True, "checks": {"broker": True, "storage": True,
                                                        "consuming": True}}
    await broker.send_facts(make_facts(3, uuid.uuid4().hex[:8]))
    await wait_for(lambda: audit.count(**window(0, 3)), timeout=20)
    status, text = await audit.get("/metrics", token=None)
    assert status == 200
    assert "dihya_audit_records_written_total" in text
    assert "dihya_audit_write_latency_seconds_bucket" in text
    assert "dihya_audit_batch_size_bucket" in text


# ------------------------------------------------------------------ consuming

async def test_a_fact_published_twice_is_recorded_once(audit: Audit, broker: Broker) -> None:
    run = uuid.uuid4().hex[:8]
    first, sentinel, twin, sentinel2 = make_facts(4, run)

    await broker.send_facts([first])
    await wait_for(lambda: audit.count(event_id=first.event_id or ""), timeout=20)
    await broker.send_facts([first])  # a redelivery in a later batch
    await broker.send_facts([sentinel])
    await wait_for(lambda: audit.count(event_id=sentinel.event_id or ""), timeout=20)

    await broker.send_facts([twin, twin])  # the same batch, most likely
    await broker.send_facts([sentinel2])
    await wait_for(lambda: audit.count(event_id=sentinel2.event_id or ""), timeout=20)

    walked = await audit.records()
    assert [r["id"] for r in walked].count(first.id) == 1
    assert [r["id"] for r in walked].count(twin.id) == 1
    assert [r["seq"] for r in walked] == list(range(1, len(walked) + 1))
    status, body = await audit.get("/v1/audit/verify")
    assert status == 200 and body["ok"] and body["records"] == len(walked) == 4


async def dead_letters(broker: Broker, queue: str, marker: str) -> list[Any]:
    """Parked messages of ``queue`` carrying our marker header (others are left in place)."""
    channel = await broker.connection.channel()
    try:
        dead = await channel.get_queue(topology.dead_queue(queue), ensure=False)
        mine = []
        while (message := await dead.get(fail=False, timeout=5)) is not None:
            if (message.headers or {}).get("x-test-marker") == marker:
                mine.append(message)
                await message.ack()
        return mine
    finally:
        await channel.close()  # unacked others go back


async def test_invalid_messages_are_parked_and_consuming_goes_on(
    audit: Audit, broker: Broker
) -> None:
    run = uuid.uuid4().hex[:8]
    marker = {"x-test-marker": run}
    await broker.publisher.publish(topology.AUDIT_EXCHANGE, "event.accepted", b"{oops",
                                   headers=marker)
    await broker.publisher.publish(
        topology.AUDIT_EXCHANGE, "event.accepted",
        orjson.dumps({"type": "dihya.audit_fact.v1", "id": "fct_x", "kind": "event.accepted"}),
        headers=marker)
    await broker.publisher.publish(
        topology.AUDIT_EXCHANGE, "event.accepted",
        orjson.dumps({**make_facts(1, run)[0].model_dump(mode="json"), "error": "nul\x00"}),
        headers=marker)
    after = make_facts(1, run)[0].model_copy(update={"id": f"fct_{run}_after"})
    await broker.send_facts([after])
    await wait_for(lambda: audit.count(event_id=after.event_id or ""), timeout=20)

    parked: list[Any] = []

    async def all_parked() -> bool:
        parked.extend(await dead_letters(broker, topology.AUDIT_FACTS, run))
        return len(parked) == 3

    await wait_for(all_parked, timeout=20)
    reasons = sorted(m.headers[topology.REASON_HEADER] for m in parked)
    assert reasons == ["invalid_json", "schema_invalid", "schema_invalid"]
    assert all(m.headers[topology.SOURCE_HEADER] == topology.AUDIT_FACTS for m in parked)
    assert {m.body for m in parked} >= {b"{oops"}
    assert ids(await audit.records()) == {after.id}


async def test_a_batch_is_stored_and_its_one_unstorable_fact_parked_alone(
    audit: Audit, broker: Broker
) -> None:
    """A batch (as ingest and the deliverer publish them) with one fact the store cannot keep
    exactly: its neighbours are recorded, that fact alone is parked with its reason."""
    run = uuid.uuid4().hex[:8]
    good = make_facts(3, run)
    bad = good[1].model_copy(update={"id": f"fct_{run}_nul", "error": "nul\x00"})
    batch = AuditFactBatch(facts=[good[0], bad, good[2]])
    await broker.publisher.send(topology.AUDIT_EXCHANGE, "delivery.attempted", batch,
                                headers={"x-test-marker": run})
    await wait_for(lambda: _has(audit, {good[0].id, good[2].id}), timeout=20)

    parked: list[Any] = []

    async def one_parked() -> bool:
        parked.extend(await dead_letters(broker, topology.AUDIT_FACTS, run))
        return len(parked) == 1

    await wait_for(one_parked, timeout=20)
    assert parked[0].headers[topology.REASON_HEADER] == "schema_invalid"
    assert "NUL" in str(parked[0].headers[topology.ERROR_HEADER])
    assert AuditFact.model_validate_json(parked[0].body).id == bad.id  # the fact, not the batch
    assert ids(await audit.records()) == {good[0].id, good[2].id}


async def _has(audit: Audit, wanted: set[str]) -> bool:
    return wanted <= ids(await audit.records())


async def test_a_fact_publisher_groups_the_facts_sent_together(
    audit: Audit, broker: Broker
) -> None:
    """FactPublisher: 50 facts sent at once travel in fewer messages, and every one of them is
    recorded; each send returns only once its fact is confirmed."""
    run = uuid.uuid4().hex[:8]
    facts = [f.model_copy(update={"kind": "delivery.attempted"}) for f in make_facts(50, run)]
    seen: list[bytes] = []

    async def keep(message: AbstractIncomingMessage) -> None:
        seen.append(message.body)

    tap = await broker.channel.declare_queue(exclusive=True, auto_delete=True)
    await tap.bind(topology.AUDIT_EXCHANGE, "delivery.attempted")
    await tap.consume(keep, no_ack=True)
    publisher = FactPublisher(broker.publisher, linger=0.05)
    await asyncio.gather(*(publisher.send(f) for f in facts))
    await publisher.close()
    await wait_for(lambda: _has(audit, {f.id for f in facts}), timeout=20)
    await wait_for(lambda: sum(len(decode_facts(b)) for b in seen) == 50, timeout=10)
    assert len(seen) < 50
    assert all(AuditFactBatch.model_validate_json(b).facts for b in seen)


# ------------------------------------------------------------------ access control

def grant(token_id: str, token: str, role: str, *, revoked: bool = False,
          at: datetime | None = None) -> TokenGrant:
    return TokenGrant.model_validate({
        "token_id": token_id, "role": role, "token_hash": hash_token(token),
        "revoked": revoked, "issued_at": at or utcnow(),
    })


async def send_grant(broker: Broker, g: TokenGrant) -> None:
    key = "token.revoked" if g.revoked else "token.created"
    await broker.publisher.send(topology.CONTROL_EXCHANGE, key, g)


async def test_token_roles_and_revocation(audit: Audit, broker: Broker) -> None:
    run = uuid.uuid4().hex[:8]
    auditor, viewer, other = (f"tok-{role}-{uuid.uuid4().hex}" for role in "avo")
    t0 = utcnow()
    await send_grant(broker, grant(f"tok_a_{run}", auditor, "auditor", at=t0))
    await send_grant(broker, grant(f"tok_v_{run}", viewer, "viewer", at=t0))

    async def status_of(token: str | None, path: str = "/v1/audit/records") -> int:
        return (await audit.get(path, token))[0]

    await wait_for(lambda: _eq(status_of(auditor), 200), timeout=20)
    await wait_for(lambda: _eq(status_of(viewer), 403), timeout=20)

    # Refusals are audited: who (token id, never the token), where, why.
    async def refusals() -> list[dict[str, Any]]:
        return await audit.records(kind="access.refused")

    await wait_for(lambda: _len_at_least(refusals(), 1), timeout=20)  # the viewer's 403
    seen = max(r["seq"] for r in await refusals())
    assert await status_of(auditor, "/v1/audit/verify") == 200
    assert await status_of(viewer) == 403
    assert await status_of(viewer, "/v1/audit/verify") == 403
    assert await status_of(None) == 401
    assert await status_of("not-a-token") == 401
    assert await status_of(ADMIN) == 200

    async def new_refusals() -> list[dict[str, Any]]:
        return [r for r in await refusals() if r["seq"] > seen]

    await wait_for(lambda: _len_at_least(new_refusals(), 4), timeout=20)
    refused = await new_refusals()
    assert [(r["actor"], r["reason"], r["details"]["path"]) for r in refused] == [
        (f"tok_v_{run}", "forbidden", "/v1/audit/records"),
        (f"tok_v_{run}", "forbidden", "/v1/audit/verify"),
        (None, "unauthenticated", "/v1/audit/records"),
        (None, "unauthenticated", "/v1/audit/records"),
    ]
    assert all(r["service"] == "audit" and r["details"]["method"] == "GET" for r in refused)
    dump = orjson.dumps(await audit.records()).decode()
    for token in (auditor, viewer, ADMIN, "not-a-token"):
        assert token not in dump

    # Revoked → 401; a late, older "created" grant does not revive it (revocation is final).
    await send_grant(broker, grant(f"tok_a_{run}", auditor, "auditor", revoked=True,
                                   at=t0 + timedelta(seconds=1)))
    await wait_for(lambda: _eq(status_of(auditor), 401), timeout=20)
    await send_grant(broker, grant(f"tok_a_{run}", auditor, "auditor",
                                   at=t0 + timedelta(seconds=2)))
    await send_grant(broker, grant(f"tok_o_{run}", other, "auditor"))
    await wait_for(lambda: _eq(status_of(other), 200), timeout=20)
    assert await status_of(auditor) == 401

    # A grant that is not a TokenGrant is parked, and the control consumer goes on.
    await broker.publisher.publish(topology.CONTROL_EXCHANGE, "token.created", b"[]",
                                   headers={"x-test-marker": run})
    parked: list[Any] = []

    async def found_parked() -> bool:
        parked.extend(await dead_letters(broker, topology.AUDIT_CONTROL, run))
        return bool(parked)

    await wait_for(found_parked, timeout=20)
    assert parked[0].headers[topology.REASON_HEADER] == "schema_invalid"


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _len_at_least(value: Any, n: int) -> bool:
    return len(await value) >= n


# ------------------------------------------------------------------ tamper evidence

async def sql(database_url: str, *statements: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def drop_triggers(database_url: str) -> list[str]:
    if database_url.startswith("postgresql"):
        return ["DROP TRIGGER audit_records_append_only ON records"]
    return ["DROP TRIGGER audit_records_no_update", "DROP TRIGGER audit_records_no_delete"]


async def test_tampering_is_detected_by_verify(
    audit: Audit, broker: Broker, database_url: str
) -> None:
    facts = make_facts(20, uuid.uuid4().hex[:8])
    await broker.send_facts(facts)
    await wait_for(lambda: _eq(audit.count(**window(0, 20)), 20), timeout=20)
    status, body = await audit.get("/v1/audit/verify")
    assert (status, body["ok"], body["records"], body["first_bad_seq"]) == (200, True, 20, None)
    head = body["head_hash"]

    # The store itself refuses updates and deletes...
    for statement in ("UPDATE records SET outcome = 'forged' WHERE seq = 7",
                      "DELETE FROM records WHERE seq = 3"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await sql(database_url, statement)

    # ...and when someone with DDL rights forces one, the chain names the record.
    await sql(database_url, *drop_triggers(database_url),
              "UPDATE records SET outcome = 'forged' WHERE seq = 7")
    status, body = await audit.get("/v1/audit/verify")
    assert status == 200
    assert (body["ok"], body["records"], body["first_bad_seq"], body["problem"]) == (
        False, 20, 7, "hash_mismatch")

    await sql(database_url, "DELETE FROM records WHERE seq = 3")
    status, body = await audit.get("/v1/audit/verify")
    assert (body["ok"], body["records"], body["first_bad_seq"], body["problem"]) == (
        False, 19, 4, "broken_link")
    assert body["head_hash"] == head


# ------------------------------------------------------------------ at-least-once

@contextlib.asynccontextmanager
async def writes_blocked(database_url: str) -> AsyncIterator[Any]:
    """Hold a lock that lets readers in and keeps every writer of ``records`` waiting."""
    if database_url.startswith("postgresql"):
        conn = await asyncpg.connect(database_url)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE records IN EXCLUSIVE MODE")
        try:
            yield lambda: conn.fetchval("SELECT count(*) FROM records")
        finally:
            await tx.rollback()
            await conn.close()
    else:
        with _sqlite_exclusive(database_url.removeprefix("sqlite:///")) as lite:

            async def count() -> int:
                return int(lite.execute("SELECT count(*) FROM records").fetchone()[0])

            yield count


@contextlib.contextmanager
def _sqlite_exclusive(path: str) -> Iterator[sqlite3.Connection]:
    lite = sqlite3.connect(path, isolation_level=None)
    lite.execute("BEGIN EXCLUSIVE")
    try:
        yield lite
    finally:
        lite.execute("ROLLBACK")
        lite.close()


async def awaiting_commit(service: Audit) -> float:
    """The service's count of facts held unacked until their batch commits (its /metrics)."""
    _, text = await service.get("/metrics", token=None)
    for line in text.splitlines():
        if line.startswith("dihya_audit_facts_awaiting_commit "):
            return float(line.split()[1])
    raise AssertionError("gauge missing from /metrics")


async def refuses_connections(service: Audit) -> bool:
    try:
        await service.get("/healthz", token=None)
    except aiohttp.ClientConnectionError:
        return True
    return False


async def test_nothing_is_acked_before_it_is_stored(
    amqp_url: str, database_url: str, broker: Broker
) -> None:
    facts = make_facts(40, uuid.uuid4().hex[:8])
    settings = settings_for(amqp_url, database_url, shutdown_grace=0.5)

    async with running(settings) as service:
        async with writes_blocked(database_url) as stored:
            await broker.send_facts(facts)
            # Every fact reached the service and waits for a commit that cannot happen...
            await wait_for(lambda: _eq(awaiting_commit(service), len(facts)), timeout=20)
            assert await stored() == 0
            # ...so stopping hands every one back: none was acked without its record. (The
            # HTTP server closes after the consumers have settled their messages.)
            stopping = asyncio.ensure_future(service.stop())
            await wait_for(lambda: refuses_connections(service), timeout=20)
            assert await broker.ready() == len(facts)
            assert await stored() == 0
        await asyncio.wait_for(stopping, 60)

    # Started again with a working store: every fact is stored once, and acked.
    async with running(settings_for(amqp_url, database_url)) as service:
        await wait_for(lambda: _eq(service.count(**window(0, 40)), 40), timeout=30)
        await wait_for(lambda: _eq(awaiting_commit(service), 0), timeout=20)
        assert ids(await service.records()) == {f.id for f in facts}
        status, body = await service.get("/v1/audit/verify")
        assert status == 200 and body["ok"] and body["records"] == 40
    assert await broker.ready() == 0  # acked after storing, not handed back on stop
