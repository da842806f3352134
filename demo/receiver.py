"""A sample webhook receiver: verifies each delivery the way the guide's receivers do.

The check is the guide's Flask example, unchanged in substance::

    signature = request.headers.get("X-Dihya-Signature")
    expected = hmac.new(SECRET.encode(), request.data, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected): abort(401)

It also checks the Standard Webhooks headers with the official ``standardwebhooks`` package
when that is installed. Each endpoint path (``/hooks/<name>``) has its own secret and can be
told to answer with a given status, so tests can script failures.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


def guide_verify(secret: str, body: bytes, signature: str | None) -> bool:
    """The guide's Flask check: hex HMAC-SHA256 of the raw body, keyed with the secret string."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return signature is not None and hmac.compare_digest(signature, expected)


def standard_webhooks_verify(secret: str, body: bytes, headers: dict[str, str]) -> bool | None:
    """Verify with the official Standard Webhooks library (``None`` if it is not installed)."""
    try:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError
    except ImportError:
        return None
    if not secret.startswith("whsec_"):
        secret = "whsec_" + base64.b64encode(secret.encode()).decode()
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


@dataclass
class Delivery:
    """One request the receiver got, with the verdicts of both checks."""

    path: str
    headers: dict[str, str]
    body: bytes
    guide_ok: bool
    standard_ok: bool | None
    status: int

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records and verifies every delivery."""

    secrets: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    on_delivery: Callable[[Delivery], None] | None = None
    port: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        # the public AppRunner.addresses (sockname of every listening socket), not site._server:
        # nothing outside shared/broker/fastpath.py reads a library's internals
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        headers = dict(request.headers)
        secret = self.secrets.get(name, "")
        guide_ok = guide_verify(secret, body, request.headers.get("X-Dihya-Signature"))
        scripted = self.statuses.get(name)
        status = scripted.pop(0) if scripted else (200 if guide_ok else 401)
        # no shared secret registered (e.g. an ed25519 endpoint, checked by its public key)
        std = standard_webhooks_verify(secret, body, headers) if secret else None
        delivery = Delivery(name, headers, body, guide_ok, std, status)
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    def received(self, name: str | None = None) -> list[Delivery]:
        return [d for d in self.deliveries if name is None or d.path == name]

    async def wait(self, predicate: Callable[[list[Delivery]], bool], timeout: float = 30.0
                   ) -> list[Delivery]:
        """Wait until ``predicate(deliveries)`` holds; raise ``TimeoutError`` otherwise."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: predicate(self.deliveries)), timeout
            )
        return list(self.deliveries)
