"""The audit chain anchored outside the database, tried as an insider would (issue #18).

Against each real store (SQLite file, PostgreSQL), with the append-only triggers dropped first,
as an attacker with write access to the database would: (d) the newest records deleted,
(e) a record edited and every later hash recomputed, (f) a forged record appended with a
correct hash, and a forged retention checkpoint. ``GET /v1/audit/verify``'s own chain walk
passes (d), (e) and (f); the offline verifier (``dihya audit verify --heads … --public-key …
--export …``) fails on each, naming the kind and the record, from the heads file and the
public key alone. Each test prints its books.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import sqlalchemy as sa

from cli.main import run as cli_run
from services.audit import decisions, openapi
from services.audit.checkpoints import CheckpointSigner
from services.audit.decisions import sealing
from services.audit.http import routes
from services.audit.store import records
from shared import anchor
from shared.contracts import utcnow
from shared.db import make_engine
from shared.openapi import component
from tests.integration.test_audit_gdpr import ADMIN, Api, fact, served
from tests.integration.test_audit_retention import drop_guards, insert_checkpoint, sql

pytestmark = pytest.mark.integration

RECORDS = 30
HEAD_KEY = base64.b64encode(bytes(range(32))).decode()
CHECKPOINT_KEY = base64.b64encode(bytes(range(32, 64))).decode()


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Production-style keys (given, not in the database); a head signed after each record,
    so each head anchors exactly one more record."""
    async with served(database_url, heads_file=tmp_path / "heads.jsonl", head_key=HEAD_KEY,
                      checkpoint_key=CHECKPOINT_KEY) as service:
        assert service.heads is not None
        for n in range(RECORDS):
            await service.store.append([fact(n, outcome="accepted")])
            await service.heads.sign()
        yield service


def heads_file(api: Api) -> Path:
    assert api.heads is not None
    sink = api.heads.sinks[0]
    return Path(getattr(sink, "path"))  # noqa: B009 - FileSink.path, sinks typed as the protocol


def public_key(api: Api) -> bytes:
    assert api.store.head_signer is not None
    return api.store.head_signer.public


async def offline(api: Api, tmp_path: Path) -> anchor.Verdict:
    """What an auditor gets: the API's JSON Lines export checked against the heads file with
    the public key (and the same through the CLI, which must agree)."""
    status, body, _ = await api.call("GET", "/v1/audit/export")
    assert status == 200
    export = tmp_path / "export.jsonl"
    export.write_bytes(body)
    heads = list(anchor.parse_lines(heads_file(api).read_bytes().splitlines()))
    verdict = anchor.verify(heads, public_key(api), anchor.parse_lines(body.splitlines()))
    key = tmp_path / "heads.pub"
    key.write_text(base64.b64encode(public_key(api)).decode())
    out, err = io.StringIO(), io.StringIO()
    code = cli_run(["--json", "audit", "verify", "--heads", str(heads_file(api)),
                    "--public-key", str(key), "--export", str(export)],
                   env={"HOME": str(tmp_path)}, stdout=out, stderr=err,
                   stdin=io.StringIO(""))
    assert orjson.loads(out.getvalue()) == verdict.as_json(), err.getvalue()
    assert code == (0 if verdict.ok else 6)
    # the same, the export fetched from the API by the CLI (--url; in a thread: the CLI's
    # HTTP client blocks, and the API is served by this event loop)
    out = io.StringIO()
    code = await asyncio.to_thread(
        cli_run, ["--json", "--token", ADMIN, "audit", "verify", "--heads",
                  str(heads_file(api)), "--public-key", key.read_text(), "--url", api.base],
        env={"HOME": str(tmp_path)}, stdout=out, stderr=err, stdin=io.StringIO(""))
    assert orjson.loads(out.getvalue()) == verdict.as_json(), err.getvalue()
    assert code == (0 if verdict.ok else 6)
    print(f"books: records in export={verdict.records} heads={verdict.heads} "
          f"verdict={verdict.kind or 'ok'} first_bad_seq={verdict.seq} ({verdict.detail})")
    return verdict


async def stored(database_url: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(records).order_by(records.c.seq))).mappings()
            return [dict(row) for row in rows]
    finally:
        await engine.dispose()


async def test_an_untouched_log_verifies(api: Api, tmp_path: Path) -> None:
    verdict = await offline(api, tmp_path)
    assert (verdict.ok, verdict.records, verdict.heads) == (True, RECORDS, RECORDS)
    report = await api.verify()
    assert report["ok"] and report["signed_head"]["matches"] is True
    jsonschema.validate(report, component(openapi.document(routes(500)), "VerifyReport"))
    assert report["signed_head"]["seq"] == RECORDS
    assert report["heads"]["public_key"] == base64.b64encode(public_key(api)).decode()


async def test_d_deleting_the_newest_ten_is_caught(api: Api, tmp_path: Path) -> None:
    url = api.database_url
    await sql(url, *drop_guards(url), f"DELETE FROM records WHERE seq > {RECORDS - 10}")  # noqa: S608
    assert (await api.store.verify()).ok  # the chain alone still looks whole
    verdict = await offline(api, tmp_path)
    assert (verdict.ok, verdict.kind, verdict.seq) == (False, "truncated", RECORDS - 9)
    report = await api.verify()
    assert (report["ok"], report["problem"], report["signed_head"]["matches"]) == (
        False, "signed_head_mismatch", False)
    jsonschema.validate(report, component(openapi.document(routes(500)), "VerifyReport"))


async def test_e_an_edit_with_every_later_hash_recomputed_is_caught(
        api: Api, tmp_path: Path) -> None:
    url, target = api.database_url, 15
    rows = await stored(url)
    statements = list(drop_guards(url))
    prev = rows[target - 2]["hash"]
    for row in rows[target - 1:]:
        record = decisions.record_from_row(row)
        if record["seq"] == target:
            record["outcome"] = "refused"
        record["prev_hash"] = prev
        record["hash"] = prev = decisions.chain_hash(prev, record)
        statements.append(
            f"UPDATE records SET outcome = '{record['outcome']}', "  # noqa: S608
            f"prev_hash = '{record['prev_hash']}', hash = '{record['hash']}' "
            f"WHERE seq = {record['seq']}")
    await sql(url, *statements)
    assert (await api.store.verify()).ok  # the chain alone still looks whole
    verdict = await offline(api, tmp_path)
    assert (verdict.ok, verdict.kind, verdict.seq) == (False, "rewritten", target)
    assert (await api.verify())["problem"] == "signed_head_mismatch"


async def test_f_a_forged_append_with_a_correct_hash_is_caught(
        api: Api, tmp_path: Path) -> None:
    url = api.database_url
    last = (await stored(url))[-1]
    # A record dated like its neighbours (it claims to have been recorded with them).
    forged = decisions.append(
        [fact(99, "delivery.attempted", outcome="delivered", status_code=200)],
        existing_ids=set(), head_seq=last["seq"], head_hash=last["hash"],
        recorded_at=last["recorded_at"])
    row = dict(forged.records[0])
    row["fact_id"] = row.pop("id")
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in drop_guards(url):
                await conn.execute(sa.text(statement))
            await conn.execute(records.insert().values(**row))
    finally:
        await engine.dispose()
    assert (await api.store.verify()).ok  # a correct hash: the chain alone accepts it
    verdict = await offline(api, tmp_path)
    assert (verdict.ok, verdict.kind, verdict.seq) == (False, "forged_append", RECORDS + 1)


async def test_a_forged_checkpoint_is_caught(api: Api, tmp_path: Path) -> None:
    """The checkpoint key is not in the database (production): the insider signs with a key
    of their own, covers the first ten records and deletes them (the triggers would even let
    them: a checkpoint covers the records)."""
    url = api.database_url
    rows = await stored(url)
    forged = CheckpointSigner(bytes(32)).sign(10, rows[9]["hash"], 10, utcnow())
    await sql(url, *drop_guards(url))
    await insert_checkpoint(url, forged)
    await sql(url, "DELETE FROM records WHERE seq <= 10")
    verdict = await offline(api, tmp_path)
    assert (verdict.ok, verdict.kind, verdict.seq) == (False, "forged_checkpoint", 1)
    assert (await api.verify())["problem"] == "bad_checkpoint"
    # The service's next head does not attest it: still caught.
    assert api.heads is not None
    head = await api.heads.sign()
    assert head["checkpoint"] is None
    assert (await offline(api, tmp_path)).kind == "forged_checkpoint"


async def test_a_checkpoint_forged_with_a_key_kept_in_the_database_is_caught(
        database_url: str, tmp_path: Path) -> None:
    """Development mode keeps the checkpoint key in the database: the insider reads it and
    signs a checkpoint the service's own ``/verify`` accepts (issue #18) — the heads signed
    before still refuse it."""
    async with served(database_url, heads_file=tmp_path / "heads.jsonl",
                      head_key=HEAD_KEY) as api:
        assert api.heads is not None
        for n in range(12):
            await api.store.append([fact(n)])
        await api.heads.sign()
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                seed = (await conn.execute(sa.text(
                    "SELECT value FROM service_keys WHERE name = 'checkpoint_signing.key'")
                )).scalar_one()
        finally:
            await engine.dispose()
        rows = await stored(database_url)
        forged = CheckpointSigner(sealing.decode_key(seed, "key")).sign(
            10, rows[9]["hash"], 10, utcnow() - timedelta(minutes=1))
        await sql(database_url, *drop_guards(database_url))
        await insert_checkpoint(database_url, forged)
        await sql(database_url, "DELETE FROM records WHERE seq <= 10")
        assert (await api.store.verify()).ok  # the service's own walk is fooled
        verdict = await offline(api, tmp_path)
        assert (verdict.ok, verdict.kind, verdict.seq) == (False, "forged_checkpoint", 1)


async def test_a_genuine_purge_is_attested_and_verifies(database_url: str,
                                                        tmp_path: Path) -> None:
    async with served(database_url, heads_file=tmp_path / "heads.jsonl", head_key=HEAD_KEY,
                      checkpoint_key=CHECKPOINT_KEY, retention_days=1) as api:
        assert api.heads is not None
        # Recorded three days ago (before any head: a head's time bounds what follows it).
        await api.store.append([fact(n) for n in range(8)], now=utcnow() - timedelta(days=3))
        await api.heads.sign()
        await api.store.append([fact(n) for n in range(8, 12)])
        status, result = await api.json("POST", "/v1/audit/retention/purge")
        assert status == 200 and result["deleted"] == 8, result
        await api.store.append([fact(n) for n in range(12, 15)])
        await api.heads.sign()
        verdict = await offline(api, tmp_path)
        assert verdict.ok, verdict
        newest = orjson.loads(heads_file(api).read_bytes().splitlines()[-1])
        assert newest["checkpoint"] == {"last_seq": 8,
                                        "last_hash": result["checkpoint"]["last_hash"]}
