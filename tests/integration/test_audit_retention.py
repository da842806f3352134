"""Retention against each real store: old records purged behind a signed checkpoint, the rest
of the chain still verifies, the database lets only covered records go, tampering is caught."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.audit.checkpoints import Checkpoint, CheckpointSigner
from services.audit.settings import AuditSettings
from services.audit.store import AuditStore, checkpoint_rows, subject_keys
from shared.contracts import utcnow
from shared.db import make_engine
from tests.integration.test_audit_gdpr import (
    AUDITOR,
    Api,
    count_rows,
    event_facts,
    fact,
    reverify,
    served,
)

pytestmark = pytest.mark.integration

OLD = datetime(2001, 6, 1, tzinfo=UTC)
DAYS = 400


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with served(database_url, retention_days=DAYS) as service:
        yield service


async def sql(database_url: str, *statements: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def drop_guards(database_url: str) -> list[str]:
    if database_url.startswith("postgresql"):
        return ["DROP TRIGGER audit_records_append_only ON records",
                "DROP TRIGGER audit_checkpoints_append_only ON checkpoints"]
    return ["DROP TRIGGER audit_records_no_update", "DROP TRIGGER audit_records_no_delete",
            "DROP TRIGGER audit_checkpoints_no_update", "DROP TRIGGER audit_checkpoints_no_delete"]


async def old_and_new(store: AuditStore) -> tuple[int, int]:
    """Twelve records from 2001 (one subject only there, one in both), then six from now."""
    await store.append([*event_facts(0, "evt_old1", "olga"), *event_facts(5, "evt_old2", "max"),
                        *event_facts(9, "evt_old3", None)], now=OLD)
    await store.append([*event_facts(20, "evt_new", "max"), fact(30), fact(31)])
    return 12, 6


async def test_a_purge_deletes_the_old_prefix_behind_a_signed_checkpoint(api: Api) -> None:
    assert AuditSettings.model_fields["retention_days"].default == 0  # keep every record
    status, body = await api.json("POST", "/v1/audit/retention/purge", AUDITOR)
    assert status == 403, body  # admin only
    old, new = await old_and_new(api.store)
    keys_before = await count_rows(api.database_url, subject_keys)
    head = (await api.verify())["head_hash"]

    status, result = await api.json("POST", "/v1/audit/retention/purge")
    assert status == 200, result
    assert result["deleted"] == old and result["keys_deleted"] == 1  # olga's: nothing left
    checkpoint = result["checkpoint"]
    assert (checkpoint["last_seq"], checkpoint["count"]) == (old, old)

    remaining = await api.jsonl()
    assert [r["seq"] for r in remaining] == list(range(old + 1, old + new + 2))
    assert remaining[0]["prev_hash"] == checkpoint["last_hash"]
    reverify(remaining, start_hash=checkpoint["last_hash"])
    assert remaining[-2]["hash"] == head  # nothing after the purged prefix changed
    purged = remaining[-1]
    assert purged["kind"] == "retention.purged"
    assert purged["details"]["last_seq"] == old and purged["details"]["count"] == old

    report = await api.verify()
    assert report["ok"] and report["records"] == new + 1
    assert report["checkpoint"]["signature_ok"] is True
    assert report["checkpoint"]["public_key"] == api.store.signer.public_b64
    assert {k: report["checkpoint"][k] for k in checkpoint} == checkpoint
    assert await count_rows(api.database_url, subject_keys) == keys_before - 1
    assert (await api.subject_export("olga"))["records"] == []
    assert len((await api.subject_export("max"))["records"]) == 4  # only the recent event

    # Nothing new is old enough: no new checkpoint, nothing deleted, the chain still whole.
    status, again = await api.json("POST", "/v1/audit/retention/purge")
    assert (status, again["deleted"], again["checkpoint"]) == (200, 0, None)
    assert (await api.verify())["ok"]


async def test_the_chain_goes_on_after_purging_everything(api: Api) -> None:
    await api.store.append([fact(i) for i in range(5)], now=OLD)
    future = utcnow() + timedelta(days=1)
    first = await api.store.purge(future)  # everything, the purge's own record included next
    second = await api.store.purge(future)
    assert first.deleted == 5 and second.deleted == 1
    assert first.checkpoint and second.checkpoint
    assert second.checkpoint.last_seq == 6 and second.checkpoint.count == 1
    await api.store.append([fact(i) for i in range(3)])
    records = await api.jsonl()
    assert [r["seq"] for r in records] == [7, 8, 9, 10]
    reverify(records, start_hash=second.checkpoint.last_hash)
    report = await api.verify()
    assert report["ok"] and report["checkpoint"]["last_seq"] == 6


async def test_only_covered_records_can_be_deleted(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.store.append([fact(i) for i in range(6)], now=OLD)
    await api.store.append([fact(i) for i in range(2)])

    async def interrupted(_covered: int) -> int:  # the purge dies after its checkpoint
        return 0

    monkeypatch.setattr(api.store, "_delete_covered", interrupted)
    result = await api.store.purge(utcnow() - timedelta(days=DAYS))
    assert result.checkpoint and result.checkpoint.last_seq == 6 and result.deleted == 0
    monkeypatch.undo()
    # Verification already starts after the checkpoint; the covered rows wait for deletion.
    report = await api.verify()
    assert report["ok"] and report["records"] == 3

    url = api.database_url
    await sql(url, "DELETE FROM records WHERE seq = 2")  # covered: allowed
    for statement in ("DELETE FROM records WHERE seq = 7",  # not covered
                      "UPDATE records SET outcome = 'x' WHERE seq = 3",  # never
                      "UPDATE checkpoints SET count = 99",
                      "DELETE FROM checkpoints"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await sql(url, statement)
    # The next purge finishes the job.
    again = await api.store.purge(utcnow() - timedelta(days=DAYS))
    assert again.deleted == 5 and again.checkpoint is None
    assert (await api.verify())["ok"]


async def test_tampering_after_a_purge_is_caught(api: Api) -> None:
    """Each tampering in turn, undone after it is seen (the last one cannot be)."""
    await old_and_new(api.store)
    result = await api.store.purge(utcnow() - timedelta(days=DAYS))
    assert result.checkpoint is not None
    checkpoint, last = result.checkpoint, result.checkpoint.last_seq
    assert (await api.verify())["ok"]
    url = api.database_url
    await sql(url, *drop_guards(url))

    async def caught(seq: int, problem: str) -> None:
        report = await api.verify()
        assert (report["ok"], report["first_bad_seq"], report["problem"]) == (
            False, seq, problem)

    # A forged count: the signature no longer matches.
    await sql(url, "UPDATE checkpoints SET count = count + 1")
    await caught(last, "bad_checkpoint")
    await sql(url, "UPDATE checkpoints SET count = count - 1")
    assert (await api.verify())["ok"]

    # A newer checkpoint signed by someone else's key.
    forged = CheckpointSigner(bytes(32)).sign(last + 1, "0" * 64, 1, utcnow())
    await insert_checkpoint(url, forged)
    await caught(last + 1, "bad_checkpoint")
    await sql(url, f"DELETE FROM checkpoints WHERE last_seq = {last + 1}")  # noqa: S608
    assert (await api.verify())["ok"]

    # The checkpoint deleted: the chain no longer starts anywhere known.
    await sql(url, "DELETE FROM checkpoints")
    await caught(last + 1, "broken_link")
    await insert_checkpoint(url, checkpoint)
    assert (await api.verify())["ok"]

    # One record more than the checkpoint covers deleted.
    await sql(url, f"DELETE FROM records WHERE seq = {last + 1}")  # noqa: S608
    await caught(last + 2, "broken_link")


async def insert_checkpoint(database_url: str, checkpoint: Checkpoint) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(checkpoint_rows.insert().values(
                last_seq=checkpoint.last_seq, last_hash=checkpoint.last_hash,
                count=checkpoint.count, at=checkpoint.at, key_id=checkpoint.key_id,
                signature=checkpoint.signature))
    finally:
        await engine.dispose()
