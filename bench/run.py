"""The benchmark run: start everything, drive every phase, collect the figures.

Order of a run (each step's figures land in ``results.json``):

1. a throw-away vhost (``rabbitmqctl add_vhost``), the sink process, the raw chain's two
   stages, and Dihya's four services (N processes each) with their default settings;
2. endpoints registered with secrets the sink knows, a publisher token; warm-up traffic;
3. **raw chain**: an admission-controlled run (its saturation ``S_raw``), paced runs at
   fractions of ``S_raw``, then the search for the rate it sustains (:meth:`Bench.search`);
4. **Dihya over AMQP**: the same (``S_dihya``); each Dihya phase also waits for the audit log
   to hold every delivery it made (audit lag);
5. **Dihya over HTTP** (``POST /v1/events``): the same, fewer rates, no search;
6. **pairs**: the saturation runs of the raw chain and of Dihya over AMQP again, in pairs;
7. **profile**: another saturation run with py-spy attached to every service process (its
   throughput is reported apart: the profiler costs CPU);
8. **slow endpoint**: events fanned out to 4 fast endpoints and a fifth on another receiver,
   first answering at once, then in 2 s — throughput to the fast four, both ways;
9. **realistic receivers** (:mod:`bench.realistic`): a hot endpoint answering in 200 ms
   offered 200 events/s while 4 others answer in 50 ms median, 500 ms p99;
10. **overload** (:mod:`bench.overload`): open loop at 1.5 and 3 x the sustained rate, Dihya
    then the raw chain: delivered rate held, no crash, no memory alarm, drain, p99 recovery;
11. **backlog** (:mod:`bench.backlog`, ``--backlog N``): one endpoint down while N deliveries
    pile up in the retry tiers, then back: the others' p99, RabbitMQ's memory, the drain.

Throughput is counted from the sink's arrival bins over the phase's steady window (from
``warm`` seconds after the first publish to the last publish), CPU and RSS over the same window.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.metadata
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import orjson

from bench import backlog, overload, profile, raw_chain, realistic
from bench.dihya import AuditFollower, metric, publisher_token, register
from bench.dihya import in_flight as dihya_in_flight
from bench.load import AmqpSender, EventFactory, HttpSender, Send, SendStats, admitted, paced
from bench.monitor import (
    BrokerWatch,
    ProcSampler,
    QueueSampler,
    listening_pid,
    loadavg,
    postgres_pids,
    rabbitmq_pids,
)
from bench.report import half_saturation, sustained_phase, sustains
from launcher.processes import SERVICES, System, free_port
from shared import topology
from shared.schedules import parse_schedule

ROOT = Path(__file__).resolve().parent.parent
LOAD_TYPE = "bench.load"
FANOUT_TYPE = "bench.fanout"
HOT_TYPE = "bench.hot"
REAL_TYPE = "bench.real"
BACKLOG_TYPE = "bench.backlog"
DEFAULT_RETRY_JITTER = 0.2  # the deliverer's default RETRY_JITTER
DEFER_TIER_MS = 1000  # the deliverer's default DEFER_DELAY
HEALTH_QUEUE = "dihya.ingest.health"  # ingest's own copy of delivery.attempted (endpoint health)
UPWARD_STEP = 0.2
UPWARD_TRIES = 3
"""When every fraction of the sweep was held, the search first tries rates above it, this much
of *S* higher each time (at most this many), so that a saturation measured on a slow stretch
does not cap the sustained rate."""


_T0 = time.monotonic()


def say(text: str = "") -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", flush=True)


@dataclass
class Options:
    """Everything a run can be told; the presets are in :mod:`bench.__main__`."""

    out: Path
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    own_vhost: bool = True
    replicas: dict[str, int] = field(default_factory=dict)
    store: str = "sqlite"
    pg_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    event_bytes: int = 1024
    window: int = 1000
    admitted_duration: float = 12.0
    duration: float = 8.0
    search_steps: int = 2
    """Bisection steps for the sustained rate (raw chain and Dihya over AMQP), between the
    sweep's highest fraction sustained and the next one up: 2 steps narrow a 0.25 x S gap to
    0.0625 x S. 0: the sustained rate is the sweep's best."""
    sustained_duration: float = 16.0
    """Seconds of each search phase: whether a queue grows without bound is judged on the trend
    of a phase's second half, after the pipeline has filled, so it needs a long one."""
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.2)
    raw_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.2)
    http: bool = True
    http_fractions: tuple[float, ...] = (0.5, 1.0)
    fixed_rate: float | None = None
    """Paced phases at this many deliveries/s instead of fractions of saturation (smoke)."""
    repeats: int = 2
    """Saturation runs of the raw chain and of Dihya over AMQP repeated this many more times
    after the sweeps, in pairs, each pair in the other order: the ratio is judged on the median
    of the pairs, as one pair moves with the machine's slow stretches."""
    profile: bool = True
    profile_duration: float = 10.0
    profile_at: float | None = None
    """Profile a paced run at this fraction of saturation (None: a saturation run)."""
    slow: bool = True
    slow_duration: float = 25.0
    slow_fraction: float = 0.5
    slow_delay: float = 2.0
    fast_endpoints: int = 4
    realistic: bool = True
    realistic_duration: float = 20.0
    hot_rate: float = 200.0
    """Events/s offered to the hot endpoint of the realistic-receivers phase."""
    real_endpoints: int = 4
    real_rate: float = 100.0
    """Deliveries/s to the other endpoints of that phase, between them."""
    warmup_events: int = 200
    drain_timeout: float = 30.0
    settle_timeout: float = 120.0
    """Before each phase, wait up to this long for every queue to be empty (and audit idle):
    most phases wait a second or two; after an overload phase audit needs a minute or more."""
    audit_timeout: float = 30.0
    verify_every: int = 1
    keep_logs: bool = False
    fast_path: bool = True
    """The broker fast path (DIHYA_AMQP_FAST_PATH); ``--plain-path`` turns it off."""
    service_env: dict[str, str] = field(default_factory=dict)
    """DIHYA_* settings given to every service (``--set``), recorded with the results."""
    overload: bool = True
    overload_factors: tuple[float, ...] = (1.5, 3.0)
    """Overload phases at these multiples of the sustained rate, open loop."""
    overload_duration: float = 60.0
    """Seconds of load of each overload phase."""
    overload_drain_timeout: float = 600.0
    """Longest wait for an overload phase's backlog to drain."""
    recovery_window: float = 30.0
    """Fresh events keep coming this long after an overload's drain (its p99 recovery)."""
    overload_raw: bool = True
    """The raw chain goes through the same overload phases (side by side)."""
    backlog: int = 1_000_000
    """Deliveries piled up for the failing endpoint of the backlog phase (0: no phase)."""
    backlog_fraction: float = 0.3
    """Rate of the backlog's events, as a share of the sustained rate (each fails and comes
    back at least once while it piles up: the stages see about twice it)."""
    backlog_others_fraction: float = 0.1
    """Deliveries/s to the fast endpoints meanwhile, as a share of the sustained rate."""
    backlog_timeout: float = 10_800.0
    """Longest wait for the backlog to fail once, and then to drain."""
    retry_schedule: str | None = None
    """DIHYA_DELIVERER_RETRY_SCHEDULE for the run (None: the deliverer's default)."""
    catch_up: bool = False
    """Run Dihya with DIHYA_DELIVERER_CATCH_UP=true: the backlog drains from the endpoint's
    recovery on at the pipeline's pace instead of on its schedule."""
    rabbitmqctl: str = "rabbitmqctl"
    """How to reach the node for its memory and alarms (``-n`` and the environment of a node
    of one's own: ``--rabbitmqctl 'env HOME=... rabbitmqctl -n name'``)."""
    broker_interval: float = 15.0
    """Seconds between two memory and alarm samples of the node (each costs ~0.8 s of CPU)."""
    preset: str = "full"


@dataclass
class Target:
    """Something the load generator drives."""

    name: str
    send: Send
    fanout: int
    """Deliveries per event that the sink counts for this target."""
    group: str
    """Sink endpoint group those deliveries land in."""
    dihya: bool


# -- processes -----------------------------------------------------------------------------


@contextlib.contextmanager
def vhost(url: str) -> Any:
    """A throw-away vhost (rabbitmqctl, as the demo does), deleted afterwards."""
    from demo.__main__ import demo_vhost

    with demo_vhost(url) as scoped:
        yield scoped


class Child:
    """A helper process of the harness (sink, raw stages), its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env},
                                         stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                               + self.log.read_text(errors="replace")[-2000:])

    async def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return await asyncio.to_thread(self.proc.wait, 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


class SinkClient:
    """The controller's side of the sink's HTTP control API."""

    def __init__(self, http: aiohttp.ClientSession, port: int, slow_port: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"
        self.slow_base = f"http://127.0.0.1:{slow_port}"

    def url(self, name: str) -> str:
        return f"{self.slow_base if name.startswith('slow') else self.base}/hooks/{name}"

    async def count(self, phase: str, group: str | None = None) -> int:
        params = {"group": group} if group else None
        async with self.http.get(f"{self.base}/count/{phase}", params=params) as resp:
            return int(await resp.text())

    async def stats(self, phase: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/stats/{phase}") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def slow(self, delay: float) -> None:
        async with self.http.post(f"{self.base}/control", json={"slow_delay": delay}) as resp:
            resp.raise_for_status()

    async def down(self, names: list[str]) -> None:
        """These endpoints answer 503 from now on (an empty list: every endpoint is up)."""
        async with self.http.post(f"{self.base}/control", json={"down": names}) as resp:
            resp.raise_for_status()

    async def attempts(self, phase: str) -> dict[str, Any]:
        """Failed attempts of ``phase`` and the sampled events' attempt times."""
        async with self.http.get(f"{self.base}/attempts/{phase}") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_ready(self, child: Child, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            child.check()
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(f"{self.base}/ready") as resp:
                    if resp.status == 200:
                        return
            if loop.time() > deadline:
                raise TimeoutError("sink not ready")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def postgres_databases(base: str, names: list[str]) -> AsyncIterator[dict[str, str]]:
    """Fresh PostgreSQL databases for the stateful services, dropped afterwards."""
    import asyncpg

    tag = uuid.uuid4().hex[:6]
    made = {name: f"dihya_bench_{tag}_{name}" for name in names}
    admin = await asyncpg.connect(base)
    try:
        for db in made.values():
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    prefix = base.rsplit("/", 1)[0]
    try:
        yield {name: f"{prefix}/{db}" for name, db in made.items()}
    finally:
        admin = await asyncpg.connect(base)
        try:
            for db in made.values():
                await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await admin.close()


# -- the run -------------------------------------------------------------------------------


class Bench:
    """State shared by the phases of one run."""

    def __init__(self, opts: Options, sink: SinkClient, procs: ProcSampler,
                 queues: QueueSampler, audit: AuditFollower | None,
                 deferred: Callable[[], Awaitable[float]] | None = None,
                 dead_lettered: Callable[[], Awaitable[float]] | None = None) -> None:
        self.opts = opts
        self.deferred = deferred
        self.dead_lettered = dead_lettered
        """The deliverers' dead letters so far (every reason): a phase waiting for deliveries
        stops waiting for those."""
        self.sink = sink
        self.procs = procs
        self.queues = queues
        self.audit = audit
        self.phases: list[dict[str, Any]] = []
        self._n = 0

    async def settle(self, timeout: float) -> tuple[float, dict[str, int]]:
        """Wait until no queue holds ready messages and audit holds none unacked (what an
        earlier phase left behind), so every phase starts from an idle system; return how long
        it took and what was left. Audit's prefetch holds up to 1,000 batches of facts that no
        queue depth shows: after an overload phase it went on working through the next phase."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        while True:
            left = {q: n for q, n in (await self.queues.depths()).items() if n}
            if not left and self.audit is not None:
                with contextlib.suppress(Exception):  # a stopped audit holds nothing
                    held = await dihya_in_flight(self.audit.http, self.audit.base)
                    if held:
                        left["audit, unacked"] = int(held)
            if not left or loop.time() > deadline:
                return round(loop.time() - started, 2), left
            await asyncio.sleep(0.5)

    async def drain(self, phase: str, group: str, expected: int, timeout: float) -> float:
        """Wait until the sink has ``expected`` deliveries of ``phase`` in ``group``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:  # the count lives in another process: poll it
            if await self.sink.count(phase, group) >= expected:
                break
            await asyncio.sleep(0.1)
        return time.time()

    async def phase(self, target: Target, mode: str, *, rate: float | None = None,
                    duration: float | None = None, label: str | None = None,
                    report: bool = True, during: Callable[[], Awaitable[Any]] | None = None,
                    fraction: float | None = None, drain_timeout: float | None = None
                    ) -> dict[str, Any]:
        """One phase: load, drain (up to ``drain_timeout``, by default the options'), then
        figures. ``rate`` is in deliveries/s."""
        self._n += 1
        phase = f"p{self._n}"
        opts = self.opts
        settle_s, left = await self.settle(opts.settle_timeout)
        deferred = await self.deferred() if target.dihya and self.deferred else None
        load_before = loadavg()
        side: asyncio.Task[Any] | None = (asyncio.create_task(_call(during))
                                          if during is not None else None)
        if mode == "admitted":
            length = duration or opts.admitted_duration
            stats: SendStats = await admitted(
                target.send, phase, length, opts.window, target.fanout,
                lambda: self.sink.count(phase, target.group))
        else:
            assert rate is not None
            length = duration or opts.duration
            stats = await paced(target.send, phase, rate / target.fanout, length)
        side_result = await side if side is not None else None
        expected = stats.confirmed * target.fanout
        drained = await self.drain(phase, target.group, expected,
                                   drain_timeout or opts.drain_timeout)
        sink = await self.sink.stats(phase)
        warm = min(1.0, 0.2 * length)
        w0, w1 = stats.started + warm, max(stats.ended, stats.started + warm + 0.1)
        bins = dict(sink["bins"].get(target.group, []))
        width = sink["bin_seconds"]
        in_window = sum(n for k, n in bins.items() if w0 <= k * width < w1)
        third = (w1 - w0) / 3
        thirds = [round(sum(n for k, n in bins.items()
                            if w0 + i * third <= k * width < w0 + (i + 1) * third) / third, 1)
                  for i in range(3)]
        delivered = sink["by_endpoint"]
        got = sum(n for name, n in delivered.items() if name.split("-", 1)[0] == target.group)
        result: dict[str, Any] = {
            "phase": phase,
            "label": label or f"{target.name} {mode}",
            "target": target.name,
            "mode": mode,
            "offered_dps": round(rate, 1) if rate is not None else None,
            "fraction_of_saturation": fraction,
            "window": opts.window if mode == "admitted" else None,
            "duration_s": length,
            "fanout": target.fanout,
            **stats.as_json(),
            "expected": expected,
            "delivered": got,
            "delivered_by_endpoint": delivered,
            "invalid": sink["invalid"],
            "duplicates": sink["duplicates"],
            "unverified": sink["unverified"],
            "mean_body_bytes": sink["mean_body_bytes"],
            "throughput_dps": round(in_window / (w1 - w0), 1),
            "thirds_dps": thirds,
            "drain_s": round(drained - stats.ended, 2),
            "load_started_at": stats.started,
            "load_ended_at": stats.ended,
            "drained_at": drained,
            "latency_ms": sink["latency_ms"].get(target.group),
            "latency_ms_by_group": sink["latency_ms"],
            "settle_s": settle_s,
            "backlog_at_start": left,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            **self.procs.window(w0, w1),
            # the trend of the load's second half: the first fills the pipeline
            "queues": self.queues.window(stats.started, drained, load_end=stats.ended,
                                         settled_from=(stats.started + stats.ended) / 2),
        }
        if deferred is not None and self.deferred is not None:
            result["deferred"] = await self.deferred() - deferred
        if target.dihya and self.audit is not None:
            complete = await self.audit.wait(phase, got, opts.audit_timeout)
            result["audit"] = self.audit.lag(phase, stats.ended, sink["last"], got, complete)
        if side_result is not None:
            result["side"] = side_result
        if report:
            self.phases.append(result)
        lat = result["latency_ms"] or {}
        failed = f", {stats.failed} failed" if stats.failed else ""
        say(f"  {result['label']:<34} offered {_fmt(rate)} → {result['throughput_dps']:>7.1f}/s"
            f"  p50 {_fmt(lat.get('p50'))} p99 {_fmt(lat.get('p99'))} ms"
            f"  ({got}/{expected} delivered{failed})")
        return result

    async def sweep(self, target: Target, fractions: tuple[float, ...], *,
                    search: bool = False) -> float:
        """Admission-controlled saturation, then paced runs (and, with ``search``, the search
        for the sustained rate); returns the saturation."""
        sat = await self.phase(target, "admitted", label=f"{target.name} saturation")
        saturation = max(1.0, float(sat["throughput_dps"]))
        held: dict[float, bool] = {}
        for fraction in fractions:
            rate = self.opts.fixed_rate or fraction * saturation
            result = await self.phase(target, "paced", rate=rate,
                                      fraction=None if self.opts.fixed_rate else fraction,
                                      label=f"{target.name} paced {fraction:g}xS"
                                      if not self.opts.fixed_rate else f"{target.name} paced")
            held[fraction] = sustains(result)
        if search and not self.opts.fixed_rate:
            await self.search(target, saturation, held)
        return saturation

    async def search(self, target: Target, saturation: float, held: dict[float, bool]) -> None:
        """Bisect for the highest paced rate the target sustains (:func:`bench.report.sustains`).

        Why: the admission-controlled saturation is a peak reached with the publisher held to
        a window; offered open-loop at that rate, both the raw chain and Dihya fall behind and
        their queues grow (deep quorum queues cost RabbitMQ more per message, so they fall
        further). The rate a system sustains lies below, between the sweep's highest fraction
        sustained and the next one up."""
        low = max((f for f, ok in held.items() if ok), default=0.0)
        high = min((f for f, ok in held.items() if not ok and f > low), default=None)
        for _ in range(UPWARD_TRIES if high is None else 0):
            # every rate offered was held (a saturation run on a slow stretch): look above
            above = round(low + UPWARD_STEP, 4)
            if await self._held_at(target, saturation, above):
                low = above
            else:
                high = above
                break
        if high is None:
            return
        for _ in range(self.opts.search_steps):
            middle = round((low + high) / 2, 4)
            if await self._held_at(target, saturation, middle):
                low = middle
            else:
                high = middle

    async def _held_at(self, target: Target, saturation: float, fraction: float) -> bool:
        result = await self.phase(target, "paced", rate=fraction * saturation,
                                  duration=self.opts.sustained_duration, fraction=fraction,
                                  label=f"{target.name} search {fraction:g}xS")
        result["search"] = True
        return sustains(result)


async def _call(during: Callable[[], Awaitable[Any]]) -> Any:
    return await during()


def _fmt(value: Any) -> str:
    return f"{value:>7.1f}" if isinstance(value, int | float) else "      -"


def make_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def code_state() -> dict[str, Any]:
    """The commit the run's code comes from, and whether tracked files differed from it: read
    when the run starts (the processes load the code then; a checkout may move during a run)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def conditions(opts: Options, rabbit_version: str | None, code: dict[str, Any]
               ) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import psutil

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "machine": {"cpu": cpu, "cores": os.cpu_count(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform()},
        "python": platform.python_version(),
        "rabbitmq": rabbit_version,
        "packages": {d: version(d) for d in ("aio-pika", "aiormq", "aiohttp", "uvloop",
                                             "pydantic", "sqlalchemy", "aiosqlite", "asyncpg",
                                             "orjson", "structlog")},
        "git": code,
        "processes_per_service": {s: opts.replicas.get(s, 1) for s in SERVICES},
        "store": opts.store,
        "event_bytes": opts.event_bytes,
        "everything_on": "127.0.0.1 (one machine: RabbitMQ, Dihya, sink, load generator)",
    }


async def run(opts: Options) -> dict[str, Any]:
    """Run the whole benchmark; write ``results.json`` (and the plot) to ``opts.out``."""
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    start_load = loadavg()
    code = code_state()
    say(f"Dihya benchmark ({opts.preset}) → {opts.out}   load average {loadavg()}")
    if opts.own_vhost:
        from demo.__main__ import ensure_broker

        await ensure_broker(opts.amqp_url)
    async with contextlib.AsyncExitStack() as stack:
        url = stack.enter_context(vhost(opts.amqp_url)) if opts.own_vhost else opts.amqp_url
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dihya-bench-")))
        if opts.keep_logs:
            stack.callback(lambda: _keep_logs(tmp, opts.out / "logs"))
        http = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60)))

        names = ["raw", "main", *(f"fast-{i}" for i in range(opts.fast_endpoints)), "slow-0",
                 "hot", *(f"real-{i}" for i in range(opts.real_endpoints)), backlog.DOWN]
        keys = {name: make_secret() for name in names}
        (tmp / "secrets.json").write_bytes(orjson.dumps(keys))
        port, slow_port = free_port(), free_port()
        sink_proc = Child("sink", ["-m", "bench.sink", "--port", str(port), "--slow-port",
                                   str(slow_port), "--secrets", str(tmp / "secrets.json"),
                                   "--verify-every", str(opts.verify_every)], {},
                          tmp / "sink.log")
        stack.push_async_callback(sink_proc.stop)
        sink = SinkClient(http, port, slow_port)
        await sink.wait_ready(sink_proc)

        await raw_chain.declare(url)
        stage_env = {"BENCH_AMQP_URL": url, "BENCH_RAW_SECRET": keys["raw"],
                     "BENCH_SINK_URL": sink.url("raw")}
        relay = Child("raw-relay", ["-m", "bench.raw_chain", "relay"], stage_env,
                      tmp / "raw-relay.log")
        stack.push_async_callback(relay.stop)
        poster = Child("raw-poster", ["-m", "bench.raw_chain", "poster"], stage_env,
                       tmp / "raw-poster.log")
        stack.push_async_callback(poster.stop)

        database_urls: dict[str, str] = {}
        if opts.store == "postgres":
            database_urls = await stack.enter_async_context(
                postgres_databases(opts.pg_url, ["ingest", "signer", "audit"]))
        env = {"DIHYA_AMQP_FAST_PATH": "true" if opts.fast_path else "false"}
        if opts.retry_schedule:
            env["DIHYA_DELIVERER_RETRY_SCHEDULE"] = opts.retry_schedule
        if opts.catch_up:
            env["DIHYA_DELIVERER_CATCH_UP"] = "true"
        env.update(opts.service_env)  # --set last: it wins
        system = System(url, tmp / "dihya", replicas=dict(opts.replicas),
                        database_urls=database_urls, env=env)
        exit_codes: dict[str, int | None] = {}

        async def stop_system() -> None:
            exit_codes.update(await system.stop())

        stack.push_async_callback(stop_system)
        say("Starting Dihya (" + ", ".join(f"{s} x{system.count(s)}" for s in SERVICES)
            + f", {opts.store}), the sink and the raw chain…")
        await system.start()
        relay.check()
        poster.check()

        ingest, admin = system.url("ingest"), system.admin_token
        await register(http, ingest, admin, sink.url("main"), [LOAD_TYPE], keys["main"])
        for name in names[2:]:
            kind = {"hot": HOT_TYPE, "real": REAL_TYPE, "down": BACKLOG_TYPE}.get(
                name.split("-", 1)[0], FANOUT_TYPE)
            await register(http, ingest, admin, sink.url(name), [kind], keys[name])
        token = await publisher_token(http, ingest, admin)

        events = EventFactory(LOAD_TYPE, opts.event_bytes)
        raw_send = AmqpSender(url, "", raw_chain.IN_QUEUE, events)
        amqp_send = AmqpSender(url, topology.EVENTS_EXCHANGE, LOAD_TYPE, events)
        fan_send = AmqpSender(url, topology.EVENTS_EXCHANGE, FANOUT_TYPE,
                              EventFactory(FANOUT_TYPE, opts.event_bytes))
        http_send = HttpSender(ingest, token, events)
        hot_send = AmqpSender(url, topology.EVENTS_EXCHANGE, HOT_TYPE,
                              EventFactory(HOT_TYPE, opts.event_bytes))
        real_send = AmqpSender(url, topology.EVENTS_EXCHANGE, REAL_TYPE,
                               EventFactory(REAL_TYPE, opts.event_bytes))
        down_send = AmqpSender(url, topology.EVENTS_EXCHANGE, BACKLOG_TYPE,
                               EventFactory(BACKLOG_TYPE, opts.event_bytes))
        for sender in (raw_send, amqp_send, fan_send, http_send, hot_send, real_send,
                       down_send):
            await sender.open()
            stack.push_async_callback(sender.close)

        dihya_queues = [topology.INGEST_EVENTS, topology.SIGNER_JOBS, topology.DELIVERER_JOBS,
                        topology.AUDIT_FACTS, HEALTH_QUEUE, topology.defer_queue(DEFER_TIER_MS)]
        delays_ms = (parse_schedule(opts.retry_schedule) if opts.retry_schedule
                     else topology.DEFAULT_RETRY_DELAYS_MS)
        tiers = [topology.retry_queue(d) for d in sorted(set(delays_ms))] if opts.backlog \
            else []
        rabbit = rabbitmq_pids(urlsplit(url).port or 5672)
        # with --store postgres, PostgreSQL's server works for Dihya (and not for the raw
        # chain): its CPU counts as Dihya's, not as other work
        postmaster = listening_pid(urlsplit(opts.pg_url).port or 5432) \
            if opts.store == "postgres" else None

        def groups() -> dict[str, list[int]]:
            found = {s: system.pids(s) for s in SERVICES}
            found.update({"rabbitmq": rabbit, "sink": [sink_proc.proc.pid],
                          "raw-relay": [relay.proc.pid], "raw-poster": [poster.proc.pid],
                          "loadgen": [os.getpid()]})
            if postmaster is not None:
                found["postgres"] = postgres_pids(postmaster)
            return found

        procs = ProcSampler(groups)
        procs.start()
        stack.push_async_callback(procs.stop)
        queues = QueueSampler(url, [raw_chain.IN_QUEUE, raw_chain.OUT_QUEUE, *dihya_queues,
                                    *tiers], interval=0.5)
        await queues.start()
        stack.push_async_callback(queues.stop)
        audit = AuditFollower(http, system.url("audit"), admin)
        deliverers = [system.url("deliverer", i) for i in range(system.count("deliverer"))]

        async def deferred() -> float:
            return await metric(http, deliverers, "dihya_deliverer_deferred_total")

        async def dead_lettered() -> float:
            return await metric(http, deliverers, "dihya_deliverer_dead_lettered_total")

        bench = Bench(opts, sink, procs, queues, audit, deferred, dead_lettered)

        raw = Target("raw", raw_send, 1, "raw", False)
        dihya = Target("dihya-amqp", amqp_send, 1, "main", True)
        via_http = Target("dihya-http", http_send, 1, "main", True)
        fan = Target("dihya-fanout", fan_send, opts.fast_endpoints, "fast", True)

        warm = opts.warmup_events
        if warm > 0:  # connections, caches, the signer's copy of the secrets
            say("Warming up…")
            for target in (raw, dihya, via_http):
                await bench.phase(target, "paced", rate=min(200.0, warm), duration=warm / min(
                    200.0, warm), label=f"{target.name} warm-up", report=False)
            await bench.phase(fan, "paced", rate=10.0 * opts.fast_endpoints, duration=1.0,
                              label="fan-out warm-up", report=False)
        rabbit_version = await _rabbit_version(url)

        say("Raw chain (publisher → HMAC relay → aiohttp poster → sink):")
        s_raw = await bench.sweep(raw, opts.raw_fractions, search=True)
        say("Dihya, events published over AMQP:")
        s_dihya = await bench.sweep(dihya, opts.fractions, search=True)
        s_http = None
        if opts.http:
            say("Dihya, events published over HTTP (POST /v1/events):")
            s_http = await bench.sweep(via_http, opts.http_fractions)

        for pair in range(1, opts.repeats + 1):
            say(f"Saturation again, pair {pair} of {opts.repeats}:")
            for target in (dihya, raw) if pair % 2 else (raw, dihya):
                result = await bench.phase(target, "admitted",
                                           label=f"{target.name} saturation, pair {pair}")
                result["pair"] = pair

        profiled: dict[str, Any] = {"skipped": "disabled (--no-profile)"}
        if opts.profile:
            where = ("saturation again" if opts.profile_at is None
                     else f"{opts.profile_at:g} x saturation")
            say(f"Profile: {where}, py-spy attached to every service process…")
            profiled = await _profile(bench, dihya, system, opts, s_dihya)

        slow: dict[str, Any] | None = None
        if opts.slow:
            say(f"Slow endpoint: {opts.fast_endpoints} fast endpoints + 1 answering in "
                f"{opts.slow_delay:g} s (another receiver):")
            slow = await _slow_scenario(bench, fan, sink, opts, s_dihya)

        await sink.slow(0)
        receivers: dict[str, Any] | None = None
        if opts.realistic:
            say("Realistic receivers: a hot endpoint answering in 200 ms, others in 50-500 ms:")
            receivers = await realistic.scenario(
                bench, Target("dihya-hot", hot_send, 1, "hot", True), real_send, opts)
        watch = BrokerWatch(opts.rabbitmqctl, opts.broker_interval)
        overloaded: dict[str, Any] | None = None
        if opts.overload:
            say(f"Overload: open loop at {', '.join(f'{f:g}' for f in opts.overload_factors)}"
                " x the sustained rate…")
            overloaded = await overload.scenario(
                bench, _overloaded(bench, dihya, raw, s_dihya, s_raw, system,
                                   [relay, poster, sink_proc]), watch)
        piled: dict[str, Any] | None = None
        if opts.backlog:
            say(f"Backlog: {opts.backlog} deliveries for an endpoint answering 503…")
            piled = await backlog.scenario(
                bench, Target("dihya-backlog", down_send, 1, "down", True), fan,
                _sustained(bench, dihya, s_dihya), watch,
                tuple(d / 1000 for d in delays_ms), DEFAULT_RETRY_JITTER)
        final_queues = await queues.depths()
        peak_rss = procs.peak_rss()
        finished_load = loadavg()

    results = {
        "schema": 1,
        "preset": opts.preset,
        "fast_path": opts.fast_path,
        "started_at": started,
        "finished_at": time.time(),
        "duration_s": round(time.time() - started, 1),
        "conditions": conditions(opts, rabbit_version, code),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
                     if k not in {"pg_url"}},
        "loadavg": {"start": start_load, "end": finished_load},
        "phases": bench.phases,
        "profile": profiled,
        "slow_endpoint": slow,
        "realistic_receivers": receivers,
        "overload": overloaded,
        "backlog": piled,
        "queues_at_end": final_queues,
        "peak_rss_process_mib": peak_rss,
        "exit_codes": exit_codes,
    }
    from bench.report import finish

    return finish(results, s_raw=s_raw, s_dihya=s_dihya, s_http=s_http)


def _sustained(bench: Bench, target: Target, saturation: float) -> float:
    """The target's sustained rate (its saturation if it sustained none; the fixed rate of a
    run at one rate)."""
    if bench.opts.fixed_rate:
        return bench.opts.fixed_rate
    held = sustained_phase({"phases": bench.phases}, target.name)
    return float(held["offered_dps"]) if held else saturation


def _overloaded(bench: Bench, dihya: Target, raw: Target, s_dihya: float, s_raw: float,
                system: System, children: list[Child]) -> list[overload.Overloaded]:
    """The overload phases' targets: (``overload_raw``) the raw chain, then Dihya over AMQP."""
    def p99(target: Target) -> float | None:
        half = half_saturation({"phases": bench.phases}, target.name)
        return ((half or {}).get("latency_ms") or {}).get("p99")

    def dihya_down() -> dict[str, list[int | None]]:
        return {s: [p.returncode for p in system.replica_procs[s] if p is not None
                    and p.poll() is not None] for s in SERVICES
                if any(p is None or p.poll() is not None for p in system.replica_procs[s])}

    def raw_down() -> dict[str, list[int | None]]:
        return {c.name: [c.proc.returncode] for c in children if c.proc.poll() is not None}

    # the raw chain first: its phases leave nothing behind, where Dihya's leave audit a
    # backlog that, run first, took CPU from the raw chain's overload phases
    targets = [overload.Overloaded(raw, _sustained(bench, raw, s_raw), p99(raw), raw_down)
               ] if bench.opts.overload_raw else []
    targets.append(overload.Overloaded(dihya, _sustained(bench, dihya, s_dihya), p99(dihya),
                                       dihya_down))
    return targets


async def _rabbit_version(url: str) -> str | None:
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(url)
        async with connection:
            props = connection.transport.connection.server_properties  # type: ignore[union-attr]
            version = props.get("version")
            return version.decode() if isinstance(version, bytes) else str(version)
    return None


def _keep_logs(src: Path, dest: Path) -> None:
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for log in src.rglob("*.log"):
        shutil.copy2(log, dest / log.name)


async def _profile(bench: Bench, target: Target, system: System, opts: Options,
                   saturation: float) -> dict[str, Any]:
    if profile.py_spy() is None:
        return {"skipped": "py-spy not installed (it is in the bench extra: bin/bench)"}
    out_dir = opts.out / "profile"
    pids = {s: system.pids(s) for s in SERVICES}

    files: dict[str, list[Path]] = {}
    threads: dict[str, dict[str, float]] = {}

    async def during() -> str:
        await asyncio.sleep(1.0)  # past the ramp
        before = {s: profile.thread_cpu(p) for s, p in pids.items()}
        began = time.monotonic()
        files.update(await profile.record(pids, opts.profile_duration, out_dir))
        span = time.monotonic() - began
        for s, p in pids.items():
            after = profile.thread_cpu(p)
            threads[s] = {f"{k}_thread_cpu_pct": round(100 * (after[k] - before[s][k]) / span, 1)
                          for k in after}
        return "py-spy"

    try:
        if opts.profile_at is None:
            result = await bench.phase(target, "admitted", duration=opts.profile_duration + 2,
                                       label="dihya-amqp saturation (profiled)", report=False,
                                       during=during)
        else:
            result = await bench.phase(target, "paced", rate=opts.profile_at * saturation,
                                       duration=opts.profile_duration + 2,
                                       label=f"dihya-amqp paced {opts.profile_at:g}xS (profiled)",
                                       report=False, during=during, fraction=opts.profile_at)
    except RuntimeError as exc:
        return {"skipped": str(exc)}
    return {
        "at": "saturation" if opts.profile_at is None else f"{opts.profile_at:g} x saturation",
        "throughput_dps_under_profiler": result["throughput_dps"],
        "cpu_pct": result["cpu_pct"],
        "duration_s": opts.profile_duration,
        "rate_hz": 100,
        "raw_files": {g: [str(p.relative_to(opts.out)) for p in ps] for g, ps in files.items()},
        "services": {g: {**threads.get(g, {}), **profile.summarise(ps, ROOT)}
                     for g, ps in files.items()},
    }


async def _slow_scenario(bench: Bench, fan: Target, sink: SinkClient, opts: Options,
                         s_dihya: float) -> dict[str, Any]:
    total = opts.fixed_rate or opts.slow_fraction * s_dihya  # deliveries/s, all 5 endpoints
    fast_rate = total * opts.fast_endpoints / (opts.fast_endpoints + 1)
    runs: dict[str, Any] = {}
    for name, delay in (("baseline", 0.0), ("slow", opts.slow_delay)):
        await sink.slow(delay)
        result = await bench.phase(
            fan, "paced", rate=fast_rate, duration=opts.slow_duration,
            label=f"fan-out, 5th endpoint {'slow' if delay else 'fast'}")
        result["slow_endpoint_delay_s"] = delay
        runs[name] = result
    await sink.slow(0)
    base, slow = runs["baseline"]["throughput_dps"], runs["slow"]["throughput_dps"]
    thirds = {name: run.get("thirds_dps") for name, run in runs.items()}
    return {
        "slow_delay_s": opts.slow_delay,
        "offered_events_per_s": round(fast_rate / opts.fast_endpoints, 1),
        "offered_fast_dps": round(fast_rate, 1),
        "fast_dps_baseline": base,
        "fast_dps_with_slow": slow,
        "fast_throughput_drop_pct": round(100 * (base - slow) / base, 1) if base else None,
        "fast_p99_ms_baseline": (runs["baseline"]["latency_ms"] or {}).get("p99"),
        "fast_p99_ms_with_slow": (runs["slow"]["latency_ms"] or {}).get("p99"),
        "slow_endpoint_received": runs["slow"]["delivered_by_endpoint"].get("slow-0", 0),
        "deferred_jobs": runs["slow"].get("deferred"),
        "fast_dps_by_third_of_window": thirds,
        "defer_queue_trend_per_s": runs["slow"]["queues"].get(
            topology.defer_queue(DEFER_TIER_MS), {}).get("slope_per_s"),
        "signer_cpu_pct": {n: r["cpu_pct"].get("signer") for n, r in runs.items()},
        "phases": [runs["baseline"]["phase"], runs["slow"]["phase"]],
    }
