"""Tenant tokens read their own tenant's audit records (#21), against each real store: the
audit HTTP app in-process over a store filled directly, its token replica fed the grants
ingest publishes (``TokenGrant`` with ``tenant``). Every route is called with each tenant's
tokens: records and export show only the token's own tenant (never a platform-wide record or
another tenant's), a ``tenant`` filter naming another tenant answers 404 as an unknown one
would, and the platform-only routes answer 403.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from services.audit.http import HEAD_SEQ_HEADER, routes
from shared.contracts import TokenGrant, utcnow
from shared.web import hash_token
from tests.integration.test_audit_gdpr import Api, fact, served

pytestmark = pytest.mark.integration

TENANTS = ("ten_a", "ten_b")
TOKENS = {(tenant, role): f"{role}-{tenant}-{uuid.uuid4().hex}"
          for tenant in TENANTS for role in ("tenant_admin", "tenant_viewer")}
_READ_OWN = {"list_records", "export"}
_OPEN = {"openapi_json"}


def _grant(tenant: str | None, role: str, token: str) -> TokenGrant:
    return TokenGrant.model_validate({
        "token_id": f"tok_{role}_{tenant}", "role": role, "token_hash": hash_token(token),
        "issued_at": utcnow(), "tenant": tenant})


async def _filled(api: Api) -> None:
    for (tenant, role), token in TOKENS.items():
        assert await api.store.apply_grant(_grant(tenant, role, token)) == "applied"
    await api.store.append([fact(i, tenant=TENANTS[i % 3] if i % 3 < 2 else None)
                            for i in range(30)])  # a, b, platform-wide, a, b, …


async def _records(api: Api, token: str, **params: str) -> tuple[int, Any]:
    return await api.json("GET", "/v1/audit/records", token, limit="500", **params)


async def test_tenant_tokens_read_their_own_tenants_records_only(database_url: str) -> None:
    async with served(database_url) as api:
        await _filled(api)
        everything = await api.records()
        assert len(everything) == 30
        for (tenant, _role), token in TOKENS.items():
            status, body = await _records(api, token)
            assert status == 200, body
            mine = [r["id"] for r in everything if r.get("tenant") == tenant]
            assert [r["id"] for r in body["records"]] == mine and len(mine) == 10
            status, again = await _records(api, token, tenant=tenant, kind="event.accepted")
            assert status == 200 and [r["id"] for r in again["records"]] == mine

            status, raw, headers = await api.call("GET", "/v1/audit/export", token)
            assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
            exported = [orjson.loads(line) for line in raw.splitlines()]
            assert [r["id"] for r in exported] == mine
            assert {r["tenant"] for r in exported} == {tenant}

            other = next(t for t in TENANTS if t != tenant)
            for ref in (other, "ten_nobody"):  # another tenant's answers as a missing one's
                status, body = await _records(api, token, tenant=ref)
                assert status == 404 and body["error"]["code"] == "not_found", body
                status, raw, _ = await api.call("GET", "/v1/audit/export", token, tenant=ref)
                assert status == 404 and other.encode() not in raw
        print(f"[books audit tenants] records={len(everything)} per tenant=10 "
              f"platform-wide={sum(r.get('tenant') is None for r in everything)} "
              f"tokens={len(TOKENS)}")


async def test_only_a_platform_tokens_export_carries_the_logs_head(database_url: str) -> None:
    """The head numbers every tenant's records: a tenant's export must not tell it how many
    the platform holds, an admin's export still says where it stopped."""
    async with served(database_url) as api:
        await _filled(api)
        head = str(await api.store.head_seq())
        status, raw, headers = await api.call("GET", "/v1/audit/export")  # the admin token
        assert status == 200 and headers[HEAD_SEQ_HEADER] == head == "30", headers
        assert len(raw.splitlines()) == 30
        for (tenant, role), token in TOKENS.items():
            for fmt in ("jsonl", "csv"):
                status, raw, headers = await api.call("GET", "/v1/audit/export", token,
                                                      format=fmt)
                assert status == 200 and tenant.encode() in raw, (tenant, role, fmt)
                assert HEAD_SEQ_HEADER not in headers, (tenant, role, fmt, headers)
                assert "Content-Disposition" in headers


async def test_tenant_tokens_get_403_on_every_platform_route(database_url: str) -> None:
    async with served(database_url) as api:
        await _filled(api)
        token = TOKENS[("ten_a", "tenant_admin")]
        checked = set()
        for route in routes(500):
            if route.handler in _READ_OWN | _OPEN:
                continue
            path = route.path.replace("{subject}", "user_1")
            status, _, _ = await api.call(route.method, path, token)
            assert status == 403, (route.method, route.path, status)
            checked.add(route.handler)
        assert checked | _READ_OWN | _OPEN == {r.handler for r in routes(500)}


async def test_a_tenant_token_granted_without_its_tenant_reads_nothing(
    database_url: str
) -> None:
    async with served(database_url) as api:
        await _filled(api)
        token = "orphan-" + uuid.uuid4().hex
        await api.store.apply_grant(_grant(None, "tenant_viewer", token))
        status, body = await _records(api, token)
        assert status == 404, body
