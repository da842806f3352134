"""The running audit service signs heads and publishes them to both sinks — the heads file and
the fanout exchange ``dihya.audit.heads`` — retrying through real faults (the file's
directory missing, the exchange with no queue bound), and refuses to start in production mode
without its keys. Real RabbitMQ, each real store."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import structlog
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr

from services.audit import openapi
from services.audit.http import routes
from shared import anchor, topology
from shared.broker import Publisher
from shared.contracts import AuditHead
from shared.openapi import component
from tests.conftest import wait_for
from tests.integration.test_audit_retention import drop_guards, sql
from tests.integration.test_audit_service import (
    ADMIN,
    Audit,
    make_facts,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration

HEAD_KEY = base64.b64encode(os.urandom(32)).decode()
CHECKPOINT_KEY = base64.b64encode(os.urandom(32)).decode()


def metric(text: str, name: str, sink: str) -> float:
    match = re.search(rf'^{name}{{sink="{sink}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_heads_reach_both_sinks_through_faults(
        amqp_url: str, database_url: str, broker: AbstractRobustConnection,
        tmp_path: Path) -> None:
    heads_dir = tmp_path / "worm"  # missing at first: the file sink fails
    settings = settings_for(amqp_url, database_url, mode="production",
                            head_key=SecretStr(HEAD_KEY),
                            checkpoint_key=SecretStr(CHECKPOINT_KEY),
                            heads_file=str(heads_dir / "heads.jsonl"), heads_interval=0.2)
    channel = await broker.channel()
    publisher = await Publisher.open(broker)
    async with running(settings) as audit:
        # No queue bound to the heads exchange: every head comes back unroutable.
        await channel.queue_delete(topology.AUDIT_HEADS)
        await asyncio.gather(*(publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
                               for fact in make_facts(40, uuid.uuid4().hex[:8])))

        async def failing() -> bool:
            _, text = await audit.get("/metrics")
            return all(metric(text, "dihya_audit_heads_unpublished", sink) >= 3
                       for sink in ("file", "exchange"))

        await wait_for(failing, timeout=30)

        async def all_stored() -> bool:  # no record arrives after the export below
            return await audit.count() >= 40

        await wait_for(all_stored, timeout=30)
        _, text = await audit.get("/metrics")
        failures = {sink: metric(text, "dihya_audit_head_publish_failures_total", sink)
                    for sink in ("file", "exchange")}  # attempts, each retrying the oldest
        pending = {sink: metric(text, "dihya_audit_heads_unpublished", sink)
                   for sink in ("file", "exchange")}
        assert min(failures.values()) >= 3, failures

        # Both faults repaired: an auditor's queue is bound, the directory exists.
        mine = await channel.declare_queue(f"auditor-{uuid.uuid4().hex[:6]}", exclusive=True)
        await mine.bind(topology.AUDIT_HEADS_EXCHANGE, "")
        heads_dir.mkdir()

        async def caught_up() -> bool:
            _, text = await audit.get("/metrics")
            return all(metric(text, "dihya_audit_heads_unpublished", sink) == 0
                       for sink in ("file", "exchange"))

        await wait_for(caught_up, timeout=60)
        status, signed = await audit_post(audit, "/v1/audit/heads")
        assert status == 200 and signed["unpublished"] == {"file": 0, "exchange": 0}
        jsonschema.validate(signed, component(openapi.document(routes(500)), "SignedHead"))
        export = await audit_export(audit)
        status, report = await audit.get("/v1/audit/verify")
        assert report["ok"] and report["signed_head"]["matches"], report
        assert report["signed_head"]["seq"] == signed["head"]["seq"]
    # stopped: a last head was signed on shutdown and reached both sinks

    lines = (heads_dir / "heads.jsonl").read_bytes().splitlines()
    in_file = [orjson.loads(line) for line in lines]
    received: list[dict[str, Any]] = []
    while (message := await mine.get(fail=False, timeout=5)) is not None:
        received.append(orjson.loads(message.body))
        assert message.type == anchor.HEAD_TYPE and message.delivery_mode == 2
        await message.ack()
    # The file holds every head, the first ones (signed while it was missing) included;
    # the auditor's queue every head from its binding on, in the same order, the last too.
    assert in_file[0]["previous_head_hash"] == anchor.GENESIS_HASH
    assert len(in_file) >= pending["file"] + 2  # + ours and the shutdown head
    assert received == in_file[len(in_file) - len(received):]
    assert received[-1] == in_file[-1]
    assert in_file[-1]["time"] > signed["head"]["time"]  # the shutdown head, after ours
    for head in received:
        AuditHead.model_validate(head)  # the published contract
        assert anchor.canonical(head) in lines
    verdict = anchor.verify(in_file, base64.b64decode(report["heads"]["public_key"]),
                            anchor.parse_lines(export.splitlines()))
    print(f"books: heads in file={len(in_file)} received={len(received)} failed attempts="
          f"{failures} pending at worst={pending} records={verdict.records} "
          f"verdict={verdict.kind or 'ok'}")
    assert verdict.ok, verdict
    await channel.declare_queue(topology.AUDIT_HEADS, durable=True,
                                arguments=topology.HEADS_QUEUE.arguments)


async def audit_post(audit: Audit, path: str) -> tuple[int, Any]:
    async with audit.session.post(audit.base + path,
                                  headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        return resp.status, await resp.json()


async def audit_export(audit: Audit) -> bytes:
    async with audit.session.get(audit.base + "/v1/audit/export",
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_production_mode_refuses_to_start_without_its_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIHYA_")}
    env.update({"DIHYA_AUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/audit.db",
                "DIHYA_LOG_FORMAT": "json", "DIHYA_AMQP_URL": "amqp://nobody@127.0.0.1:1/"})
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.audit"], env=env,
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout + proc.stderr
    assert "start_refused" in out
    assert "DIHYA_AUDIT_HEAD_KEY" in out and "DIHYA_AUDIT_CHECKPOINT_KEY" in out
    assert not (tmp_path / "audit.db").exists()  # refused before touching anything

    env["DIHYA_AUDIT_HEAD_KEY_FILE"] = str(tmp_path / "missing.key")
    env["DIHYA_AUDIT_CHECKPOINT_KEY"] = CHECKPOINT_KEY
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.audit"], env=env,
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "DIHYA_AUDIT_HEAD_KEY_FILE cannot be read" in (
        proc.stdout + proc.stderr)


async def test_start_warns_of_keys_in_the_database_missing_triggers_and_a_lost_head(
        amqp_url: str, database_url: str, broker: AbstractRobustConnection,
        tmp_path: Path) -> None:
    heads_file = tmp_path / "heads.jsonl"
    settings = settings_for(amqp_url, database_url, heads_file=str(heads_file))  # development
    publisher = await Publisher.open(broker)
    async with running(settings) as audit:
        await asyncio.gather(*(publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)
                               for fact in make_facts(5, uuid.uuid4().hex[:8])))

        async def stored() -> bool:
            return await audit.count() >= 5

        await wait_for(stored)
        status, signed = await audit_post(audit, "/v1/audit/heads")
        assert status == 200 and signed["head"]["seq"] >= 5
    with structlog.testing.capture_logs() as logs:
        async with running(settings):
            pass
    events = {entry["event"]: entry for entry in logs}
    assert events["keys_in_database"]["keys"] == ["head", "checkpoint"]
    assert "append_only_triggers_missing" not in events
    assert "database_does_not_match_last_head" not in events

    # The insider drops the triggers and deletes the newest record while audit is stopped.
    await sql(database_url, *drop_guards(database_url),
              "DELETE FROM records WHERE seq = (SELECT max(seq) FROM records)")
    last = orjson.loads(heads_file.read_bytes().splitlines()[-1])  # the shutdown head
    with structlog.testing.capture_logs() as logs:
        async with running(settings):
            pass
    events = {entry["event"]: entry for entry in logs}
    assert events["append_only_triggers_missing"]["triggers"]
    lost = events["database_does_not_match_last_head"]
    assert lost["log_level"] == "error" and lost["seq"] == last["seq"]
