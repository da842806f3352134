"""GDPR against each real store (SQLite file, PostgreSQL): subject export, erasure by
crypto-shredding, keys pinned; and the audit service wired end to end through RabbitMQ.

Most tests serve the audit HTTP app in-process over a store they fill directly (the batch
writer the consumer uses), which keeps them fast; ``test_erasure_through_the_running_service``
runs the whole service once. The helpers here are shared with the export and retention tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from services.audit.app import start
from services.audit.decisions import GENESIS_HASH, sealing
from services.audit.heads import FileSink, Heads
from services.audit.http import make_app
from services.audit.settings import AuditSettings
from services.audit.store import MIGRATIONS, AuditStore, KeyMismatchError, subject_keys
from shared import topology
from shared.broker import Publisher, connect, declare
from shared.contracts import AuditFact, TokenGrant, utcnow
from shared.db import make_engine, migrate
from shared.web import Principal, bootstrap_lookup, hash_token, serve
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

ADMIN = "admin-" + uuid.uuid4().hex
AUDITOR = "auditor-" + uuid.uuid4().hex
VIEWER = "viewer-" + uuid.uuid4().hex
T0 = datetime(2001, 1, 1, tzinfo=UTC)
HOOK = "https://crm.example/hooks/dihya"


# ------------------------------------------------------------------ shared helpers

@dataclass
class Api:
    store: AuditStore
    base: str
    session: aiohttp.ClientSession
    database_url: str
    heads: Heads | None = None

    async def call(self, method: str, path: str, token: str | None = ADMIN,
                   **params: str) -> tuple[int, bytes, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, params=params,
                                        headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers

    async def json(self, method: str, path: str, token: str | None = ADMIN,
                   **params: str) -> tuple[int, Any]:
        status, body, _ = await self.call(method, path, token, **params)
        return status, orjson.loads(body)

    async def records(self, **filters: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            status, body = await self.json("GET", "/v1/audit/records", limit="500", **filters,
                                           **({"cursor": cursor} if cursor else {}))
            assert status == 200, body
            found += body["records"]
            cursor = body["next_cursor"]
            if cursor is None:
                return found

    async def verify(self) -> dict[str, Any]:
        status, body = await self.json("GET", "/v1/audit/verify")
        assert status == 200, body
        return dict(body)

    async def jsonl(self, **params: str) -> list[dict[str, Any]]:
        status, body, headers = await self.call("GET", "/v1/audit/export", **params)
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/x-ndjson")
        return [orjson.loads(line) for line in body.splitlines()]

    async def subject_export(self, subject: str, token: str = ADMIN) -> dict[str, Any]:
        status, body = await self.json("GET", f"/v1/audit/subjects/{quote(subject, safe='')}"
                                              "/export", token)
        assert status == 200, body
        return dict(body)

    async def erase(self, subject: str, token: str = ADMIN) -> tuple[int, Any]:
        return await self.json("POST",
                               f"/v1/audit/subjects/{quote(subject, safe='')}/erasure", token)


def grant(token: str, role: str) -> TokenGrant:
    return TokenGrant.model_validate({
        "token_id": f"tok_{role}", "role": role, "token_hash": hash_token(token),
        "issued_at": utcnow()})


@contextlib.asynccontextmanager
async def served(database_url: str, *, retention_days: int = 0, export_page: int = 1000,
                 heads_file: Path | None = None, **store_options: Any) -> AsyncIterator[Api]:
    """The audit HTTP app over a migrated store, on a free port (no broker); with
    ``heads_file``, heads signed on demand (``api.heads.sign()``) go to that file."""
    engine = make_engine(database_url)
    try:
        await migrate(engine, MIGRATIONS)
        store = await AuditStore.open(engine, **store_options)
        for token, role in ((AUDITOR, "auditor"), (VIEWER, "viewer")):
            await store.apply_grant(grant(token, role))

        async def refused(_request: Any, _principal: Principal | None, _reason: str) -> None:
            return None

        heads = None
        if heads_file is not None:
            assert store.head_signer is not None
            heads = Heads(store.head_state, store.head_signer, [FileSink(heads_file)],
                          interval=3600)
        app = make_app(store, lookup=bootstrap_lookup(ADMIN, store.lookup),
                       on_refusal=refused, checks={}, page_limit=500,
                       export_page=export_page, retention_days=retention_days, heads=heads)
        port = free_port()
        runner = await serve(app, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as session:
                yield Api(store, f"http://127.0.0.1:{port}", session, database_url, heads)
        finally:
            await runner.cleanup()
            await store.close()
    finally:
        await engine.dispose()


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with served(database_url) as service:
        yield service


def fact(n: int, kind: str = "event.accepted", *, event: str | None = None,
         at: datetime | None = None, **fields: Any) -> AuditFact:
    return AuditFact(id=f"fct_{uuid.uuid4().hex}", kind=kind,  # type: ignore[arg-type]
                     occurred_at=at or T0 + timedelta(seconds=n),
                     service="ingest" if kind.startswith("event.") else "deliverer",
                     event_id=event, event_type="template.created" if event else None,
                     **fields)


def event_facts(n: int, event: str, subject: str | None, *, response: str = "ok"
                ) -> list[AuditFact]:
    """An event's facts: held first (a fact may reach audit before its acceptance; audit
    must still link it), accepted (naming the subject, as ingest does), then a failed and a
    delivered attempt."""
    return [
        fact(n, "delivery.held", event=event, endpoint_id="ep_2", url=HOOK + "?held",
             details={"disabled_reason": "failing"}),
        fact(n, event=event, details={"endpoints": 1, "subject": subject, "lang": "fr"}),
        fact(n + 1, "delivery.attempted", event=event, endpoint_id="ep_1", url=HOOK,
             attempt=1, outcome="failed", status_code=503,
             details={"response_excerpt": f"busy, {response}"}),
        fact(n + 2, "delivery.attempted", event=event, endpoint_id="ep_1", url=HOOK,
             attempt=2, outcome="delivered", status_code=200,
             details={"response_excerpt": response}),
    ]


def reverify(records: list[dict[str, Any]], start_hash: str = GENESIS_HASH) -> None:
    """Re-check exported records with the documented rule only (no service code): the hashed
    object is the record minus ``hash``, ``prev_hash`` and ``personal``."""
    prev = start_hash
    for record in records:
        body = {k: v for k, v in record.items() if k not in ("hash", "prev_hash", "personal")}
        digest = hashlib.sha256(
            prev.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        assert record["prev_hash"] == prev, record["seq"]
        assert digest == record["hash"], record["seq"]
        prev = record["hash"]


async def count_rows(database_url: str, table: sa.Table) -> int:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(table))).scalar_one())
    finally:
        await engine.dispose()


# ------------------------------------------------------------------ subject export, erasure

async def test_subject_export_then_erasure(api: Api) -> None:
    subject = "user/42 ⵣ & ü?"  # reserved URL characters and non-ASCII: percent-encoded
    other = "bob"
    await api.store.append([
        *event_facts(0, "evt_a1", subject, response=f"thanks {subject}"),
        *event_facts(10, "evt_b1", other, response="thanks bob"),
        fact(20, "access.refused", reason="forbidden", details={"path": "/x"}),
    ])
    # A later batch: another event of the subject, and a fact linked only by its event.
    await api.store.append([
        *event_facts(30, "evt_a2", subject)[1:2],
        fact(33, "delivery.retry_requested", event="evt_a2", endpoint_id="ep_1", url=HOOK,
             actor="tok_admin", details={"via": "retry"}),
    ])

    # Art. 15 / 20: every record about the subject, opened, with the summary.
    doc = await api.subject_export(subject, token=AUDITOR)
    assert doc["subject"] == subject
    events = {r["event_id"] for r in doc["records"]}
    assert events == {"evt_a1", "evt_a2"}
    assert len(doc["records"]) == 6
    assert all(r["subject_ref"] == doc["records"][0]["subject_ref"] for r in doc["records"])
    accepted = [r for r in doc["records"] if r["kind"] == "event.accepted"]
    assert [r["personal"]["subject"] for r in accepted] == [subject, subject]
    assert accepted[0]["personal"]["details"] == {"endpoints": 1, "subject": subject,
                                                  "lang": "fr"}
    excerpts = [r["personal"]["details"]["response_excerpt"] for r in doc["records"]
                if r["kind"] == "delivery.attempted"]
    assert excerpts == [f"busy, thanks {subject}", f"thanks {subject}"]
    assert doc["recipients"] == [HOOK]
    assert [(e["event_id"], e["event_type"], len(e["deliveries"])) for e in doc["events"]] == [
        ("evt_a1", "template.created", 2), ("evt_a2", "template.created", 0)]
    assert {r["id"] for r in await api.records(subject=subject)} == {
        r["id"] for r in doc["records"]}

    # Nothing personal is stored in clear.
    for r in await api.records():
        assert subject not in orjson.dumps({k: v for k, v in r.items() if k != "personal"})\
            .decode()

    # Art. 17: admin only.
    status, body = await api.erase(subject, token=AUDITOR)
    assert status == 403, body
    status, erased = await api.erase(subject)
    assert status == 200, erased
    assert erased["records"] == 6 and erased["legacy_records"] == 0
    assert erased["subject_ref"] == doc["records"][0]["subject_ref"]

    # Afterwards: nothing personal in the export, `[erased]` in the log, chain intact.
    after = await api.subject_export(subject)
    assert (after["records"], after["events"], after["recipients"]) == ([], [], [])
    assert await api.records(subject=subject) == []
    everything = await api.records()
    shredded = [r for r in everything if r.get("subject_ref") == erased["subject_ref"]]
    assert len(shredded) == 6
    assert all(r["personal"] == {"subject": "[erased]", "details": "[erased]"}
               for r in shredded)
    dump = orjson.dumps(everything).decode()
    assert subject not in dump and subject.encode("unicode_escape").decode() not in dump
    assert "thanks bob" in dump  # the other subject is untouched
    report = await api.verify()
    assert report["ok"] and report["records"] == len(everything)
    reverify(await api.jsonl())

    # The erasure is itself audited: who, the pseudonym and the counts — never the id.
    [audit_record] = await api.records(kind="subject.erased")
    assert audit_record["seq"] == erased["record_seq"]
    assert audit_record["actor"] == "tok_bootstrap_admin"
    assert audit_record["details"] == {"subject_ref": erased["subject_ref"], "records": 6,
                                       "legacy_records": 0}

    # What arrives late about an erased subject's event is unreadable from the start...
    late = fact(40, "delivery.attempted", event="evt_a1", endpoint_id="ep_1", url=HOOK,
                details={"response_excerpt": f"late {subject}"})
    # ...while a new event naming the subject starts a new, unrelated pseudonym.
    fresh = fact(41, event="evt_a3", details={"subject": subject})
    await api.store.append([late, fresh])
    by_id = {r["id"]: r for r in await api.records()}
    assert by_id[late.id]["personal"] == {"subject": "[erased]", "details": "[erased]"}
    assert by_id[late.id]["subject_ref"] == erased["subject_ref"]
    assert by_id[fresh.id]["subject_ref"] not in (None, erased["subject_ref"])
    assert [r["id"] for r in (await api.subject_export(subject))["records"]] == [fresh.id]
    assert (await api.verify())["ok"]


async def test_erasure_is_idempotent_and_of_an_unknown_subject_harmless(api: Api) -> None:
    await api.store.append(event_facts(0, "evt_1", "carol"))
    keys = await count_rows(api.database_url, subject_keys)
    first = (await api.erase("carol"))[1]
    again = (await api.erase("carol"))[1]
    unknown = (await api.erase("nobody-at-all"))[1]
    assert first["records"] == 4 and first["subject_ref"].startswith("sbj_")
    assert (again["records"], again["subject_ref"]) == (0, None)
    assert (unknown["records"], unknown["subject_ref"]) == (0, None)
    assert await count_rows(api.database_url, subject_keys) == keys - 1
    outcomes = [r["outcome"] for r in await api.records(kind="subject.erased")]
    assert outcomes == ["erased", "nothing_sealed", "nothing_sealed"]
    assert (await api.verify())["ok"]


async def test_subject_routes_refuse_bad_ids_and_roles(api: Api) -> None:
    status, body = await api.json("GET", "/v1/audit/subjects/a%00b/export")
    assert status == 422 and body["error"]["code"] == "invalid_subject"
    status, body = await api.json("GET", "/v1/audit/subjects/" + "x" * 513 + "/export")
    assert status == 422
    status, _ = await api.json("GET", "/v1/audit/subjects/alice/export", VIEWER)
    assert status == 403
    status, _ = await api.json("POST", "/v1/audit/subjects/alice/erasure", None)
    assert status == 401
    status, _ = await api.json("POST", "/v1/audit/retention/purge")
    assert status == 409  # retention off by default: nothing is ever purged


async def test_subject_paths_are_configurable(database_url: str) -> None:
    async with served(database_url, subject_paths="customer.id,user_id") as api:
        await api.store.append([
            fact(0, details={"customer": {"id": "cust-7"}, "subject": "ignored"}),
            fact(1, details={"user_id": "u-8"}),
            fact(2, details={"subject": "not-a-path-here"}),
        ])
        assert len((await api.subject_export("cust-7"))["records"]) == 1
        assert len((await api.subject_export("u-8"))["records"]) == 1
        assert (await api.subject_export("not-a-path-here"))["records"] == []


async def test_keys_are_pinned_to_the_database(database_url: str) -> None:
    key_a = sealing.encode_key(bytes(range(32)))
    key_b = sealing.encode_key(bytes(32))
    async with served(database_url, subject_key=key_a, checkpoint_key=key_b) as api:
        await api.store.append([fact(0, details={"subject": "dave"})])
    # The same keys again: the subject is still found.
    async with served(database_url, subject_key=key_a, checkpoint_key=key_b) as api:
        assert len((await api.subject_export("dave"))["records"]) == 1
    # A different key, or none after one was set: refused rather than silently lost.
    for options in ({"subject_key": key_b, "checkpoint_key": key_b},
                    {"subject_key": key_a, "checkpoint_key": key_a},
                    {"checkpoint_key": key_b}):
        with pytest.raises(KeyMismatchError):
            async with served(database_url, **options):
                pass


async def test_generated_keys_are_kept_across_restarts(database_url: str) -> None:
    async with served(database_url) as api:
        await api.store.append([fact(0, details={"subject": "erin"})])
        public = api.store.signer.public
    async with served(database_url) as api:
        assert len((await api.subject_export("erin"))["records"]) == 1
        assert api.store.signer.public == public


# ------------------------------------------------------------------ the whole service

async def test_the_running_service_erases_redacts_and_purges(
    amqp_url: str, database_url: str
) -> None:
    """The wiring of ``start``: erasure over HTTP on facts that came through the broker, a
    refused request about a subject audited without the id, and the periodic retention purge
    (of records written in 2001, before the service started)."""
    async with served(database_url) as api:
        await api.store.append([fact(i) for i in range(4)], now=T0)
    connection = await connect(amqp_url, service="audit-gdpr-tests")
    channel = await connection.channel()
    await declare(channel)
    for name in (topology.AUDIT_FACTS, topology.AUDIT_CONTROL):
        await (await channel.get_queue(name, ensure=False)).purge()
    publisher = await Publisher.open(connection)
    # The held fact names no subject and is published first: sealed with the subject's key
    # only because audit holds it until the acceptance naming the subject is stored (or
    # links it within one batch) — see the next test.
    settings = AuditSettings(
        host="127.0.0.1", port=free_port(), database_url=database_url, mode="development",
        amqp_url=SecretStr(amqp_url), admin_token=SecretStr(ADMIN),
        shutdown_grace=1.0, retention_days=400, retention_interval=0.2)
    stop = await start(settings)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(None, f"http://127.0.0.1:{settings.port}", session,  # type: ignore[arg-type]
                      database_url)
            await publisher.send(topology.CONTROL_EXCHANGE, "token.created",
                                 grant(VIEWER, "viewer"))
            run = uuid.uuid4().hex[:8]
            facts = event_facts(0, f"evt_{run}", f"frank-{run}")
            for f in facts:
                await publisher.send(topology.AUDIT_EXCHANGE, f.kind, f)

            async def stored() -> bool:
                return len(await api.records(subject=f"frank-{run}")) == len(facts)

            await wait_for(stored, timeout=20)
            status, erased = await api.erase(f"frank-{run}")
            assert status == 200 and erased["records"] == len(facts)

            # A refused request about a subject is audited with the route, not the id.
            async def viewer_refused() -> bool:
                status, _ = await api.json(
                    "GET", f"/v1/audit/subjects/frank-{run}/export", VIEWER)
                return status == 403

            await wait_for(viewer_refused, timeout=20)

            async def refusal_recorded() -> bool:
                return any(r["details"]["path"] == "/v1/audit/subjects/{subject}/export"
                           for r in await api.records(kind="access.refused"))

            await wait_for(refusal_recorded, timeout=20)
            dump = orjson.dumps(await api.records()).decode()
            assert f"frank-{run}" not in dump

            async def purged() -> bool:
                report = await api.verify()
                return report["ok"] and (report["checkpoint"] or {}).get("last_seq") == 4

            await wait_for(purged, timeout=20)
            records = await api.records()
            assert records[0]["seq"] == 5 and "retention.purged" in {r["kind"] for r in records}
    finally:
        await stop()
        await publisher.close()
        await connection.close()


async def test_a_delivery_fact_is_stored_after_its_events_acceptance(
    amqp_url: str, database_url: str
) -> None:
    """An attempt that reaches audit before its event's acceptance waits for it, then is
    stored after it and sealed with the subject the acceptance names — whether the acceptance
    comes through this service later or was stored before (by another replica: looked up).
    An attempt whose acceptance never comes is stored, unlinked, once the wait is over."""
    run = uuid.uuid4().hex[:8]
    earlier = fact(0, event=f"evt_{run}_earlier", details={"subject": f"erin-{run}"})
    async with served(database_url) as api:
        await api.store.append([earlier])
    connection = await connect(amqp_url, service="audit-order-tests")
    channel = await connection.channel()
    await declare(channel)
    await (await channel.get_queue(topology.AUDIT_FACTS, ensure=False)).purge()
    publisher = await Publisher.open(connection)
    settings = AuditSettings(
        host="127.0.0.1", port=free_port(), database_url=database_url, mode="development",
        amqp_url=SecretStr(amqp_url), admin_token=SecretStr(ADMIN),
        shutdown_grace=1.0, acceptance_wait=4.0)
    stop = await start(settings)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(None, f"http://127.0.0.1:{settings.port}", session,  # type: ignore[arg-type]
                      database_url)
            attempt = fact(1, "delivery.attempted", event=f"evt_{run}", endpoint_id="ep_1",
                           url=HOOK, attempt=1, outcome="delivered", status_code=200)
            orphan = fact(1, "delivery.attempted", event=f"evt_{run}_never",
                          endpoint_id="ep_1", url=HOOK, attempt=1, outcome="delivered",
                          status_code=200)
            late = fact(1, "delivery.attempted", event=f"evt_{run}_earlier",
                        endpoint_id="ep_1", url=HOOK, attempt=1, outcome="delivered",
                        status_code=200)
            for f in (attempt, orphan, late):
                await publisher.send(topology.AUDIT_EXCHANGE, f.kind, f)
            unrelated = fact(2, event=f"evt_{run}_other")
            await publisher.send(topology.AUDIT_EXCHANGE, unrelated.kind, unrelated)

            async def by_id() -> dict[str, dict[str, Any]]:
                return {r["id"]: r for r in await api.records()}

            async def stored(*ids: str) -> bool:
                return set(ids) <= set(await by_id())

            # The acceptance stored before the service started is found: that attempt goes.
            await wait_for(lambda: stored(unrelated.id, late.id), timeout=20)
            assert attempt.id not in await by_id()  # still waiting for its acceptance
            accepted = fact(3, event=f"evt_{run}", details={"subject": f"frank-{run}"})
            await publisher.send(topology.AUDIT_EXCHANGE, accepted.kind, accepted)
            await wait_for(lambda: stored(accepted.id, attempt.id), timeout=20)
            records = await by_id()
            assert orphan.id not in records  # its wait (4 s) is not over yet
            assert records[attempt.id]["seq"] > records[accepted.id]["seq"]
            assert records[attempt.id].get("subject_ref") == records[accepted.id]["subject_ref"]
            assert records[late.id].get("subject_ref") == records[earlier.id]["subject_ref"]
            assert records[accepted.id]["subject_ref"] is not None

            await wait_for(lambda: stored(orphan.id), timeout=20)
            assert "subject_ref" not in (await by_id())[orphan.id]  # stored, unlinked
            status, erased = await api.erase(f"frank-{run}")
            assert status == 200 and erased["records"] == 2  # the acceptance and its attempt
    finally:
        await stop()
        await publisher.close()
        await connection.close()
