"""HTTP API of the audit service: query and verify the log (roles ``auditor`` and ``admin``)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from services.audit import handlers, openapi
from services.audit.store import AuditStore
from shared.contracts import Role
from shared.web import (
    REFUSAL_HOOK,
    TOKEN_LOOKUP,
    ReadinessCheck,
    RefusalHook,
    TokenLookup,
    add_ops_routes,
    authorize,
    error,
    errors_middleware,
    json_response,
)

STORE: web.AppKey[AuditStore] = web.AppKey("audit_store")
PAGE_LIMIT: web.AppKey[int] = web.AppKey("audit_page_limit")
OPENAPI: web.AppKey[bytes] = web.AppKey("audit_openapi")

READERS: tuple[Role, ...] = ("auditor", "admin")


async def list_records(request: web.Request) -> web.Response:
    await authorize(request, *READERS)
    try:
        query = handlers.parse_query(request.query.items(), request.app[PAGE_LIMIT])
    except handlers.QueryError as exc:
        raise error(422, "invalid_query", "A query parameter is invalid.", exc.fields) from None
    found, more = await request.app[STORE].page(query)
    return json_response({
        "records": [handlers.to_json(r) for r in found],
        "next_cursor": handlers.encode_cursor(found[-1]["seq"]) if more and found else None,
    })


async def verify(request: web.Request) -> web.Response:
    await authorize(request, *READERS)
    report = await request.app[STORE].verify()
    return json_response(report.as_json())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def make_app(
    store: AuditStore,
    *,
    lookup: TokenLookup,
    on_refusal: RefusalHook,
    checks: Mapping[str, ReadinessCheck],
    page_limit: int,
) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[STORE] = store
    app[PAGE_LIMIT] = page_limit
    app[OPENAPI] = orjson.dumps(openapi.document(page_limit))
    app[TOKEN_LOOKUP] = lookup
    app[REFUSAL_HOOK] = on_refusal
    app.router.add_get("/v1/audit/records", list_records)
    app.router.add_get("/v1/audit/verify", verify)
    app.router.add_get("/v1/openapi.json", openapi_json)
    add_ops_routes(app, checks)
    return app
