"""``dihya listen``: receive deliveries on this machine while developing, like ``stripe listen``.

It serves a local port, registers a temporary endpoint pointing at it (subscribed to
``--events``, everything by default), checks both signatures of each delivery it receives and
prints it, optionally forwards it unchanged to the developer's app (``--forward-to``), and
deletes the endpoint when it stops — on Ctrl-C (SIGINT), SIGTERM, or a failure.

What it answers Dihya: the app's status when forwarding (so a failing app shows Dihya's
retries), else 200 for a delivery whose signatures and timestamp hold and 401 for one whose do
not (as a verifying receiver would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from cli import output
from cli.client import seg
from cli.commands import Commands
from cli.config import check_url
from cli.context import Ctx
from cli.errors import ApiError, Exit, UnreachableError, UsageError
from cli.signatures import Verdict, verify
from shared.subscriptions import valid_pattern

FORWARDED = ("content-type", "user-agent", "webhook-id", "webhook-timestamp",
             "webhook-signature", "x-dihya-signature", "x-dihya-event", "x-dihya-delivery",
             "x-dihya-attempt", "traceparent")
"""Headers passed on to the app (``x-dihya-*`` ones too, whatever their name)."""
FORWARD_TIMEOUT = 10.0


def register(root: Commands) -> None:
    t = root.t
    p = root.command("listen", "help.listen", listen)
    p.add_argument("-e", "--events", dest="events", action="append", metavar="PATTERN",
                   help=t("help.arg.listen_events"))
    p.add_argument("--forward-to", metavar="URL", help=t("help.arg.forward_to"))
    p.add_argument("--host", default="127.0.0.1", help=t("help.arg.listen_host"))
    p.add_argument("--port", type=int, default=0, help=t("help.arg.listen_port"))
    p.add_argument("--public-url", metavar="URL", help=t("help.arg.public_url"))
    p.add_argument("--print-payload", action="store_true", help=t("help.arg.print_payload"))


def listen(ctx: Ctx, args: argparse.Namespace) -> int:
    events = args.events or ["#"]
    bad = [p for p in events if not valid_pattern(p)]
    if bad:
        raise UsageError(ctx.t("listen.bad_pattern", patterns=", ".join(bad)))
    forward = check_url(args.forward_to, "--forward-to", ctx.t) if args.forward_to else None
    public = check_url(args.public_url, "--public-url", ctx.t) if args.public_url else None
    return asyncio.run(Listener(ctx, events, forward, public, args.print_payload)
                       .run(args.host, args.port))


class Listener:
    """The local receiver and the temporary endpoint's lifetime."""

    def __init__(self, ctx: Ctx, events: list[str], forward: str | None, public: str | None,
                 print_payload: bool) -> None:
        self.ctx = ctx
        self.events = events
        self.forward = forward
        self.public = public
        self.print_payload = print_payload
        self.secret = ""
        self.stop = asyncio.Event()
        self.session: ClientSession | None = None

    async def run(self, host: str, port: int) -> int:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("POST", "/{tail:.*}", self.receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            sock = socket.create_server((host, port))
        except OSError as exc:
            await runner.cleanup()
            raise UsageError(self.ctx.t("listen.cannot_bind", host=host, port=port,
                                        error=exc.strerror or exc)) from None
        site = web.SockSite(runner, sock)
        await site.start()
        bound = sock.getsockname()[1]
        url = self.public or f"http://{host if ':' not in host else f'[{host}]'}:{bound}/"
        self._on_signals()
        try:
            endpoint = await asyncio.to_thread(self._create, url)
        except BaseException:
            await runner.cleanup()
            raise
        self.secret = endpoint["secret"]
        try:
            async with ClientSession(timeout=ClientTimeout(total=FORWARD_TIMEOUT)) as session:
                self.session = session
                self._announce(endpoint, url)
                await self.stop.wait()
        finally:
            await runner.cleanup()
            code: int = await asyncio.to_thread(self._delete, endpoint["id"])
        return code

    def _on_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # not in the main thread (tests run the CLI in-process): no handler, cancel instead
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
                loop.add_signal_handler(sig, self.stop.set)

    def _create(self, url: str) -> dict[str, Any]:
        body = {"url": url, "events": self.events,
                "description": self.ctx.t("listen.description", host=socket.gethostname())}
        try:
            created: dict[str, Any] = self.ctx.ingest().request(
                "POST", "/v1/endpoints", body=body).data
        except ApiError as exc:
            if exc.status == 422 and any(f["field"] == "url" for f in exc.fields):
                self.ctx.note(self.ctx.t("listen.url_refused", url=url))
            raise
        return created

    def _delete(self, endpoint_id: str) -> int:
        try:
            self.ctx.ingest().request("DELETE", f"/v1/endpoints/{seg(endpoint_id)}")
        except (ApiError, UnreachableError) as exc:
            self.ctx.note(self.ctx.t("listen.not_deleted", id=endpoint_id, error=exc))
            return Exit.UNAVAILABLE
        self.ctx.note(self.ctx.t("listen.deleted", id=endpoint_id))
        return Exit.OK

    def _announce(self, endpoint: dict[str, Any], url: str) -> None:
        t = self.ctx.t
        self.ctx.note(t("listen.ready", id=endpoint["id"], url=url,
                        events=", ".join(self.events)))
        self.ctx.note(t("listen.secret", secret=endpoint["secret"]))
        if self.forward:
            self.ctx.note(t("listen.forwarding", url=self.forward))
        self.ctx.note(t("listen.ctrl_c"))

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        verdict = verify(self.secret, body, request.headers, time.time())
        forwarded = await self._forward(body, request) if self.forward else None
        self._print(body, verdict, forwarded)
        if forwarded is not None:
            status = forwarded.get("status")
            return web.Response(status=status if isinstance(status, int) else 502,
                                text="forwarded" if isinstance(status, int) else "app unreachable")
        return web.Response(status=200 if verdict.ok else 401,
                            text="ok" if verdict.ok else "signature check failed")

    async def _forward(self, body: bytes, request: web.Request) -> dict[str, Any]:
        assert self.session is not None and self.forward is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in FORWARDED or k.lower().startswith("x-dihya-")}
        started = time.perf_counter()
        try:
            async with self.session.post(self.forward, data=body, headers=headers,
                                         allow_redirects=False) as resp:
                await resp.read()
                status: int = resp.status
        except (ClientError, TimeoutError) as exc:
            return {"status": None, "error": str(exc) or type(exc).__name__}
        return {"status": status, "ms": round((time.perf_counter() - started) * 1000, 1)}

    def _print(self, body: bytes, verdict: Verdict, forwarded: dict[str, Any] | None) -> None:
        try:
            payload: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        info = payload if isinstance(payload, dict) else {}
        found = info.get("delivery")
        delivery: dict[str, Any] = found if isinstance(found, dict) else {}
        record = {"received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                  "event": info.get("event"), "event_id": info.get("id"),
                  "delivery_id": delivery.get("id"), "attempt": delivery.get("attempt"),
                  "verified": {"x_dihya_signature": verdict.dihya,
                               "standard_webhooks": verdict.standard,
                               "timestamp": verdict.fresh},
                  "forward": forwarded, "payload": payload}
        if self.ctx.json:
            self.ctx.say(orjson.dumps(record).decode())
            return
        t = self.ctx.t

        def mark(ok: bool) -> str:
            return "✔" if ok else "✘"

        line = (f"{output.short_time(record['received_at'])}  {record['event'] or '-'}  "
                f"{record['event_id'] or '-'}  {record['delivery_id'] or '-'} "
                f"#{record['attempt'] or '-'}  "
                f"X-Dihya-Signature {mark(verdict.dihya)}  "
                f"Standard Webhooks {mark(verdict.standard)}  "
                f"{t('listen.timestamp')} {mark(verdict.fresh)}")
        if forwarded is not None:
            line += "  → " + (t("listen.forwarded", status=forwarded["status"],
                                ms=forwarded["ms"]) if forwarded["status"] is not None
                              else t("listen.forward_failed", error=forwarded["error"]))
        self.ctx.say(line)
        if self.print_payload and payload is not None:
            self.ctx.say(output.dumps(payload))
