"""The web console: static files (HTML, ES modules, CSS, locale catalogs) that ingest serves
at ``/console/``.

No build step, no framework, nothing fetched from elsewhere: the files under ``static/`` are
served as they are, read once at start (a few tens of kilobytes) and looked up by exact name,
so no request path ever reaches the file system. Every answer carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script, no
framing) whose ``connect-src`` names the audit API's origin too, because the page calls it
directly (the audit service allows this origin through ``DIHYA_AUDIT_CORS_ORIGINS``).

``/console/config.json`` tells the page where the audit API is (``DIHYA_INGEST_CONSOLE_AUDIT_URL``,
``null`` when unset: the page then hides what needs it and says why). The page talks to the
ingest API on its own origin with the token the user signs in with; the token lives in the
tab's ``sessionStorage`` and never in a URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from services.ingest.settings import Settings
from shared.web import json_response

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
LANGUAGES = ("en", "fr", "ar", "tzm", "tzm-Tfng")
"""The console's languages: Tamazight in Latin script (``tzm``, as the integration guide
writes it) and in Tifinagh (``tzm-Tfng``); each has its catalog in ``static/locales/``."""
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
TEXT = frozenset({".html", ".js", ".css", ".json", ".svg"})


@dataclass(frozen=True)
class Asset:
    """One static file, in memory, with the validator browsers revalidate against."""

    body: bytes
    content_type: str
    charset: str | None
    etag: str


def load_assets(root: Path = STATIC) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it (``locales/ar.json``).
    Files of a type not in :data:`CONTENT_TYPES` are not served."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = path.read_bytes()
        assets[path.relative_to(root).as_posix()] = Asset(
            body=body, content_type=CONTENT_TYPES[suffix],
            charset="utf-8" if suffix in TEXT else None,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (what CSP and CORS compare)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(audit_url: str, frame_ancestors: str = "") -> dict[str, str]:
    """Headers of every console answer. ``connect-src`` allows this origin and, when the
    console knows one, the audit API's origin; nothing else may be loaded or contacted.
    ``frame_ancestors`` (DIHYA_INGEST_PORTAL_FRAME_ANCESTORS): the origins that may embed it
    (a platform showing its customers their portal); none by default."""
    connect = "'self'" + (f" {origin(audit_url)}" if audit_url else "")
    policy = "; ".join((
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        f"connect-src {connect}",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors " + (frame_ancestors or "'none'"),
    ))
    # X-Frame-Options cannot name origins: only when nothing may frame the console
    framing = {} if frame_ancestors else {"X-Frame-Options": "DENY"}
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        **framing,
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
        "Cache-Control": "no-cache",
    }


def page_config(settings: Settings) -> dict[str, object]:
    """What ``/console/config.json`` tells the page."""
    return {"audit_url": settings.console_audit_url or None, "languages": list(LANGUAGES)}


def mount(app: web.Application, settings: Settings, root: Path = STATIC) -> None:
    """Add the console's routes to ingest's application (nothing when it is turned off)."""
    if not settings.console_enabled:
        return
    assets = load_assets(root)
    headers = security_headers(settings.console_audit_url, settings.portal_frame_ancestors)
    config = orjson.dumps(page_config(settings))
    config_asset = Asset(config, "application/json", "utf-8",
                         '"' + hashlib.sha256(config).hexdigest()[:32] + '"')

    def send(request: web.Request, asset: Asset) -> web.Response:
        common = {**headers, "ETag": asset.etag}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=common)
        response = web.Response(body=asset.body, headers=common)
        response.content_type = asset.content_type
        if asset.charset:
            response.charset = asset.charset
        return response

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(PREFIX + "/", headers=headers)

    async def index(request: web.Request) -> web.Response:
        return send(request, assets["index.html"])

    async def config_json(request: web.Request) -> web.Response:
        return send(request, config_asset)

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["path"])
        if found is None:
            return json_response({"error": {"code": "not_found", "fields": [],
                                            "message": "No such console file."}},
                                 status=404, headers=headers)
        return send(request, found)

    app.router.add_get(PREFIX, redirect)
    app.router.add_get(PREFIX + "/", index)
    app.router.add_get(PREFIX + "/config.json", config_json)
    app.router.add_get(PREFIX + "/{path:.+}", asset)
