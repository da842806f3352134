"""Ingest's administration API against the real broker and both storages.

Ingest runs in-process on a free port with this session's vhost; the tests watch what it
publishes through their own auto-delete queues bound to the work, audit and control exchanges.
The helpers at the top are shared with ``test_ingest_events.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from pydantic import SecretStr

from services.ingest.app import start
from services.ingest.settings import Settings
from shared import topology
from shared.broker import declare
from shared.contracts import EndpointSecret, TokenGrant
from tests.conftest import free_port
from tests.observe import Seen, seen

pytestmark = pytest.mark.integration

ADMIN = "dihya_test_admin_token_0123456789abcdef"
EVERYTHING = ((topology.WORK_EXCHANGE, topology.SIGN), (topology.AUDIT_EXCHANGE, "#"),
              (topology.CONTROL_EXCHANGE, "#"))
_UNSET: Any = object()


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    headers: Mapping[str, str]


@dataclass
class Client:
    http: aiohttp.ClientSession
    base: str

    async def call(self, method: str, path: str, *, token: str | None = ADMIN,
                   json: Any = _UNSET, data: bytes | None = None,
                   headers: Mapping[str, str] | None = None) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": hdrs}
        if json is not _UNSET:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            body = orjson.loads(text) if resp.content_type == "application/json" else None
            return Reply(resp.status, body, text, resp.headers)

    async def endpoint(self, events: Sequence[str], *, url: str = "https://hooks.example.com/h",
                       **extra: Any) -> dict[str, Any]:
        reply = await self.call("POST", "/v1/endpoints",
                                json={"url": url, "events": list(events), **extra})
        assert reply.status == 201, reply.text
        return dict(reply.body)

    async def token(self, role: str) -> dict[str, Any]:
        reply = await self.call("POST", "/v1/tokens", json={"role": role})
        assert reply.status == 201, reply.text
        return dict(reply.body)


@contextlib.asynccontextmanager
async def running_ingest(amqp_url: str, database_url: str, **overrides: Any
                         ) -> AsyncIterator[Client]:
    """Ingest started in-process (``start(Settings)``), stopped on exit."""
    port = free_port()
    settings = Settings(**{"amqp_url": SecretStr(amqp_url), "admin_token": SecretStr(ADMIN),
                           "database_url": database_url, "host": "127.0.0.1", "port": port,
                           "shutdown_grace": 5.0, "publish_timeout": 5.0,
                           # the tests written before tenants publish without one (#21)
                           "default_tenant": "default", **overrides})
    stop = await start(settings)
    try:
        async with aiohttp.ClientSession() as http:
            yield Client(http, f"http://127.0.0.1:{port}")
    finally:
        await stop()


@dataclass
class Observer:
    """An auto-delete queue of the test's own, bound where ingest publishes; keeps copies."""

    messages: list[Seen] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, connection: AbstractRobustConnection,
                    bindings: Sequence[tuple[str, str]] = EVERYTHING) -> Observer:
        self = cls()
        channel = await connection.channel()
        await declare(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for exchange, key in bindings:
            await queue.bind(exchange, key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.extend(seen(message))
        self._changed.set()

    async def wait(self, predicate: Callable[[list[Seen]], bool], timeout: float = 15.0
                   ) -> list[Seen]:
        """Wait (event-driven) until ``predicate(messages)`` holds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    if predicate(self.messages):
                        return self.messages
                    await self._changed.wait()
        except TimeoutError:
            kinds = [(m.exchange, m.routing_key) for m in self.messages]
            raise AssertionError(f"not observed within {timeout}s; saw {kinds}") from None

    def on(self, exchange: str, routing_key: str | None = None) -> list[Seen]:
        return [m for m in self.messages if m.exchange == exchange
                and (routing_key is None or m.routing_key == routing_key)]

    def facts(self, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        out = [m.json for m in self.on(topology.AUDIT_EXCHANGE, kind)]
        return [f for f in out if all(f.get(k) == v for k, v in match.items())]

    def jobs(self, event_id: str) -> list[dict[str, Any]]:
        return [j for j in (m.json for m in self.on(topology.WORK_EXCHANGE, topology.SIGN))
                if j["event"]["id"] == event_id]


# -- endpoints ----------------------------------------------------------------------------


async def test_endpoint_lifecycle_hands_the_secret_to_the_signer_only(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    created = await ingest.call("POST", "/v1/endpoints", json={
        "url": "https://hooks.example.com/a", "events": ["template.created", "incident.*"],
        "description": "first"})
    assert created.status == 201, created.text
    ep = created.body
    assert ep["id"].startswith("ep_") and ep["status"] == "enabled"
    assert ep["url"] == "https://hooks.example.com/a" and ep["description"] == "first"
    assert ep["events"] == ["template.created", "incident.*"] and ep["created_at"]
    secret = ep["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24

    await obs.wait(lambda _: bool(obs.facts("endpoint.created", endpoint_id=ep["id"])))
    [handover] = [m for m in obs.on(topology.CONTROL_EXCHANGE, "secret.set")
                  if m.json["endpoint_id"] == ep["id"]]
    assert handover.type == "dihya.endpoint_secret.v1"
    message = EndpointSecret.model_validate_json(handover.body)
    assert message.action == "set" and message.secret is not None
    assert message.secret.get_secret_value() == secret
    [fact] = obs.facts("endpoint.created", endpoint_id=ep["id"])
    assert fact["actor"] == "tok_bootstrap_admin" and fact["url"] == ep["url"]

    got = await ingest.call("GET", f"/v1/endpoints/{ep['id']}")
    assert got.status == 200 and "secret" not in got.body and secret not in got.text
    assert {k: got.body[k] for k in ("id", "url", "events", "status")} == {
        k: ep[k] for k in ("id", "url", "events", "status")}
    listed = await ingest.call("GET", "/v1/endpoints")
    assert listed.status == 200 and secret not in listed.text
    assert ep["id"] in [item["id"] for item in listed.body["items"]]

    patched = await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}",
                                json={"status": "disabled", "events": ["template.#"]})
    assert patched.status == 200, patched.text
    assert patched.body["status"] == "disabled" and patched.body["events"] == ["template.#"]
    again = await ingest.call("GET", f"/v1/endpoints/{ep['id']}")
    assert again.body["status"] == "disabled" and again.body["events"] == ["template.#"]
    assert again.body["description"] == "first"
    assert again.body["updated_at"] >= again.body["created_at"]
    cleared = await ingest.call("PATCH", f"/v1/endpoints/{ep['id']}", json={"description": None})
    assert cleared.status == 200 and cleared.body["description"] is None

    own = await ingest.endpoint(["a.b"], secret="my-own-secret-0123456789")
    assert own["secret"] == "my-own-secret-0123456789"
    await obs.wait(lambda _: any(m.json["endpoint_id"] == own["id"]
                                 for m in obs.on(topology.CONTROL_EXCHANGE, "secret.set")))

    deleted = await ingest.call("DELETE", f"/v1/endpoints/{ep['id']}")
    assert deleted.status == 204
    await obs.wait(lambda _: bool(obs.facts("endpoint.deleted", endpoint_id=ep["id"])))
    [gone] = [m for m in obs.on(topology.CONTROL_EXCHANGE, "secret.delete")
              if m.json["endpoint_id"] == ep["id"]]
    assert EndpointSecret.model_validate_json(gone.body).secret is None
    missing = await ingest.call("GET", f"/v1/endpoints/{ep['id']}")
    assert missing.status == 404 and missing.body["error"]["code"] == "not_found"
    assert (await ingest.call("DELETE", f"/v1/endpoints/{ep['id']}")).status == 404

    await obs.wait(lambda _: bool(obs.facts("endpoint.updated", endpoint_id=ep["id"])))
    audit = b"".join(m.body for m in obs.on(topology.AUDIT_EXCHANGE))
    assert secret.encode() not in audit and b"my-own-secret" not in audit


async def test_rotation_hands_over_a_new_secret_with_an_overlap(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    ep = await ingest.endpoint(["a.b"])
    rotated = await ingest.call("POST", f"/v1/endpoints/{ep['id']}/secret/rotate",
                                json={"overlap_seconds": 3600})
    assert rotated.status == 200, rotated.text
    new = rotated.body["secret"]
    assert new != ep["secret"] and new.startswith("whsec_")
    await obs.wait(lambda _: bool(obs.facts("secret.set", endpoint_id=ep["id"])))
    handovers = [EndpointSecret.model_validate_json(m.body)
                 for m in obs.on(topology.CONTROL_EXCHANGE, "secret.set")
                 if m.json["endpoint_id"] == ep["id"]]
    last = handovers[-1]
    assert last.secret is not None and last.secret.get_secret_value() == new
    assert last.previous_valid_until is not None
    assert (last.previous_valid_until - last.issued_at).total_seconds() == 3600
    assert new.encode() not in b"".join(m.body for m in obs.on(topology.AUDIT_EXCHANGE))
    missing = await ingest.call("POST", "/v1/endpoints/ep_nope/secret/rotate", json={})
    assert missing.status == 404


async def test_errors_are_json_and_name_the_fields(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker, [(topology.AUDIT_EXCHANGE, "access.refused")])
    viewer = await ingest.token("viewer")
    good = {"url": "https://hooks.example.com/x", "events": ["a.b"]}

    anonymous = await ingest.call("POST", "/v1/endpoints", token=None, json=good)
    assert anonymous.status == 401 and anonymous.body["error"]["code"] == "unauthorized"
    wrong = await ingest.call("POST", "/v1/endpoints", token="dihya_not-a-real-token", json=good)
    assert wrong.status == 401
    forbidden = await ingest.call("POST", "/v1/endpoints", token=viewer["token"], json=good)
    assert forbidden.status == 403 and forbidden.body["error"]["code"] == "forbidden"
    assert (await ingest.call("GET", "/v1/endpoints", token=viewer["token"])).status == 200

    plain = await ingest.call("POST", "/v1/endpoints", data=b"url=x",
                              headers={"Content-Type": "text/plain"})
    assert plain.status == 415 and plain.body["error"]["code"] == "unsupported_media_type"
    huge = await ingest.call("POST", "/v1/endpoints", data=b'"' + b"x" * 300_000 + b'"',
                             headers={"Content-Type": "application/json"})
    assert huge.status == 413 and huge.body["error"]["code"] == "body_too_large"
    broken = await ingest.call("POST", "/v1/endpoints", data=b"{not json",
                               headers={"Content-Type": "application/json"})
    assert broken.status == 400 and broken.body["error"]["code"] == "invalid_json"
    invalid = await ingest.call("POST", "/v1/endpoints", json={
        "url": "ftp://hooks.example.com/", "events": [], "secret": "tiny-secret"})
    assert invalid.status == 422 and invalid.body["error"]["code"] == "validation_failed"
    assert {f["field"] for f in invalid.body["error"]["fields"]} == {"url", "events", "secret"}
    assert "tiny-secret" not in invalid.text
    patch = await ingest.call("PATCH", "/v1/endpoints/ep_nope", json={"status": "disabled"})
    assert patch.status == 404 and patch.body["error"]["code"] == "not_found"
    empty_patch = await ingest.call("PATCH", "/v1/endpoints/ep_nope", json={})
    assert empty_patch.status == 422
    limit = await ingest.call("GET", "/v1/endpoints?limit=0")
    assert limit.status == 422 and limit.body["error"]["fields"][0]["field"] == "limit"

    for method, path in [("GET", "/v1/nothing-here"), ("GET", "/"), ("PUT", "/v1/endpoints")]:
        reply = await ingest.call(method, path)
        assert reply.status in (404, 405) and reply.body["error"]["code"], (method, path)

    await obs.wait(lambda ms: len(ms) >= 3)
    refused = obs.facts("access.refused")
    assert sorted((f["reason"], f["actor"]) for f in refused) == sorted([
        ("unauthenticated", None), ("unauthenticated", None), ("forbidden", viewer["id"])])
    assert all(f["details"] == {"path": "/v1/endpoints", "method": "POST"} for f in refused)
    blob = b"".join(m.body for m in obs.messages)
    assert b"not-a-real-token" not in blob and viewer["token"].encode() not in blob


async def test_pagination_walks_every_endpoint(ingest: Client) -> None:
    made = {(await ingest.endpoint(["page.n"]))["id"] for _ in range(5)}
    seen: list[str] = []
    after = ""
    while True:
        page = await ingest.call("GET", f"/v1/endpoints?limit=2&after={after}")
        assert page.status == 200 and len(page.body["items"]) <= 2
        seen += [item["id"] for item in page.body["items"]]
        if page.body["next"] is None:
            break
        after = page.body["next"]
    assert made <= set(seen) and len(seen) == len(set(seen))


async def test_an_endpoint_is_not_created_when_its_secret_cannot_be_handed_over(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    channel = await broker.channel()
    control = await channel.get_queue(topology.SIGNER_CONTROL, ensure=False)
    await control.unbind(topology.CONTROL_EXCHANGE, "secret.#")
    try:  # secret.* is now unroutable: the mandatory publish comes back and fails
        failed = await ingest.call("POST", "/v1/endpoints", json={
            "url": "https://hooks.example.com/rollback", "events": ["a.b"]})
    finally:
        await control.bind(topology.CONTROL_EXCHANGE, "secret.#")
        await channel.close()
    assert failed.status == 503, failed.text
    assert failed.body["error"]["code"] == "broker_unavailable"
    # the text is true whether or not the secret reached the signer (#17: no "nothing changed")
    assert "no endpoint was created" in failed.body["error"]["message"]
    assert "nothing was changed" not in failed.text.lower()
    listed = await ingest.call("GET", "/v1/endpoints?limit=1000")
    assert "https://hooks.example.com/rollback" not in [e["url"] for e in listed.body["items"]]
    await ingest.endpoint(["a.b"], url="https://hooks.example.com/rollback")  # recovers


async def test_a_token_unannounced_is_neither_created_nor_revoked_and_the_503_says_so(
    ingest: Client, broker: AbstractRobustConnection
) -> None:
    """The grant goes to the audit service; unconfirmed, ingest rolls back and the 503 says
    what did and did not happen (the grant may have arrived; the token was never shown)."""
    kept = await ingest.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert kept.status == 201, kept.text
    channel = await broker.channel()
    control = await channel.get_queue(topology.AUDIT_CONTROL, ensure=False)
    await control.unbind(topology.CONTROL_EXCHANGE, "token.#")
    try:  # token.* is now unroutable: the mandatory publish comes back and fails
        created = await ingest.call("POST", "/v1/tokens", json={"role": "viewer",
                                                                "description": "lost"})
        revoked = await ingest.call("DELETE", f"/v1/tokens/{kept.body['id']}")
    finally:
        await control.bind(topology.CONTROL_EXCHANGE, "token.#")
        await channel.close()
    assert created.status == 503 and created.body["error"]["code"] == "broker_unavailable"
    assert "no token was created" in created.body["error"]["message"]
    assert "token" not in created.body or created.body.get("token") is None
    assert revoked.status == 503 and "is not revoked" in revoked.body["error"]["message"]
    assert "nothing was changed" not in (created.text + revoked.text).lower()
    listed = (await ingest.call("GET", "/v1/tokens?limit=1000")).body["items"]
    assert "lost" not in [t["description"] for t in listed]
    [still] = [t for t in listed if t["id"] == kept.body["id"]]
    assert still["revoked_at"] is None
    again = await ingest.call("DELETE", f"/v1/tokens/{kept.body['id']}")
    assert again.status == 204  # the retry completes it


# -- tokens -------------------------------------------------------------------------------


async def test_tokens_are_issued_listed_revoked_and_roles_enforced(
    amqp_url: str, database_url: str, broker: AbstractRobustConnection
) -> None:
    obs = await Observer.start(broker)
    async with running_ingest(amqp_url, database_url) as ingest:
        created = await ingest.call("POST", "/v1/tokens",
                                    json={"role": "publisher", "description": "ci"})
        assert created.status == 201, created.text
        pub = created.body
        assert pub["id"].startswith("tok_") and pub["role"] == "publisher"
        assert pub["token"].startswith("dihya_") and len(pub["token"]) > 40
        await obs.wait(lambda _: bool(obs.facts("token.created")))
        [grant_msg] = [m for m in obs.on(topology.CONTROL_EXCHANGE, "token.created")
                       if m.json["token_id"] == pub["id"]]
        grant = TokenGrant.model_validate_json(grant_msg.body)
        assert grant.role == "publisher" and not grant.revoked
        assert grant.token_hash == hashlib.sha256(pub["token"].encode()).hexdigest()
        [fact] = obs.facts("token.created")
        assert fact["actor"] == "tok_bootstrap_admin" and fact["details"]["token_id"] == pub["id"]

        listed = await ingest.call("GET", "/v1/tokens")
        assert listed.status == 200 and pub["token"] not in listed.text
        [row] = [t for t in listed.body["items"] if t["id"] == pub["id"]]
        assert "token" not in row and "token_hash" not in row and row["revoked_at"] is None
        assert row["description"] == "ci"

        denied = await ingest.call("POST", "/v1/endpoints", token=pub["token"],
                                   json={"url": "https://hooks.example.com/", "events": ["a"]})
        assert denied.status == 403 and denied.body["error"]["code"] == "forbidden"
        assert (await ingest.call("GET", "/v1/tokens", token=pub["token"])).status == 403
        published = await ingest.call("POST", "/v1/events", token=pub["token"],
                                      json={"event": "roles.ok", "data": {}})
        assert published.status == 202, published.text
        viewer = await ingest.token("viewer")
        bad_role = await ingest.call("POST", "/v1/tokens", json={"role": "root"})
        assert bad_role.status == 422 and bad_role.body["error"]["fields"][0]["field"] == "role"

    # tokens live in storage: a restarted ingest still knows them
    async with running_ingest(amqp_url, database_url) as ingest:
        assert (await ingest.call("GET", "/v1/endpoints", token=viewer["token"])).status == 200
        revoked = await ingest.call("DELETE", f"/v1/tokens/{pub['id']}")
        assert revoked.status == 204
        await obs.wait(lambda _: bool(obs.facts("token.revoked")))
        [revoke_msg] = [m for m in obs.on(topology.CONTROL_EXCHANGE, "token.revoked")
                        if m.json["token_id"] == pub["id"]]
        assert TokenGrant.model_validate_json(revoke_msg.body).revoked
        after = await ingest.call("POST", "/v1/events", token=pub["token"],
                                  json={"event": "roles.ok", "data": {}})
        assert after.status == 401
        listed = await ingest.call("GET", "/v1/tokens")
        [row] = [t for t in listed.body["items"] if t["id"] == pub["id"]]
        assert row["revoked_at"] is not None
        assert (await ingest.call("DELETE", "/v1/tokens/tok_nope")).status == 404

    await obs.wait(lambda _: any(f["actor"] == pub["id"] for f in obs.facts("access.refused")))
    blob = b"".join(m.body for m in obs.messages)
    assert pub["token"].encode() not in blob and viewer["token"].encode() not in blob
    assert ADMIN.encode() not in blob


# -- ops ----------------------------------------------------------------------------------


async def test_openapi_health_readiness_and_metrics(amqp_url: str, tmp_path: Path) -> None:
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/ingest.db") as ingest:
        doc = await ingest.call("GET", "/v1/openapi.json", token=None)
        assert doc.status == 200 and doc.body["openapi"] == "3.1.0"
        assert "/v1/events" in doc.body["paths"]
        health = await ingest.call("GET", "/healthz", token=None)
        assert health.status == 200
        ready = await ingest.call("GET", "/readyz", token=None)
        assert ready.status == 200
        assert ready.body == {"ready": True, "checks": {"broker": True, "storage": True,
                                                         "consuming": True}}
        metrics = await ingest.call("GET", "/metrics", token=None)
        assert metrics.status == 200
        for name in ("dihya_ingest_events_accepted", "dihya_ingest_events_rejected",
                     "dihya_ingest_fanout_jobs_total"):
            assert name in metrics.text
