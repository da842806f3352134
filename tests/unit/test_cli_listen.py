"""``dihya listen`` as a real process, against a scripted ingest API and a real app on
127.0.0.1: the temporary endpoint it registers, both signatures checked on what it receives,
the forward to the app, and the endpoint deleted when it is stopped by a signal.

(``tests/integration/test_cli_listen.py`` runs it against the real services.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from services.signer.decisions import dihya_signature, hmac_key, standard_signature

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + "c2VjcmV0IGtleSBmb3IgZGloeWEgbGlzdGVu"  # base64 of a 24-byte key


@dataclass
class FakeIngest:
    """The two routes ``listen`` calls, recording what it asked."""

    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert request.headers["Authorization"] == "Bearer tok_admin"
        self.created.append(body)
        self.changed.set()
        return web.json_response({"id": "ep_listen", "url": body["url"],
                                  "events": body["events"], "secret": SECRET,
                                  "status": "enabled"}, status=201)

    async def delete(self, request: web.Request) -> web.Response:
        self.deleted.append(request.match_info["id"])
        self.changed.set()
        return web.Response(status=204)


@dataclass
class App:
    """The developer's app ``--forward-to`` reaches."""

    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def hook(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(status=201, text="created")


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[FakeIngest, str]]:
    fake = FakeIngest()
    app = web.Application()
    app.router.add_post("/v1/endpoints", fake.create)
    app.router.add_delete("/v1/endpoints/{id}", fake.delete)
    runner, url = await serve(app)
    yield fake, url
    await runner.cleanup()


@pytest.fixture
async def forward_app() -> AsyncIterator[tuple[App, str]]:
    recorder = App()
    app = web.Application()
    app.router.add_post("/hook", recorder.hook)
    runner, url = await serve(app)
    yield recorder, url + "/hook"
    await runner.cleanup()


def delivery(secret: str, *, tamper: bool = False) -> tuple[bytes, dict[str, str]]:
    """A delivery as the signer makes one (``tamper``: the body changed after signing)."""
    ts = int(time.time())
    body = orjson.dumps({"id": "evt_1", "event": "template.created",
                         "timestamp": "2025-05-20T12:00:00Z", "lang": "fr",
                         "data": {"template_id": "abc123"},
                         "delivery": {"id": "dlv_1", "attempt": 1, "nonce": "n1",
                                      "timestamp": ts}})
    headers = {"Content-Type": "application/json", "webhook-id": "dlv_1",
               "webhook-timestamp": str(ts),
               "webhook-signature": standard_signature(hmac_key(secret), "dlv_1", ts, body),
               "X-Dihya-Signature": dihya_signature(secret, body)}
    return (body.replace(b"abc123", b"abc124") if tamper else body), headers


async def start_listen(ingest_url: str, tmp_path: Path, *args: str
                       ) -> asyncio.subprocess.Process:
    env = {**os.environ, "DIHYA_TOKEN": "tok_admin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "listen", "--ingest-url", ingest_url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)


async def line_with(stream: asyncio.StreamReader, text: str, timeout: float = 30) -> str:
    async def read() -> str:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"stream ended before a line with {text!r}")
            if text in raw.decode():
                return raw.decode()
    return await asyncio.wait_for(read(), timeout)


async def test_listen_verifies_forwards_and_deletes_its_endpoint_on_sigint(
        ingest: tuple[FakeIngest, str], forward_app: tuple[App, str], tmp_path: Path) -> None:
    fake, ingest_url = ingest
    app, app_url = forward_app
    proc = await start_listen(ingest_url, tmp_path, "--json", "-e", "template.*",
                              "--forward-to", app_url)
    assert proc.stdout is not None and proc.stderr is not None
    ready = await line_with(proc.stderr, "ep_listen")
    assert "template.*" in ready
    assert fake.created[0]["events"] == ["template.*"]
    listener = fake.created[0]["url"]
    assert listener.startswith("http://127.0.0.1:")

    body, headers = delivery(SECRET)
    async with aiohttp.ClientSession() as session:
        async with session.post(listener, data=body, headers=headers) as resp:
            assert resp.status == 201, "Dihya gets the app's answer"
        printed = orjson.loads(await line_with(proc.stdout, "dlv_1"))
        assert printed["verified"] == {"x_dihya_signature": True, "standard_webhooks": True,
                                       "timestamp": True}
        assert printed["event"] == "template.created" and printed["attempt"] == 1
        assert printed["forward"]["status"] == 201
        assert app.got[0][1] == body, "the app gets the body unchanged"
        forwarded = {k.lower(): v for k, v in app.got[0][0].items()}
        assert forwarded["x-dihya-signature"] == headers["X-Dihya-Signature"]
        assert forwarded["webhook-signature"] == headers["webhook-signature"]

        tampered, headers = delivery(SECRET, tamper=True)
        async with session.post(listener, data=tampered, headers=headers) as resp:
            assert resp.status == 201
        printed = orjson.loads(await line_with(proc.stdout, "dlv_1"))
        assert printed["verified"]["x_dihya_signature"] is False
        assert printed["verified"]["standard_webhooks"] is False

    assert fake.deleted == []
    proc.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(proc.wait(), 30)
    rest = (await proc.stderr.read()).decode()
    assert code == 0, rest
    assert fake.deleted == ["ep_listen"]
    assert "Temporary endpoint ep_listen deleted." in rest


async def test_without_forwarding_a_bad_signature_gets_401_and_sigterm_cleans_up(
        ingest: tuple[FakeIngest, str], tmp_path: Path) -> None:
    fake, ingest_url = ingest
    proc = await start_listen(ingest_url, tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    await line_with(proc.stderr, "ep_listen")
    assert fake.created[0]["events"] == ["#"], "everything by default"
    listener = fake.created[0]["url"]
    async with aiohttp.ClientSession() as session:
        body, headers = delivery(SECRET)
        async with session.post(listener, data=body, headers=headers) as resp:
            assert resp.status == 200
        line = await line_with(proc.stdout, "dlv_1")
        assert "X-Dihya-Signature ✔" in line and "Standard Webhooks ✔" in line
        body, headers = delivery("whsec_" + "b3RoZXIgc2VjcmV0IG9mIDI0IGJ5dGVzIQ==")
        async with session.post(listener, data=body, headers=headers) as resp:
            assert resp.status == 401
        line = await line_with(proc.stdout, "dlv_1")
        assert "X-Dihya-Signature ✘" in line and "Standard Webhooks ✘" in line
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert fake.deleted == ["ep_listen"]


async def test_a_bad_pattern_is_refused_before_anything_is_registered(
        ingest: tuple[FakeIngest, str], tmp_path: Path) -> None:
    fake, ingest_url = ingest
    proc = await start_listen(ingest_url, tmp_path, "-e", "Template..x")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "Not a subscription pattern: Template..x" in err.decode()
    assert fake.created == []
