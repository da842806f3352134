"""How the console is served (files by exact name, strict headers, its config) and how the
audit API lets the console's origin, and no other, read it from a browser (CORS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from services.audit.http import make_app
from services.audit.settings import AuditSettings, parse_origins
from services.ingest import console
from services.ingest.settings import Settings
from shared.web import Principal, errors_middleware

AUDIT = "http://127.0.0.1:8083"
CONSOLE = "http://127.0.0.1:8080"


async def _serve(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def served() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[errors_middleware])
    console.mount(app, Settings(console_audit_url=AUDIT + "/"))
    client = await _serve(app)
    yield client
    await client.close()


async def test_the_page_its_modules_and_catalogs_are_served_with_strict_headers(
    served: TestClient[web.Request, web.Application],
) -> None:
    moved = await served.get("/console", allow_redirects=False)
    assert moved.status == 308 and moved.headers["Location"] == "/console/"
    page = await served.get("/console/")
    assert page.status == 200 and page.content_type == "text/html" and page.charset == "utf-8"
    assert "<main" in await page.text()
    policy = page.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == f"'self' {AUDIT}"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    for path, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"),
                        ("locales/ar.json", "application/json")):
        reply = await served.get(f"/console/{path}")
        assert reply.status == 200 and reply.content_type == ctype, path
        assert reply.headers["Content-Security-Policy"] == policy


async def test_only_the_files_of_the_console_are_served(
    served: TestClient[web.Request, web.Application],
) -> None:
    for path in ("/console/nope.js", "/console/../settings.py", "/console/%2e%2e/__init__.py",
                 "/console/locales/../../__init__.py", "/console/static/app.js"):
        reply = await served.get(path)
        assert reply.status == 404, path
        assert (await reply.json())["error"]["code"] == "not_found"


async def test_a_browser_revalidates_with_the_etag(
    served: TestClient[web.Request, web.Application],
) -> None:
    first = await served.get("/console/app.js")
    again = await served.get("/console/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and not await again.read()
    changed = await served.get("/console/app.js", headers={"If-None-Match": '"other"'})
    assert changed.status == 200


async def test_config_names_the_audit_api(
    served: TestClient[web.Request, web.Application],
) -> None:
    reply = await served.get("/console/config.json")
    assert await reply.json() == {"audit_url": AUDIT, "languages": ["en", "fr", "ar", "tzm",
                                                                 "tzm-Tfng"]}


async def test_without_an_audit_url_the_page_may_connect_to_its_own_origin_only() -> None:
    app = web.Application()
    console.mount(app, Settings())
    client = await _serve(app)
    try:
        reply = await client.get("/console/config.json")
        assert (await reply.json())["audit_url"] is None
        assert "connect-src 'self';" in reply.headers["Content-Security-Policy"]
    finally:
        await client.close()


async def test_the_console_can_be_turned_off() -> None:
    app = web.Application()
    console.mount(app, Settings(console_enabled=False))
    client = await _serve(app)
    try:
        assert (await client.get("/console/")).status == 404
    finally:
        await client.close()


def test_only_files_of_known_types_are_loaded(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "notes.txt").write_text("not served")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.js").write_text("export {}")
    assets = console.load_assets(tmp_path)
    assert sorted(assets) == ["index.html", "sub/x.js"]
    assert assets["sub/x.js"].content_type == "text/javascript"


@pytest.mark.parametrize("value", ["ftp://audit", "audit.example.com", "http://",
                                   "https://a.example/x?token=1", "https://u:p@a.example"])
def test_a_bad_audit_url_is_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(console_audit_url=value)


# -- CORS on the audit API ------------------------------------------------------------------


async def _audit(origins: tuple[str, ...]) -> TestClient[web.Request, web.Application]:
    refusals: list[str] = []

    async def lookup(_: str) -> Principal | None:
        return None

    async def refused(_: web.Request, __: Principal | None, reason: str) -> None:
        refusals.append(reason)

    app = make_app(cast(Any, None), lookup=lookup, on_refusal=refused, checks={},
                   page_limit=100, cors_origins=origins)
    return await _serve(app)


def _preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"}


async def test_the_listed_origin_may_call_the_audit_api_with_a_token() -> None:
    client = await _audit((CONSOLE,))
    try:
        pre = await client.options("/v1/audit/records", headers=_preflight(CONSOLE))
        assert pre.status == 200
        assert pre.headers["Access-Control-Allow-Origin"] == CONSOLE
        assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
        assert "GET" in pre.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Credentials" not in pre.headers
        # the answer itself (here a 401 without a token) is readable by the console's page
        reply = await client.get("/v1/audit/records", headers={"Origin": CONSOLE})
        assert reply.status == 401
        assert reply.headers["Access-Control-Allow-Origin"] == CONSOLE
        assert (await reply.json())["error"]["code"] == "unauthorized"
        export = await client.get("/v1/audit/export", headers={"Origin": CONSOLE})
        assert "Content-Disposition" in export.headers["Access-Control-Expose-Headers"]
    finally:
        await client.close()


async def test_any_other_origin_gets_no_cors_header() -> None:
    client = await _audit((CONSOLE,))
    try:
        for evil in ("http://evil.example", "http://127.0.0.1:9999", CONSOLE + ".evil.example"):
            pre = await client.options("/v1/audit/records", headers=_preflight(evil))
            assert pre.status == 403, evil
            assert "Access-Control-Allow-Origin" not in pre.headers
            reply = await client.get("/v1/audit/records", headers={"Origin": evil})
            assert "Access-Control-Allow-Origin" not in reply.headers
        # a method the console does not use is not allowed either
        post = await client.options("/v1/audit/retention/purge", headers={
            "Origin": CONSOLE, "Access-Control-Request-Method": "POST"})
        assert post.status in (403, 405)
        assert "Access-Control-Allow-Origin" not in post.headers
    finally:
        await client.close()


async def test_without_origins_there_is_no_cors_at_all() -> None:
    client = await _audit(())
    try:
        pre = await client.options("/v1/audit/records", headers=_preflight(CONSOLE))
        assert pre.status == 405
        assert "Access-Control-Allow-Origin" not in pre.headers
        reply = await client.get("/v1/openapi.json", headers={"Origin": CONSOLE})
        assert reply.status == 200 and "Access-Control-Allow-Origin" not in reply.headers
        assert orjson.loads(await reply.read())["openapi"]
    finally:
        await client.close()


def test_cors_origins_are_parsed_strictly() -> None:
    assert parse_origins(" http://a.example:8080 , HTTPS://B.example/ ,") == (
        "http://a.example:8080", "https://b.example")
    assert AuditSettings(cors_origins=CONSOLE).origins == (CONSOLE,)
    for bad in ("*", "a.example", "http://a.example/console", "null", "http://u@a.example"):
        with pytest.raises(ValueError, match="not an origin"):
            parse_origins(bad)
