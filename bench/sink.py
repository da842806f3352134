"""The sink: a fast, verifying webhook receiver in a process of its own (aiohttp + uvloop).

Why a process of its own: the receiver does real work per delivery (read, HMAC, parse) and
would otherwise share an event loop — and a core's worth of GIL — with the load generator,
which must keep its schedule.

What it checks, for every delivery (or every ``verify_every``-th):

* ``X-Dihya-Signature``: hex HMAC-SHA256 of the raw body keyed with the secret string (the
  guide's check; the raw chain signs the same way);
* ``webhook-signature`` (when present, i.e. from Dihya): Standard Webhooks ``v1`` HMAC of
  ``id.timestamp.body`` keyed with the base64-decoded ``whsec_`` secret.

Each body carries ``data.bench = {"phase", "sent_at"}`` from the load generator. Per phase the
sink keeps, for each endpoint, the unique ids received with valid signatures, their latency
(receipt minus ``sent_at``, wall clock: one machine, one clock) and arrival times in 0.1 s bins.
The controller reads them over HTTP on the main port:

* ``GET /count/{phase}[?group=fast]`` → number of unique valid deliveries (plain text; cheap
  enough to poll every 50 ms for admission control);
* ``GET /stats/{phase}`` → counts, latency percentiles per endpoint group, arrival bins;
* ``POST /control`` ``{"slow_delay": seconds}`` → how long the slow port takes to answer;
  ``{"down": [names]}`` → those endpoints answer 503 (the backlog phase's failing endpoint);
* ``GET /attempts/{phase}`` → the failed attempts counted, the events refused at least once,
  and for every :data:`ATTEMPT_SAMPLE`-th event the times of its failed attempts and of its
  delivery (to judge the retry schedule).

Endpoint paths are ``/hooks/<name>``; the group of ``fast-3`` is ``fast``. ``hot`` and
``real-*`` answer after a delay, as receivers doing work do (:func:`bench.realistic.delay_for`).
The second port ("slow") is a different receiver as far as the deliverer's per-host connection
pool goes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import math
import random
import signal
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.realistic import delay_for

BIN = 0.1
"""Width of an arrival-time bin, seconds."""
ATTEMPT_SAMPLE = 10
"""A failing endpoint's attempt times are kept for events whose sequence number is a multiple
of this (enough to judge a retry schedule; a million-event backlog stays small in memory)."""


def percentile(sorted_values: list[float] | array[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100); NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summarize(values: list[float] | array[float]) -> dict[str, float | int | None]:
    """n, mean, p50, p95, p99, max of ``values`` (milliseconds), ``None`` where empty."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "n": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2),
    }


def group_of(name: str) -> str:
    return name.split("-", 1)[0]


def standard_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


@dataclass
class Phase:
    """What the sink saw of one phase of the benchmark."""

    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    latency_ms: dict[str, array[float]] = field(default_factory=lambda: defaultdict(
        lambda: array("d")))
    bins: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(
        lambda: defaultdict(int)))
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    unverified: int = 0
    body_bytes: int = 0
    first: float | None = None
    last: float | None = None

    def stats(self) -> dict[str, Any]:
        groups: dict[str, array[float]] = defaultdict(lambda: array("d"))
        bins: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for name, values in self.latency_ms.items():
            groups[group_of(name)].extend(values)
        for name, per_bin in self.bins.items():
            for key, count in per_bin.items():
                bins[group_of(name)][key] += count
        return {
            "valid": self.valid,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "unverified": self.unverified,
            "mean_body_bytes": round(self.body_bytes / self.valid) if self.valid else None,
            "first": self.first,
            "last": self.last,
            "by_endpoint": {name: len(ids) for name, ids in self.seen.items()},
            "latency_ms": {g: summarize(v) for g, v in groups.items()},
            "bin_seconds": BIN,
            "bins": {g: sorted(b.items()) for g, b in bins.items()},
        }


class Sink:
    """Request handlers and per-phase books."""

    def __init__(self, secrets: dict[str, str], verify_every: int = 1) -> None:
        self.secrets = secrets
        self.standard_keys = {name: standard_key(s) for name, s in secrets.items()}
        self.verify_every = max(1, verify_every)
        self.phases: dict[str, Phase] = defaultdict(Phase)
        self.slow_delay = 0.0
        self.down: set[str] = set()
        self.failed: dict[str, int] = defaultdict(int)
        self.failed_events: dict[str, set[str]] = defaultdict(set)
        """phase → ids of the events refused at least once."""
        self.attempt_times: dict[str, dict[str, list[float]]] = defaultdict(dict)
        """phase → sampled event id → times of its failed attempts, then of its delivery."""
        self._n = 0
        self._rng = random.Random()

    def verify(self, name: str, body: bytes, headers: Any) -> bool:
        secret = self.secrets.get(name)
        if secret is None:
            return False
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("X-Dihya-Signature", ""), expected):
            return False
        signatures = headers.get("webhook-signature")
        if signatures is None:
            return True  # the raw chain signs only the guide's way
        signed = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}."
        digest = hmac.new(self.standard_keys[name], signed.encode() + body,
                          hashlib.sha256).digest()
        wanted = "v1," + base64.b64encode(digest).decode()
        return any(hmac.compare_digest(s, wanted) for s in signatures.split(" "))

    def record(self, name: str, body: bytes, headers: Any) -> int:
        now = time.time()
        self._n += 1
        try:
            payload = orjson.loads(body)
            meta = payload["data"]["bench"]
            phase = self.phases[str(meta["phase"])]
            event_id = str(payload["id"])
            sent_at = float(meta["sent_at"])
        except (ValueError, KeyError, TypeError):
            self.phases["?"].invalid += 1
            return 400
        if self._n % self.verify_every == 0:
            if not self.verify(name, body, headers):
                phase.invalid += 1
                return 401
        else:
            phase.unverified += 1
        ids = phase.seen[name]
        if event_id in ids:
            phase.duplicates += 1
            return 200
        ids.add(event_id)
        sampled = self.attempt_times.get(str(meta["phase"]), {}).get(event_id)
        if sampled is not None:
            sampled.append(now)
        phase.valid += 1
        phase.body_bytes += len(body)
        phase.latency_ms[name].append((now - sent_at) * 1000)
        phase.bins[name][int(now / BIN)] += 1
        phase.first = now if phase.first is None else phase.first
        phase.last = now
        return 200

    def refuse(self, body: bytes) -> int:
        """A delivery to an endpoint that is down: counted (and its time kept, when sampled),
        answered 503."""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            payload = orjson.loads(body)
            phase = str(payload["data"]["bench"]["phase"])
            event_id = str(payload["id"])
            self.failed[phase] += 1
            self.failed_events[phase].add(event_id)
            if int(event_id.rsplit(".", 1)[-1]) % ATTEMPT_SAMPLE == 0:
                self.attempt_times[phase].setdefault(event_id, []).append(time.time())
        return 503

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.match_info["name"] in self.down:
            return web.Response(status=self.refuse(body), text="down")
        delay = delay_for(request.match_info["name"], self._rng)
        if delay > 0:
            await asyncio.sleep(delay)  # the receiver's own work
        status = self.record(request.match_info["name"], body, request.headers)
        return web.Response(status=status, text="ok" if status == 200 else "no")

    async def slow_hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.slow_delay > 0:
            await asyncio.sleep(self.slow_delay)
        status = self.record(request.match_info["name"], body, request.headers)
        return web.Response(status=status, text="ok" if status == 200 else "no")

    async def count(self, request: web.Request) -> web.Response:
        phase = self.phases.get(request.match_info["phase"])
        group = request.query.get("group")
        if phase is None:
            count = 0
        elif group is None:
            count = phase.valid
        else:
            count = sum(len(ids) for name, ids in phase.seen.items() if group_of(name) == group)
        return web.Response(text=str(count))

    async def stats(self, request: web.Request) -> web.Response:
        phase = self.phases.get(request.match_info["phase"]) or Phase()
        return web.Response(body=orjson.dumps(phase.stats()), content_type="application/json")

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        self.slow_delay = float(body.get("slow_delay", self.slow_delay))
        if "down" in body:
            self.down = {str(name) for name in body["down"]}
        return web.Response(text="ok")

    async def attempts(self, request: web.Request) -> web.Response:
        phase = request.match_info["phase"]
        return web.Response(body=orjson.dumps({"failed": self.failed.get(phase, 0),
                                               "failed_events": len(
                                                   self.failed_events.get(phase, ())),
                                               "sampled": self.attempt_times.get(phase, {})}),
                            content_type="application/json")

    async def ready(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")


async def serve(sink: Sink, port: int, slow_port: int) -> None:
    main = web.Application(client_max_size=4 * 1024 * 1024)
    main.router.add_post("/hooks/{name}", sink.hook)
    main.router.add_get("/count/{phase}", sink.count)
    main.router.add_get("/stats/{phase}", sink.stats)
    main.router.add_get("/attempts/{phase}", sink.attempts)
    main.router.add_post("/control", sink.control)
    main.router.add_get("/ready", sink.ready)
    slow = web.Application()
    slow.router.add_post("/hooks/{name}", sink.slow_hook)
    runners = []
    for app, p in ((main, port), (slow, slow_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p, backlog=1024).start()
        runners.append(runner)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark sink receiver.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-port", type=int, required=True)
    parser.add_argument("--secrets", type=Path, required=True,
                        help="JSON file {endpoint name: secret}")
    parser.add_argument("--verify-every", type=int, default=1)
    args = parser.parse_args()
    sink = Sink(orjson.loads(args.secrets.read_bytes()), args.verify_every)
    import uvloop

    uvloop.run(serve(sink, args.port, args.slow_port))


if __name__ == "__main__":
    main()
