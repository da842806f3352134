"""The receiver examples in examples/receivers, started for real, against real signed deliveries.

Each example runs as a receiver developer would run it — Flask and Django as ``python <file>``
subprocesses, Express as ``node <file>``, all configured through DIHYA_WEBHOOK_SECRET (and
DIHYA_WEBHOOK_PREVIOUS_SECRET) — except aiohttp, which is served in-process. Deliveries come
from the signer's own ``sign`` and are POSTed over HTTP with aiohttp.

The hardened examples (SDK or its Node equivalent) must accept a fresh delivery and refuse a
tampered, replayed or stale one; the guide's original snippets must still accept a fresh
delivery — and, checking ``X-Dihya-Signature`` only, they accept replays and stale deliveries
too, which is what the receiver SDK is for.

Each hardened example is started (on first use, then kept for the module) under three
configurations: ``main`` (the new secret plus the old one as previous: a receiver in the middle
of a rotation), ``old`` (the old secret only: a receiver not yet told) and ``new`` (the new
secret only: a receiver that has moved on). A guide original holds one secret: ``new`` (also
its ``main``) and ``old``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from services.signer.decisions import sign
from shared.contracts import DeliveryJob, Event
from shared.ids import new_id
from tests.conftest import free_port, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "receivers"
EXPRESS = EXAMPLES / "express"
NODE = shutil.which("node")
NO_NODE = pytest.mark.skipif(NODE is None, reason="node is not installed: the Express examples "
                             "run on Node.js (apt-get install nodejs npm)")

# The secret an administrator chose before the rotation (free-form, as in the guide's days) and
# the one the rotation generated (whsec_ + base64 of 24 random bytes, as ingest generates them):
# both HMAC key forms are exercised.
OLD = "guide-era-secret-" + secrets.token_hex(8)
NEW = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
ROLES = {"main": (NEW, OLD), "old": (OLD, None), "new": (NEW, None)}


@dataclass(frozen=True)
class Example:
    name: str
    hardened: bool  # checks timestamp and nonce (vs the guide's original snippet)
    kind: str  # "python" subprocess, "django" subprocess, "node" subprocess, "aiohttp" in-process

    @property
    def file(self) -> Path:
        return EXPRESS / "server.js" if self.name == "express" else EXAMPLES / (
            f"{self.name}.js" if self.kind == "node" else f"{self.name}.py")

    def command(self, port: int) -> list[str]:
        if self.kind == "node":
            assert NODE is not None
            return [NODE, str(self.file)]
        if self.kind == "django":
            return [sys.executable, str(self.file), "runserver", f"127.0.0.1:{port}", "--noreload"]
        return [sys.executable, str(self.file)]


HARDENED = [
    pytest.param(Example("flask_app", True, "python"), id="flask"),
    pytest.param(Example("django_app", True, "django"), id="django"),
    pytest.param(Example("aiohttp_app", True, "aiohttp"), id="aiohttp"),
    pytest.param(Example("express", True, "node"), id="express", marks=NO_NODE),
]
GUIDE = [
    pytest.param(Example("guide_flask", False, "python"), id="guide_flask"),
    pytest.param(Example("guide_django", False, "django"), id="guide_django"),
    pytest.param(Example("guide_express", False, "node"), id="guide_express", marks=NO_NODE),
]


def _ensure_node_modules() -> None:
    """``npm ci`` in examples/receivers/express when its node_modules is missing (fresh clone)."""
    if (EXPRESS / "node_modules" / "express" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not: cannot install the Express example's "
                    "dependencies (apt-get install npm)")
    try:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXPRESS,
                              capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"npm ci in {EXPRESS} took more than {exc.timeout}s (no registry?)")
    if done.returncode != 0:
        pytest.fail(f"npm ci in {EXPRESS} failed ({done.returncode}):\n"
                    f"{done.stderr[-4000:]}{done.stdout[-2000:]}")


def _env(port: int, secret: str, previous: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIHYA_WEBHOOK_")}
    env.update(PORT=str(port), HOST="127.0.0.1", DIHYA_WEBHOOK_SECRET=secret,
               PYTHONUNBUFFERED="1", NODE_PATH=str(EXPRESS / "node_modules"))
    if previous is not None:
        env["DIHYA_WEBHOOK_PREVIOUS_SECRET"] = previous
    return env


@contextlib.asynccontextmanager
async def _subprocess(example: Example, secret: str, previous: str | None, log: Path
                      ) -> AsyncIterator[str]:
    """Run the example as its README says and yield its URL once it accepts connections."""
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *example.command(port), env=_env(port, secret, previous), cwd=example.file.parent,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        async def listening() -> bool:
            if proc.returncode is not None:
                output = await asyncio.to_thread(log.read_text, errors="replace")
                raise AssertionError(f"{example.name} exited with {proc.returncode}:\n"
                                     f"{output[-3000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await wait_for(listening, timeout=20)
        yield f"http://127.0.0.1:{port}/webhook"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _load(example: Example) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"receiver_example_{example.name}",
                                                  example.file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def _in_process(example: Example, secret: str, previous: str | None) -> AsyncIterator[str]:
    """Serve the aiohttp example's app, configured from an environment like the others."""
    module = _load(example)
    environ = {"DIHYA_WEBHOOK_SECRET": secret}
    if previous is not None:
        environ["DIHYA_WEBHOOK_PREVIOUS_SECRET"] = previous
    runner = web.AppRunner(module.create_app(module.secrets_from_env(environ)), access_log=None)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}/webhook"
    finally:
        await runner.cleanup()


class Receivers:
    """Starts each example on first use, under every configuration (role → URL), for the module."""

    def __init__(self, stack: contextlib.AsyncExitStack, logs: Path) -> None:
        self._stack = stack
        self._logs = logs
        self._running: dict[str, dict[str, str]] = {}

    async def urls(self, example: Example) -> dict[str, str]:
        if example.name not in self._running:
            self._running[example.name] = await self._start(example)
        return self._running[example.name]

    async def _start(self, example: Example) -> dict[str, str]:
        if example.kind == "node":
            await asyncio.to_thread(_ensure_node_modules)
        roles = ROLES if example.hardened else {r: ROLES[r] for r in ("new", "old")}

        async def one(role: str, secret: str, previous: str | None) -> tuple[str, str]:
            if example.kind == "aiohttp":
                cm = _in_process(example, secret, previous)
            else:
                cm = _subprocess(example, secret, previous, self._logs / f"{example.name}-{role}")
            return role, await self._stack.enter_async_context(cm)

        urls = dict(await asyncio.gather(*(one(r, *cfg) for r, cfg in roles.items())))
        urls.setdefault("main", urls["new"])  # a guide original holds one secret: the new one
        return urls


@pytest_asyncio.fixture(scope="module")
async def receivers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Receivers]:
    async with contextlib.AsyncExitStack() as stack:
        yield Receivers(stack, tmp_path_factory.mktemp("receiver-logs"))


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def delivery(secrets_: list[str], *, age: timedelta = timedelta(0)
             ) -> tuple[bytes, dict[str, str]]:
    """A real delivery from the signer: body and headers, signed ``age`` ago."""
    event = Event(id=new_id("evt"), event="template.created", timestamp=datetime.now(UTC),
                  lang="fr", data={"template_id": "abc123", "user_id": "user42",
                                   "details": {"fr": "Modèle créé", "en": "Template created",
                                               "ar": "تم إنشاء القالب", "tzm": "ⵜⵜⵓⵙⵏⵓⵍⴼⴰ"}})
    job = DeliveryJob(delivery_id=new_id("dlv"), endpoint_id="ep_examples",
                      url="http://127.0.0.1/webhook", event=event)
    signed = sign(job, secrets_, nonce=secrets.token_hex(16), now=datetime.now(UTC) - age)
    return signed.body.encode(), dict(signed.headers)


async def post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
               ) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            return resp.status, text


# --- every example ------------------------------------------------------------------------------


@pytest.mark.parametrize("example", [*HARDENED, *GUIDE])
async def test_a_fresh_delivery_is_accepted(receivers: Receivers, http: aiohttp.ClientSession,
                                            example: Example) -> None:
    url = (await receivers.urls(example))["main"]
    body, headers = delivery([NEW])
    status, answer = await post(http, url, body, headers)
    assert status == 200, answer
    if example.hardened:
        assert answer == {"received": orjson.loads(body)["id"]}


@pytest.mark.parametrize("example", [*HARDENED, *GUIDE])
async def test_a_tampered_body_is_refused(receivers: Receivers, http: aiohttp.ClientSession,
                                          example: Example) -> None:
    url = (await receivers.urls(example))["main"]
    body, headers = delivery([NEW])
    assert b'"user42"' in body
    status, answer = await post(http, url, body.replace(b'"user42"', b'"user43"'), headers)
    assert status == 401, answer


@pytest.mark.parametrize("example", [*HARDENED, *GUIDE])
async def test_a_delivery_signed_with_another_secret_is_refused(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example) -> None:
    url = (await receivers.urls(example))["main"]
    body, headers = delivery(["whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()])
    status, answer = await post(http, url, body, headers)
    assert status == 401, answer


# --- the hardened examples: signature + 5-minute tolerance + nonce ----------------------------


@pytest.mark.parametrize("example", HARDENED)
async def test_a_replayed_delivery_is_refused(receivers: Receivers, http: aiohttp.ClientSession,
                                              example: Example) -> None:
    url = (await receivers.urls(example))["main"]
    body, headers = delivery([NEW])
    assert (await post(http, url, body, headers))[0] == 200
    status, answer = await post(http, url, body, headers)
    assert status == 400, answer
    assert "already seen" in answer["error"]
    # A retry of the same event is signed anew (new nonce, same webhook-id): accepted.
    again, again_headers = delivery([NEW])
    assert (await post(http, url, again, again_headers))[0] == 200


@pytest.mark.parametrize("age", [timedelta(minutes=10), timedelta(minutes=-10)],
                         ids=["10-minutes-ago", "10-minutes-ahead"])
@pytest.mark.parametrize("example", HARDENED)
async def test_a_delivery_outside_the_tolerance_is_refused(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example,
        age: timedelta) -> None:
    url = (await receivers.urls(example))["main"]
    body, headers = delivery([NEW], age=age)
    status, answer = await post(http, url, body, headers)
    assert status == 400, answer
    assert "from now" in answer["error"]


@pytest.mark.parametrize("example", HARDENED)
async def test_a_delivery_without_standard_webhooks_headers_is_refused(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example) -> None:
    url = (await receivers.urls(example))["main"]
    body, headers = delivery([NEW])
    del headers["webhook-signature"]
    status, answer = await post(http, url, body, headers)
    assert status == 400, answer
    assert "webhook-signature" in answer["error"]


@pytest.mark.parametrize("role", ["old", "new", "main"])
@pytest.mark.parametrize("example", HARDENED)
async def test_during_a_rotation_either_secret_verifies(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example, role: str) -> None:
    """The signer signs with [new, old] during the overlap: whatever the receiver holds works."""
    url = (await receivers.urls(example))[role]
    body, headers = delivery([NEW, OLD])
    assert len(headers["webhook-signature"].split()) == 2
    status, answer = await post(http, url, body, headers)
    assert status == 200, answer


@pytest.mark.parametrize("example", HARDENED)
async def test_the_previous_secret_covers_deliveries_signed_before_the_rotation(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example) -> None:
    """An attempt signed with the old secret alone, still in flight when the receiver switched."""
    urls = await receivers.urls(example)
    body, headers = delivery([OLD])
    assert (await post(http, urls["main"], body, headers))[0] == 200
    status, answer = await post(http, urls["new"], body, headers)
    assert status == 401, answer  # what DIHYA_WEBHOOK_PREVIOUS_SECRET is for


# --- the guide's originals: X-Dihya-Signature only ---------------------------------------------


@pytest.mark.parametrize("example", GUIDE)
async def test_the_guide_originals_accept_replays_and_stale_deliveries(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example) -> None:
    """Why the SDK exists: the body signature alone says nothing about when it was sent."""
    url = (await receivers.urls(example))["main"]
    body, headers = delivery([NEW])
    assert (await post(http, url, body, headers))[0] == 200
    assert (await post(http, url, body, headers))[0] == 200  # the replay
    stale, stale_headers = delivery([NEW], age=timedelta(days=30))
    assert (await post(http, url, stale, stale_headers))[0] == 200


@pytest.mark.parametrize("example", GUIDE)
async def test_during_a_rotation_x_dihya_signature_carries_the_new_secret_only(
        receivers: Receivers, http: aiohttp.ClientSession, example: Example) -> None:
    """A guide receiver must switch to the new secret as soon as it is rotated."""
    urls = await receivers.urls(example)
    body, headers = delivery([NEW, OLD])
    assert headers["X-Dihya-Signature"] == hmac.new(NEW.encode(), body,
                                                    hashlib.sha256).hexdigest()
    assert (await post(http, urls["new"], body, headers))[0] == 200
    assert (await post(http, urls["old"], body, headers))[0] == 401
