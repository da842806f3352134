"""The CLI against the real thing: the four services as processes on this run's RabbitMQ vhost,
a real aiohttp receiver on 127.0.0.1 that checks signatures the guide's way.

The CLI runs in-process through :func:`cli.main.run` on a worker thread (it is synchronous and
must not block the loop the receiver answers on), with its own environment and streams.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli.errors import Exit
from cli.main import run
from demo.receiver import Receiver
from launcher.processes import System
from services.audit.decisions import GENESIS_HASH, chain_hash
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return orjson.loads(self.out)


@pytest.fixture(scope="module")
async def system(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[System]:
    sys_ = System(amqp_url, tmp_path_factory.mktemp("cli-system"),
                  env={"DIHYA_DELIVERER_RETRY_SCHEDULE": "200ms",
                       "DIHYA_DELIVERER_TIMEOUT": "3"})
    try:
        await sys_.start()  # inside: a start that times out still stops what it started
        yield sys_
    finally:
        codes = await sys_.stop()
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


class Cli:
    def __init__(self, system: System, home: Path) -> None:
        self.env = {"DIHYA_INGEST_URL": system.url("ingest"),
                    "DIHYA_AUDIT_URL": system.url("audit"),
                    "DIHYA_TOKEN": system.admin_token, "HOME": str(home), "LANG": "C.UTF-8"}

    async def __call__(self, *argv: str, stdin: str = "", **env: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        merged = {k: v for k, v in {**self.env, **env}.items() if v}
        code = await asyncio.to_thread(run, list(argv), env=merged, stdout=out, stderr=err,
                                       stdin=io.StringIO(stdin))
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def dihya(system: System, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(system, tmp_path_factory.mktemp("home"))


async def _endpoint(dihya: Cli, receiver: Receiver, name: str, *extra: str) -> dict[str, Any]:
    created = await dihya("endpoints", "create", receiver.url(name), "--json", *extra)
    assert created.code == Exit.OK, created.err
    receiver.secrets[name] = created.json["secret"]
    return dict(created.json)


async def test_endpoint_lifecycle_and_a_verified_test_delivery(
        dihya: Cli, receiver: Receiver) -> None:
    created = await dihya("endpoints", "create", receiver.url("good"), "-e", "template.*",
                          "--description", "guide receiver")
    assert created.code == Exit.OK, created.err
    assert "Store the secret now" in created.err
    endpoint_id = created.out.split()[1]
    secret = next(line.split()[-1] for line in created.out.splitlines()
                  if line.startswith("secret"))
    assert secret.startswith("whsec_")
    receiver.secrets["good"] = secret

    listed = await dihya("endpoints", "list", "--json")
    assert endpoint_id in [e["id"] for e in listed.json["items"]]
    assert "secret" not in listed.out
    shown = await dihya("--lang", "fr", "endpoints", "show", endpoint_id)
    assert "état" in shown.out and "actif" in shown.out and "guide receiver" in shown.out

    tested = await dihya("endpoints", "test", endpoint_id)
    assert tested.code == Exit.OK, (tested.out, tested.err)
    assert "✔ Delivered: the receiver answered 200." in tested.out
    assert "added for this test" in tested.err and "removed again" in tested.err
    got = [d for d in receiver.received("good") if d.json["event"] == "dihya.test"]
    assert len(got) == 1 and got[0].guide_ok, "the receiver verified the signature"
    assert got[0].json["data"]["test"] is True
    assert set(got[0].json["data"]["details"]) == {"en", "fr", "ar", "tzm"}
    after = await dihya("endpoints", "show", endpoint_id, "--json")
    assert after.json["events"] == ["template.*"], "the test subscription was taken back"

    as_json = await dihya("endpoints", "test", endpoint_id, "--event", "template.created",
                          "--json")
    assert as_json.code == Exit.OK, as_json.err
    assert as_json.json["delivered"] is True and as_json.json["subscription_added"] is False
    assert as_json.json["record"]["status_code"] == 200
    assert as_json.json["record"]["outcome"] == "delivered"

    refused = await dihya("endpoints", "test", endpoint_id, "--event", "incident.security")
    assert refused.code == Exit.USAGE and "does not subscribe" in refused.err

    updated = await dihya("endpoints", "update", endpoint_id, "--disable",
                          "--retry-schedule", "1s,2s")
    assert updated.code == Exit.OK and "disabled" in updated.out and "1s, 2s" in updated.out
    disabled = await dihya("endpoints", "test", endpoint_id)
    assert disabled.code == Exit.API_ERROR and "--enable" in disabled.err

    rotated = await dihya("endpoints", "rotate-secret", endpoint_id, "--json")
    assert rotated.code == Exit.OK and rotated.json["secret"].startswith("whsec_")
    refuse = await dihya("endpoints", "delete", endpoint_id)
    assert refuse.code == Exit.USAGE and "--yes" in refuse.err
    deleted = await dihya("endpoints", "delete", endpoint_id, "--yes")
    assert deleted.code == Exit.OK
    gone = await dihya("endpoints", "show", endpoint_id)
    assert gone.code == Exit.NOT_FOUND and "Not found" in gone.err


async def test_ed25519_and_custom_headers_from_the_command_line(
        dihya: Cli, receiver: Receiver) -> None:
    created = await dihya("endpoints", "create", receiver.url("cli-ed"), "-e", "template.*",
                          "--signature-scheme", "ed25519", "--header", "X-Api-Key=k-123=x")
    assert created.code == Exit.OK, created.err
    assert "whpk_" in created.out and "X-Api-Key: ********" in created.out
    assert "k-123" not in created.out + created.err
    assert "verify deliveries with the public key" in created.err
    endpoint_id = created.out.split()[1]
    shown = await dihya("endpoints", "show", endpoint_id, "--json")
    assert shown.json["signature_scheme"] == "ed25519"
    assert shown.json["headers"] == {"X-Api-Key": "********"}

    updated = await dihya("endpoints", "update", endpoint_id, "--header", "X-A=1",
                          "--header", "X-B=2", "--json")
    assert updated.code == Exit.OK, updated.err
    assert updated.json["headers"] == {"X-A": "********", "X-B": "********"}
    cleared = await dihya("endpoints", "update", endpoint_id, "--no-headers", "--json")
    assert cleared.code == Exit.OK and cleared.json["headers"] == {}
    refused = await dihya("endpoints", "update", endpoint_id, "--header", "Host=evil")
    assert refused.code == Exit.API_ERROR and "Host" in refused.err
    malformed = await dihya("endpoints", "update", endpoint_id, "--header", "novalue")
    assert malformed.code == Exit.USAGE and "NAME=VALUE" in malformed.err

    rotated = await dihya("endpoints", "rotate-secret", endpoint_id)
    assert rotated.code == Exit.OK and "public key" in rotated.out and "whpk_" in rotated.out
    assert (await dihya("endpoints", "delete", endpoint_id, "--yes")).code == Exit.OK


async def test_a_failing_receiver_then_the_dead_letter_store(
        dihya: Cli, receiver: Receiver) -> None:
    ep = await _endpoint(dihya, receiver, "down", "-e", "dihya.test",
                         "--retry-schedule", "none")
    receiver.statuses["down"] = [503]
    tested = await dihya("--lang", "ar", "endpoints", "test", ep["id"])
    assert tested.code == Exit.CHECK_FAILED, tested.err
    assert "✘" in tested.out and "503" in tested.out and "لم يُسلَّم" in tested.out

    async def failed() -> list[dict[str, Any]]:
        res = await dihya("deliveries", "list-failed", "--endpoint", ep["id"], "--json")
        return list(res.json["items"])

    await wait_for(failed, timeout=10)
    everywhere = await dihya("deliveries", "list-failed")
    assert ep["id"] in everywhere.out and "exhausted" in everywhere.out
    delivery_id = (await failed())[0]["delivery_id"]

    retried = await dihya("deliveries", "retry", delivery_id)
    assert retried.code == Exit.OK and "attempt 2" in retried.out
    await receiver.wait(lambda ds: len([d for d in ds if d.path == "down"]) >= 2, 10)
    assert receiver.received("down")[-1].status == 200
    again = await dihya("deliveries", "retry", delivery_id)
    assert again.code == Exit.API_ERROR and "already sent again" in again.err
    recovered = await dihya("deliveries", "recover", ep["id"], "--since", "1h", "--json")
    assert recovered.code == Exit.OK, recovered.err
    assert recovered.json["count"] == 0, "the retried delivery is not failed any more"
    nothing = await dihya("deliveries", "retry", "dlv_nope")
    assert nothing.code == Exit.NOT_FOUND


async def test_publish_query_export_verify(dihya: Cli, receiver: Receiver,
                                           tmp_path: Path) -> None:
    await _endpoint(dihya, receiver, "audited", "-e", "invoice.paid")
    event = {"event": "invoice.paid", "lang": "tzm",
             "data": {"user_id": "u42", "details": {"tzm": "ⵜⴰⴼⴰⴽⵜⵓⵔⵜ"}}}
    path = tmp_path / "event.json"
    path.write_bytes(orjson.dumps(event))
    first = await dihya("events", "publish", str(path), "--idempotency-key", "inv-1", "--json")
    assert first.code == Exit.OK, first.err
    event_id = first.json["id"]
    replay = await dihya("events", "publish", "--idempotency-key", "inv-1",
                         stdin=orjson.dumps(event).decode())
    assert replay.code == Exit.OK and event_id in replay.out
    assert "nothing was published again" in replay.err
    bad = await dihya("events", "publish", stdin="{not json")
    assert bad.code == Exit.USAGE and "not valid JSON" in bad.err
    invalid = await dihya("events", "publish", "--json", stdin='{"event": "No Good", "data": {}}')
    assert invalid.code == Exit.API_ERROR and "event:" in invalid.err
    assert invalid.json["error"]["code"] == "validation_failed"

    await receiver.wait(lambda ds: any(d.json["id"] == event_id for d in ds), 15)

    async def attempted() -> bool:
        res = await dihya("audit", "query", "--event-id", event_id, "--kind",
                          "delivery.attempted", "--json")
        return bool(res.json["records"])

    await wait_for(attempted, timeout=10)
    table = await dihya("audit", "query", "--event-id", event_id)
    assert table.code == Exit.OK
    assert "event.accepted" in table.out and "delivery.attempted" in table.out
    paged = await dihya("audit", "query", "--limit", "2", "--all", "--json")
    every = paged.json["records"]
    assert len(every) > 2 and paged.json["next_cursor"] is None
    assert [r["seq"] for r in every] == sorted(r["seq"] for r in every)

    target = tmp_path / "audit.jsonl"
    exported = await dihya("audit", "export", "-o", str(target), "--progress")
    assert exported.code == Exit.OK, exported.err
    assert "100%" in exported.err and f"to {target}" in exported.err
    lines = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert len(lines) >= len(every)
    assert [r["seq"] for r in lines[: len(every)]] == [r["seq"] for r in every]
    prev = GENESIS_HASH
    for record in lines:  # the export re-verifies offline, from the file alone
        assert record["prev_hash"] == prev
        prev = chain_hash(prev, record)
        assert record["hash"] == prev
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob(".audit.jsonl.part-*")))

    csv_file = tmp_path / "attempts.csv"
    as_csv = await dihya("audit", "export", "-o", str(csv_file), "--format", "csv",
                         "--kind", "delivery.attempted", "--json")
    assert as_csv.code == Exit.OK
    assert as_csv.json["records"] == len(csv_file.read_bytes().splitlines()) - 1 >= 1
    assert csv_file.read_text().startswith("seq,id,kind,")

    verified = await dihya("--lang", "tzm", "audit", "verify")
    assert verified.code == Exit.OK, verified.err
    assert verified.out.startswith("✔ Aseɣwen") and "hash" in verified.out
    in_tifinagh = await dihya("--lang", "tzm", "audit", "verify", DIHYA_TZM_SCRIPT="tifinagh")
    assert in_tifinagh.out.startswith("✔ ⵜⴰⵙⵍⵙⵍⵜ")

    subject = tmp_path / "u42.json"
    access = await dihya("audit", "subject-export", "u42", "-o", str(subject))
    assert access.code == Exit.OK, access.err
    exported = orjson.loads(subject.read_bytes())
    assert event_id in {e["event_id"] for e in exported["events"]}
    # ingest's retained payload rides in the same document (GDPR Art. 15: the data itself)
    [payload] = [p for p in exported["payloads"] if p["id"] == event_id]
    assert payload["payload"]["data"]["details"] == {"tzm": "ⵜⴰⴼⴰⴽⵜⵓⵔⵜ"}


async def test_tokens_and_what_each_failure_exits_with(dihya: Cli, tmp_path: Path) -> None:
    created = await dihya("tokens", "create", "--role", "viewer", "--description", "ro",
                          "--json")
    assert created.code == Exit.OK
    token_id, token = created.json["id"], created.json["token"]
    listed = await dihya("tokens", "list")
    assert token_id in listed.out and "viewer" in listed.out and token not in listed.out

    viewer = await dihya("endpoints", "list", "--json", DIHYA_TOKEN=token)
    assert viewer.code == Exit.OK
    forbidden = await dihya("tokens", "list", DIHYA_TOKEN=token)
    assert forbidden.code == Exit.AUTH and "it needs: admin" in forbidden.err
    auditing = await dihya("audit", "verify", DIHYA_TOKEN=token)
    assert auditing.code == Exit.AUTH

    revoked = await dihya("tokens", "revoke", token_id)
    assert revoked.code == Exit.OK

    async def refused() -> bool:  # the revocation reaches ingest's lookup at once
        return (await dihya("endpoints", "list", DIHYA_TOKEN=token)).code == Exit.AUTH

    await wait_for(refused, timeout=5)
    unknown = await dihya("--lang", "fr", "endpoints", "list", DIHYA_TOKEN=token)
    assert "n'a pas accepté le jeton venant de DIHYA_TOKEN" in unknown.err
    assert token not in unknown.err
    none = await dihya("endpoints", "list", DIHYA_TOKEN="")
    assert none.code == Exit.AUTH and "Set DIHYA_TOKEN, pass --token" in none.err
    missing = await dihya("tokens", "revoke", "tok_missing")
    assert missing.code == Exit.NOT_FOUND
    invalid = await dihya("endpoints", "create", "ftp://x", "-e", "a")
    assert invalid.code == Exit.API_ERROR and "url:" in invalid.err
    down = await dihya("endpoints", "list", DIHYA_INGEST_URL="http://127.0.0.1:9")
    assert down.code == Exit.UNAVAILABLE and "dihya dev" in down.err

    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.ops]\ntoken = "{dihya.env["DIHYA_TOKEN"]}"\nlang = "ar"\n')
    config.chmod(0o600)
    via_profile = await dihya("--profile", "ops", "tokens", "list", DIHYA_TOKEN="",
                              DIHYA_CONFIG=str(config))
    assert via_profile.code == Exit.OK, via_profile.err
    assert "المعرّف" in via_profile.out  # the profile's language: Arabic headers


def test_the_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "--lang", "fr", "run", "web"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert proc.returncode == Exit.USAGE
    assert "n'est pas un choix valide" in proc.stderr


async def _line_with(stream: asyncio.StreamReader, text: str, timeout: float = 60) -> str:
    async def read() -> str:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"the stream ended before a line with {text!r}")
            if text in raw.decode():
                return raw.decode()
    return await asyncio.wait_for(read(), timeout)


async def test_listen_prints_a_verified_delivery_and_removes_its_endpoint_on_sigint(
        dihya: Cli) -> None:
    """``dihya listen`` as a developer runs it, against the four services: its temporary
    endpoint gets a real signed delivery, both signatures verify, and Ctrl-C removes it."""
    env = {**os.environ, **dihya.env, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "listen", "--json", "-e", "dihya.listen-check",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready = await _line_with(proc.stderr, "dihya.listen-check")
        endpoint_id = re.search(r"ep_[0-9a-z]+", ready)
        assert endpoint_id is not None, ready
        shown = await dihya("endpoints", "show", endpoint_id.group(0), "--json")
        assert shown.code == Exit.OK and shown.json["events"] == ["dihya.listen-check"]

        event = {"event": "dihya.listen-check", "lang": "en",
                 "data": {"details": {"en": "listen check"}}}
        published = await dihya("events", "publish", "--json", stdin=orjson.dumps(event).decode())
        assert published.code == Exit.OK, published.err
        printed = orjson.loads(await _line_with(proc.stdout, published.json["id"]))
        assert printed["verified"] == {"x_dihya_signature": True, "standard_webhooks": True,
                                       "timestamp": True}
        assert printed["event"] == "dihya.listen-check" and printed["attempt"] == 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
    rest = (await proc.stderr.read()).decode()
    assert code == Exit.OK, rest
    assert f"Temporary endpoint {endpoint_id.group(0)} deleted." in rest
    gone = await dihya("endpoints", "show", endpoint_id.group(0))
    assert gone.code == Exit.NOT_FOUND


async def test_deliveries_list_events_show_and_resend(dihya: Cli, receiver: Receiver) -> None:
    """Against the ingest API's message log (``GET /v1/deliveries``, ``GET /v1/events/{id}``,
    ``POST /v1/deliveries/{id}/resend``): never skipped, a 404 there is a failure."""
    probe = await dihya("deliveries", "list", "--limit", "1", "--json")
    assert probe.code == Exit.OK, probe.err
    endpoint = await _endpoint(dihya, receiver, "browse", "-e", "browse.check")
    published = await dihya("events", "publish", "--json",
                            stdin='{"event": "browse.check", "data": {"n": 1}}')
    event_id = published.json["id"]
    await receiver.wait(lambda got: any(d.path == "browse" for d in got))

    async def listed() -> Any:
        found = await dihya("deliveries", "list", "--event", event_id, "--json")
        items = found.json["items"] if found.code == Exit.OK else []
        return items and items[0]["status"] == "delivered" and items

    await wait_for(listed, timeout=30)
    items = (await dihya("deliveries", "list", "--event", event_id, "--json")).json["items"]
    assert [(d["endpoint_id"], d["status"]) for d in items] == [(endpoint["id"], "delivered")]
    by_endpoint = await dihya("deliveries", "list", "--endpoint", endpoint["id"],
                              "--status", "delivered")
    assert items[0]["id"] in by_endpoint.out

    shown = await dihya("events", "show", event_id)
    assert shown.code == Exit.OK, shown.err
    assert '"n": 1' in shown.out and items[0]["id"] in shown.out and "200" in shown.out

    resent = await dihya("deliveries", "resend", items[0]["id"], "--wait", "30")
    assert resent.code == Exit.OK, (resent.out, resent.err)
    assert "✔ Delivered: the receiver answered 200." in resent.out
    assert len(receiver.received("browse")) == 2
    ids = {orjson.loads(d.body)["delivery"]["id"] for d in receiver.received("browse")}
    assert ids == {items[0]["id"]}, "a resend keeps the delivery's id"


async def test_tenants_from_the_cli(dihya: Cli, receiver: Receiver, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex[:8]
    created = await dihya("tenants", "create", "Acme", "--external-id", f"acme-{run_id}")
    assert created.code == Exit.OK, created.err
    tenant_id = created.out.split()[1]
    assert tenant_id.startswith("ten_") and f"acme-{run_id}" in created.out
    assert tenant_id in (await dihya("tenants", "list", "--all")).out
    shown = await dihya("tenants", "show", f"acme-{run_id}", "--json")
    assert shown.json["id"] == tenant_id

    token = await dihya("tokens", "create", "--role", "tenant_admin", "--tenant",
                        f"acme-{run_id}", "--json")
    assert token.code == Exit.OK and token.json["tenant"] == tenant_id
    ep = await _endpoint(dihya, receiver, f"tenant-{run_id}", "-e", "tenant.cli",
                         "--tenant", f"acme-{run_id}")
    assert ep["tenant"] == tenant_id
    own = await dihya("endpoints", "list", "--json", DIHYA_TOKEN=token.json["token"])
    assert [e["id"] for e in own.json["items"]] == [ep["id"]]
    filtered = await dihya("endpoints", "list", "--tenant", tenant_id, "--json")
    assert [e["id"] for e in filtered.json["items"]] == [ep["id"]]
    published = await dihya("events", "publish", "--tenant", f"acme-{run_id}", "--json",
                            stdin='{"event": "tenant.cli", "data": {}}')
    assert published.code == Exit.OK, published.err
    got = await receiver.wait(lambda ds: any(d.path == f"tenant-{run_id}"
                                             and d.json["id"] == published.json["id"]
                                             for d in ds), 30)
    [delivery] = [d for d in got if d.path == f"tenant-{run_id}"]
    assert delivery.guide_ok and "tenant" not in delivery.json  # not in the delivered body

    async def audited() -> bool:  # the audit log files the tenant's records under it
        found = await dihya("audit", "query", "--tenant", tenant_id, "--json", "--all")
        kinds = {r["kind"] for r in found.json["records"]} if found.code == Exit.OK else set()
        return {"tenant.created", "endpoint.created", "event.accepted",
                "delivery.attempted"} <= kinds

    await wait_for(audited, timeout=30)
    # one file: ingest's export of the tenant, then its audit records
    path = tmp_path / "acme.jsonl"
    exported = await dihya("tenants", "export", f"acme-{run_id}", "-o", str(path), "--json")
    assert exported.code == Exit.OK, exported.err
    lines = [orjson.loads(x) for x in (await asyncio.to_thread(path.read_bytes)).splitlines()]
    assert lines[0]["type"] == "tenant" and lines[0]["id"] == tenant_id
    assert [x["id"] for x in lines if x["type"] == "endpoint"] == [ep["id"]]
    assert published.json["id"] in [x["id"] for x in lines if x["type"] == "event"]
    audit = [x["record"] for x in lines if x["type"] == "audit_record"]
    assert audit and {r["tenant"] for r in audit} == {tenant_id}
    assert {"tenant.created", "endpoint.created", "event.accepted"} <= {r["kind"] for r in audit}
    assert exported.json["audit_records"] == len(audit) and exported.json["lines"] == len(lines)
    assert token.json["token"] not in path.read_text(encoding="utf-8")
    gone = await dihya("tenants", "delete", f"acme-{run_id}", "--yes")
    assert gone.code == Exit.OK, gone.err
    assert "1 endpoints removed, 1 tokens revoked" in gone.out
    assert (await dihya("tenants", "show", tenant_id)).code == Exit.NOT_FOUND
