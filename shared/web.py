"""HTTP helpers every Dihya HTTP surface uses: JSON errors, bearer-token auth, ops routes.

Errors share one machine-readable shape, so clients handle every service alike::

    {"error": {"code": "validation_failed", "message": "...",
               "fields": [{"field": "data", "message": "Field required"}]}}

Auth: ``Authorization: Bearer <token>``. Tokens are random and high-entropy, so they are stored
and looked up as SHA-256 digests (as GitHub and Stripe do); the comparison that grants access
is constant-time. 401 means "who are you?" (no or unknown token), 403 "you may not".
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import ValidationError

from shared import strict_json
from shared.contracts import Role

log = structlog.get_logger("dihya.web")


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


class ApiError(web.HTTPException):
    """An HTTP error of any status carrying the standard JSON error body.

    One class for every status, because several of aiohttp's per-status classes (405, 413)
    need extra constructor arguments; ``status_code`` is set per instance before aiohttp's
    constructor reads it.
    """

    def __init__(self, status: int, body: Mapping[str, Any],
                 headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(text=orjson.dumps(body).decode(), content_type="application/json",
                         headers=headers)


def error(status: int, code: str, message: str, fields: Iterable[Mapping[str, str]] = (),
          headers: Mapping[str, str] | None = None) -> web.HTTPException:
    """An HTTP error carrying the standard JSON body; ``raise`` it from a handler."""
    body = {"error": {"code": code, "message": message, "fields": list(fields)}}
    return ApiError(status, body, headers)


def validation_error(exc: ValidationError) -> web.HTTPException:
    """422 naming each bad field (dotted path), without echoing the submitted values."""
    fields = [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    return error(422, "validation_failed", "The request body is not valid.", fields)


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """Read a JSON body with the checks a public API owes: type, size, and the JSON rule of
    :mod:`shared.strict_json` (400 ``invalid_json``, ``non_finite_number`` or
    ``duplicate_key``)."""
    ctype = request.content_type
    if ctype != "application/json":
        raise error(415, "unsupported_media_type", "Send the body as application/json.")
    if request.content_length is not None and request.content_length > max_bytes:
        raise error(413, "body_too_large", f"The body exceeds {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    # read until EOF: one read() returns only what has arrived so far
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise error(413, "body_too_large", f"The body exceeds {max_bytes} bytes.")
        chunks.append(chunk)
    try:
        return strict_json.loads(b"".join(chunks))
    except strict_json.JsonRuleError as exc:
        raise error(400, exc.code, f"The body breaks the JSON rule: {exc.message}.") from None


def hash_token(token: str) -> str:
    """SHA-256 hex digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token id (safe to log and audit), its role, and the tenant a
    tenant-scoped token acts for (``None`` for platform roles)."""

    token_id: str
    role: Role
    tenant: str | None = None


TokenLookup = Callable[[str], Awaitable[Principal | None]]
"""Resolves a token *hash* to its principal, or ``None`` if unknown or revoked."""
RefusalHook = Callable[[web.Request, Principal | None, str], Awaitable[None]]
"""Called on every refused access (who, what) — the audit trail; never gets the token."""

TOKEN_LOOKUP: web.AppKey[TokenLookup] = web.AppKey("token_lookup")
REFUSAL_HOOK: web.AppKey[RefusalHook] = web.AppKey("refusal_hook")


def bootstrap_lookup(admin_token: str | None, lookup: TokenLookup) -> TokenLookup:
    """Wrap ``lookup`` so the bootstrap ``DIHYA_ADMIN_TOKEN`` is accepted as admin too."""
    admin_hash = hash_token(admin_token) if admin_token else None

    async def _lookup(token_hash: str) -> Principal | None:
        if admin_hash is not None and hmac.compare_digest(token_hash, admin_hash):
            return Principal(token_id="tok_bootstrap_admin", role="admin")  # noqa: S106
        return await lookup(token_hash)

    return _lookup


async def authorize(request: web.Request, *roles: Role) -> Principal:
    """Return the caller if its role is one of ``roles``; raise 401/403 (and audit) otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    principal: Principal | None = None
    if scheme.lower() == "bearer" and token.strip():
        principal = await request.app[TOKEN_LOOKUP](hash_token(token.strip()))
    hook = request.app.get(REFUSAL_HOOK)
    if principal is None:
        if hook is not None:
            await hook(request, None, "unauthenticated")
        raise error(401, "unauthorized", "Send a valid token: Authorization: Bearer <token>.")
    if principal.role not in roles:
        if hook is not None:
            await hook(request, principal, "forbidden")
        raise error(403, "forbidden",
                    f"Role '{principal.role}' may not do this; it needs: {', '.join(roles)}.")
    return principal


ReadinessCheck = Callable[[], Awaitable[bool]]


def add_ops_routes(app: web.Application, checks: Mapping[str, ReadinessCheck]) -> None:
    """``/healthz`` (process alive), ``/readyz`` (dependencies reachable), ``/metrics``."""

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = await check()
            except Exception:
                results[name] = False
        ready = all(results.values())
        return json_response({"ready": ready, "checks": results}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give aiohttp's own plain-text errors (404, 405, 413…) and crashes the JSON error shape.

    An unexpected exception is logged with its traceback and answered with a JSON 500 that
    says nothing about its cause (which could hold data that must not leak).
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        raise error(exc.status, code, exc.reason, headers=allow) from None
    except Exception:
        # the route template, not the path: a path can hold a data subject's id
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(unmatched)"
        log.exception("request_failed", route=route, method=request.method)
        raise error(500, "internal_error", "Unexpected error; it has been logged.") from None


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port``; the caller keeps the runner and cleans it up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
