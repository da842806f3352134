"""Audit's batch append runs as plain sqlite3 on SQLite (services.audit.direct) and as plain
asyncpg on PostgreSQL (services.audit.direct_pg), not through the engine. What must hold: the
rows are the engine's own, byte for byte (so reads, chain checks, exports and erasure treat them
alike), and a failed batch leaves nothing behind."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.audit import direct
from services.audit.decisions import sealing
from services.audit.store import MIGRATIONS, AuditStore, is_transient
from shared.contracts import AuditFact
from shared.db import make_engine, migrate, sqlite_timestamp

T0 = datetime(2026, 11, 28, 21, 0, 0, 123456, tzinfo=UTC)
SUBJECT_KEY = sealing.encode_key(bytes(range(32)))


def accepted(n: int, subject: str | None, **details: Any) -> AuditFact:
    return AuditFact(id=f"fct_acc_{n}", kind="event.accepted", occurred_at=T0, service="ingest",
                     event_id=f"evt_{n}", event_type="order.created",
                     details={"endpoints": 1, "subject": subject, "lang": "fr", **details})


def attempted(n: int, attempt: int = 1, **fields: Any) -> AuditFact:
    given: dict[str, Any] = {"outcome": "delivered", "status_code": 200, **fields}
    return AuditFact(id=f"fct_att_{n}_{attempt}", kind="delivery.attempted",
                     occurred_at=T0 + timedelta(milliseconds=n), service="deliverer",
                     event_id=f"evt_{n}", event_type="order.created", endpoint_id="ep_1",
                     delivery_id=f"dlv_{n}", attempt=attempt, url="https://example.com/hook",
                     duration_ms=12.5, details={"response_excerpt": "ok ✓", "next": "done"},
                     **given)


BATCHES = [
    # a subject named by one fact and linked by its event's other fact, in the same batch
    [accepted(1, "user_42", note="é\u2028"), attempted(1), accepted(2, None)],
    # linked through the stored records; a redelivered duplicate; a repeat inside the batch
    [attempted(1, 2), attempted(2), accepted(1, "user_42"), accepted(3, "user_42"),
     accepted(3, "user_42")],
    # an old time, a long error, a subject seen before, another subject
    [attempted(3, error="x" * 3000, reason="timeout", status_code=None, outcome="failed"),
     accepted(4, "user_7").model_copy(update={"occurred_at": datetime(999, 1, 2, tzinfo=UTC)})],
]


def deterministic_sealing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pseudonyms, keys and nonces from fresh counters: two stores then seal the same bytes."""
    refs, keys, nonces = itertools.count(), itertools.count(), itertools.count()
    monkeypatch.setattr(sealing, "new_ref", lambda: f"sbj_{next(refs):032d}")
    monkeypatch.setattr(sealing, "new_key", lambda: next(keys).to_bytes(32, "big"))
    monkeypatch.setattr(sealing.os, "urandom", lambda n: next(nonces).to_bytes(n, "big"))


async def _stored(url: str, monkeypatch: pytest.MonkeyPatch, *, use_direct: bool
                  ) -> tuple[list[Any], ...]:
    deterministic_sealing(monkeypatch)
    engine = make_engine(url)
    await migrate(engine, MIGRATIONS)
    store = await AuditStore.open(engine, subject_key=SUBJECT_KEY, checkpoint_key=SUBJECT_KEY)
    try:
        assert store.direct is not None  # a file, or a server: both have one
        if not use_direct:
            await store.close()
            store._direct = store._pg = None  # the engine's path
        for batch in BATCHES:
            await store.append(batch, now=T0 + timedelta(seconds=1))
        report = await store.verify()
        assert report.ok and report.records == 8
    finally:
        await store.close()
        await engine.dispose()
    queries = ("SELECT * FROM records ORDER BY seq", "SELECT * FROM subject_keys ORDER BY ref",
               "SELECT fact_id FROM records WHERE sealed IS NOT NULL ORDER BY fact_id")
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return tuple(conn.execute(query).fetchall() for query in queries)
    conn = await asyncpg.connect(url)  # json as the text stored (no codec): byte for byte
    try:
        return tuple([[tuple(row) for row in await conn.fetch(query)] for query in queries])
    finally:
        await conn.close()


async def test_direct_rows_are_the_engines_rows(database_pair: tuple[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    engine_url, direct_url = database_pair
    by_engine = await _stored(engine_url, monkeypatch, use_direct=False)
    by_direct = await _stored(direct_url, monkeypatch, use_direct=True)
    assert by_direct == by_engine
    records, keys, sealed = by_direct
    assert len(records) == 8 and len(keys) == 2  # user_42 and user_7
    # sealed: what names a subject, or belongs to an event that does (in the batch or stored);
    # evt_2 names nobody, so neither of its facts is
    assert sorted(f for (f,) in sealed) == sorted(
        ["fct_acc_1", "fct_att_1_1", "fct_att_1_2", "fct_acc_3", "fct_att_3_1", "fct_acc_4"])


async def test_a_failed_batch_leaves_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    await migrate(engine, MIGRATIONS)
    store = await AuditStore.open(engine)
    try:
        await store.append([accepted(1, "user_1")])
        # refused by the INSERT, after the batch created user_2's key in the same transaction
        broken = attempted(1).model_copy(update={"service": None})
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            await store.append([accepted(2, "user_2"), broken])
        assert await store.count() == 1  # neither fact, nor user_2's key
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM subject_keys")
                    ).scalar_one() == 1
        await store.append([accepted(2, "user_2")])  # the writer goes on
        assert (await store.verify()).ok
    finally:
        await store.close()
        await engine.dispose()


async def test_a_failed_batch_leaves_nothing_on_postgresql(pg_url: str) -> None:
    """As above, on the direct asyncpg writer: the refusal is the data's (not transient: the
    batch is split and the bad fact parked, not retried for ever), and the transaction,
    subject key included, is rolled back."""
    engine = make_engine(pg_url)
    await migrate(engine, MIGRATIONS)
    store = await AuditStore.open(engine)
    try:
        await store.append([accepted(1, "user_1")])
        broken = attempted(1).model_copy(update={"service": None})
        with pytest.raises(asyncpg.NotNullViolationError) as caught:
            await store.append([accepted(2, "user_2"), broken])
        assert not is_transient(caught.value)
        assert await store.count() == 1
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM subject_keys")
                    ).scalar_one() == 1
        await store.append([accepted(2, "user_2")])
        assert (await store.verify()).ok
    finally:
        await store.close()
        await engine.dispose()


def test_a_busy_database_is_transient() -> None:
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert not is_transient(sqlite3.IntegrityError("UNIQUE constraint failed: records.fact_id"))


def test_timestamps_are_written_as_sqlalchemy_writes_them() -> None:
    assert sqlite_timestamp(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == (
        "0999-01-02 03:04:05.000006")
    assert direct.RECORD_COLUMNS[0] == "seq" and "fact_id" in direct.RECORD_COLUMNS
