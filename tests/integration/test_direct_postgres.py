"""The per-batch statements on PostgreSQL go through plain asyncpg (shared.db.DirectPostgres).

What must hold whichever way they go: the rows are the engine's own (the message log's and
audit's are compared in their own tests; the seen events here), an outage of the database is
an infrastructure failure (held by the consumer, retried by audit's writer, never counted
against a message), and once the server is back the first batch succeeds — the connections
kept from before the restart are dead, and are replaced without failing the batch.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.audit.store import MIGRATIONS as AUDIT_MIGRATIONS
from services.audit.store import AuditStore, is_transient
from services.ingest.app import MIGRATIONS
from services.ingest.store import Store, seen_events
from shared import outages
from shared.contracts import AuditFact
from shared.db import make_engine, migrate
from tests.pg_cluster import pg_cluster

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 9, 0, 0, 123456, tzinfo=UTC)


def _accepted(n: int) -> AuditFact:
    return AuditFact(id=f"fct_acc_{n}", kind="event.accepted", occurred_at=T0,
                     service="ingest", event_id=f"evt_{n}", event_type="order.created",
                     details={"endpoints": 1, "subject": f"user_{n}"})


async def test_direct_seen_events_are_the_engines_rows(database_pair: tuple[str, str]) -> None:
    """The seen-event records (AMQP deduplication), written through the engine into one
    database and directly into the other, read back alike; the look-ups answer alike."""
    rows = []
    for direct, url in zip((False, True), database_pair, strict=True):
        engine = make_engine(url)
        await migrate(engine, MIGRATIONS)
        store = Store(engine)
        if not direct:  # the engine's path (the direct writers open nothing before use)
            store._direct = store._pg = None
        assert (store.direct is not None) == direct
        try:
            await store.remember_events(["evt_b", "evt_a"], T0)
            await store.remember_events(["evt_a", "evt_c"], T0 + timedelta(seconds=5))
            assert await store.seen_many({"evt_a", "evt_b", "evt_x"}) == {
                "evt_a": T0 + timedelta(seconds=5), "evt_b": T0}
            async with store.engine.connect() as conn:
                rows.append([tuple(r) for r in await conn.execute(
                    sa.select(seen_events).order_by(seen_events.c.event_id))])
        finally:
            await store.close()
    assert len(rows[1]) == 3
    assert rows[1] == rows[0]


@pytest.mark.timeout(180)
async def test_a_restart_fails_only_while_the_server_is_down() -> None:
    """Ingest's seen events and audit's append on a cluster of the test's own, stopped and
    started again: while it is down each call fails with an infrastructure error (the
    consumer holds its message, audit's writer retries: nothing counted against a message);
    the first call after the restart succeeds on new connections, though the writers had
    kept connections from before."""
    async with pg_cluster() as pg:
        ingest_url = await pg.create_database("ingest")
        audit_url = await pg.create_database("audit")
        ingest_engine = make_engine(ingest_url)
        audit_engine = make_engine(audit_url)
        await migrate(ingest_engine, MIGRATIONS)
        await migrate(audit_engine, AUDIT_MIGRATIONS)
        store = Store(ingest_engine)
        audit = await AuditStore.open(audit_engine)
        try:
            # connections idle in the writers when the server goes (several in ingest's)
            await asyncio.gather(*(store.remember_events([f"evt_{n}"], T0) for n in range(4)))
            for n in range(4):
                await audit.append([_accepted(n)])
            await pg.stop()
            for call in (store.remember_events(["evt_down"], T0), store.seen_many({"evt_1"}),
                         audit.append([_accepted(99)])):
                with pytest.raises(Exception) as caught:  # noqa: PT011 (any driver error)
                    await call
                assert outages.is_infrastructure(caught.value), repr(caught.value)
                assert is_transient(caught.value)
            await pg.start()
            await store.remember_events(["evt_up"], T0)  # no failure first
            assert set(await store.seen_many({"evt_0", "evt_up", "evt_down"})) == {
                "evt_0", "evt_up"}
            appended = await audit.append([_accepted(100)])
            assert [r["id"] for r in appended.records] == ["fct_acc_100"]
            assert (await audit.verify()).ok
            print(f"\n[books] before the restart: 4 seen, 4 appended; while down: 3 calls, "
                  f"3 infrastructure errors; after: 2 seen, 1 appended, chain of "
                  f"{await audit.count()} records intact")
        finally:
            await audit.close()
            await audit_engine.dispose()
            await store.close()

