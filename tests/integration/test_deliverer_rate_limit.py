# ruff: noqa: F811 - the fixtures imported below are requested by name as parameters
"""Rate-limited endpoints: two deliverer replicas on the real RabbitMQ (separate processes for
the 30 s rate test, as deployed; in-process elsewhere, each with its own broker connection and
consumers), real receivers on 127.0.0.1.

The rate limit holds across replicas because each paced queue has a single active consumer:
both replicas subscribe to every paced queue (checked), RabbitMQ feeds one of them, and its
pacer alone spaces the endpoint's POSTs. Two independent pacers would deliver twice the rate.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web

from services.deliverer.app import start
from services.deliverer.decisions.pacing import shard_of
from services.deliverer.settings import Settings
from shared import topology
from shared.broker import Publisher
from shared.contracts import DeliveryJob, RateLimit, decode_facts
from tests.conftest import free_port
from tests.integration.test_deliverer_service import (  # noqa: F401 - fixtures
    amqp,
    deliverer,
    hand_over,
    make_job,
    publisher,
    signed_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMITED = 150
"""Jobs of the 5/s endpoint: at its pace (one per 220 ms) a little over 30 s of deliveries."""
OUTSTANDING = 50
"""Jobs of the unlimited endpoint published ahead of its deliveries (a closed loop: as fast
as the deliverers take them)."""


@dataclass
class Arrivals:
    """A real receiver answering 200 (or the script's answers first), noting when each
    delivery arrived (event-loop time) and its ``webhook-id``."""

    port: int
    seen: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    scripts: dict[str, list[web.Response]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.seen.setdefault(path, []).append((asyncio.get_running_loop().time(),
                                               request.headers.get("webhook-id", "")))
        await request.read()
        self.arrived.set()
        script = self.scripts.get(path)
        if script:
            return script.pop(0)
        return web.Response(status=200)

    def times(self, path: str) -> list[float]:
        return sorted(t for t, _ in self.seen.get(path, []))

    def ids(self, path: str) -> Counter[str]:
        return Counter(i for _, i in self.seen.get(path, []))


@pytest.fixture
async def arrivals() -> AsyncIterator[Arrivals]:
    rec = Arrivals(free_port())
    app = web.Application()
    app.router.add_post("/{path}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    await runner.cleanup()


class ProcessReceiver:
    """The limited endpoint's receiver, in a process of its own
    (:mod:`tests.integration.arrivals_process`): arrivals timed as they come, not when this
    busy test process (its GIL, its event loop, an endpoint at full speed) gets to them.
    Measured with a receiver thread here instead: gaps of 2 ms after stalls of 600 ms."""

    def __init__(self, log: Path) -> None:
        self._log = log
        port = free_port()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.arrivals_process", str(log), str(port)],
            stdout=subprocess.PIPE, cwd=ROOT)
        try:
            assert self._proc.stdout is not None
            assert self._proc.stdout.readline().strip() == b"ready"
        except BaseException:  # not ready: no fixture will close it, so stop it here
            self.close()
            raise
        self.url = f"http://127.0.0.1:{port}/limited"

    def _seen(self) -> list[tuple[float, str]]:
        lines = self._log.read_text().splitlines() if self._log.exists() else []
        return [(float(at), wid) for at, wid in (line.split(" ", 1) for line in lines)]

    def times(self) -> list[float]:
        return sorted(t for t, _ in self._seen())

    def ids(self) -> Counter[str]:
        return Counter(i for _, i in self._seen())

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(30)


def _spawn_deliverer(amqp_url: str, log: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    env = {**os.environ, "DIHYA_AMQP_URL": amqp_url, "DIHYA_DELIVERER_PORT": str(port),
           "DIHYA_DELIVERER_RETRY_SCHEDULE": "200ms,400ms",
           "DIHYA_ALLOWED_NETWORKS": "127.0.0.0/8", "DIHYA_SHUTDOWN_GRACE": "2"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.deliverer"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, port, log


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ProcessReceiver]:
    started = ProcessReceiver(tmp_path / "arrivals.txt")
    yield started
    started.close()


@contextlib.asynccontextmanager
async def deliverer_processes(amqp_url: str, count: int, log_dir: Path
                              ) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """``count`` deliverers as deployed: ``python -m services.deliverer`` each, ready (their
    ``/readyz`` answered 200) before the body runs; SIGTERMed and awaited after it."""
    procs: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    try:
        for n in range(count):
            procs.append(_spawn_deliverer(amqp_url, log_dir / f"deliverer-{n}.log"))
        async with aiohttp.ClientSession() as http:
            for proc, port, log in procs:
                async with asyncio.timeout(60):
                    while True:
                        assert proc.poll() is None, log.read_text()[-3000:]
                        with contextlib.suppress(aiohttp.ClientError):
                            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                                if resp.status == 200:
                                    break
                        await asyncio.sleep(0.1)  # not up yet: nothing to await but a poll
        yield [proc for proc, _, _ in procs]
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in procs:
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()


def most_in_a_second(times: list[float]) -> int:
    """The most arrivals in any closed one-second window (the worst one starts at one)."""
    return max((bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)),
               default=0)


async def consumers_of(vhost: str, queue: str) -> list[bool]:
    """Whether each consumer of ``queue`` is the active one (``rabbitmqctl list_consumers``)."""
    listed = await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", "-q", "list_consumers", "-p", vhost, "queue_name",
                         "active", "--formatter", "json"],
        check=True, capture_output=True, timeout=60)
    return [bool(c["active"]) for c in json.loads(listed.stdout)
            if c["queue_name"] == queue]


def limited_job(url: str, endpoint: str, limit: RateLimit) -> DeliveryJob:
    return make_job(url).model_copy(update={"endpoint_id": endpoint, "rate_limit": limit})


async def wait_until(predicate: object, timeout: float, arrived: asyncio.Event) -> None:
    """Until ``predicate()`` holds, woken by each arrival (no polling sleep)."""
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            arrived.clear()
            if predicate():
                return
            await arrived.wait()


@contextlib.asynccontextmanager
async def facts_of(amqp: AbstractRobustConnection, endpoints: set[str], arrived: asyncio.Event
                   ) -> AsyncIterator[Counter[str]]:
    """Counts the ``delivery.attempted`` facts of ``endpoints`` by delivery id (setting
    ``arrived`` at each)."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.AUDIT_EXCHANGE, "delivery.attempted")
    seen: Counter[str] = Counter()

    async def on_fact(message: AbstractIncomingMessage) -> None:
        for fact in decode_facts(message.body):
            if fact.endpoint_id in endpoints and fact.delivery_id is not None:
                seen[fact.delivery_id] += 1
                arrived.set()
        await message.ack()

    await queue.consume(on_fact)
    try:
        yield seen
    finally:
        await channel.close()


async def test_a_5_per_second_endpoint_gets_at_most_5_in_any_second_across_two_replicas(
        amqp_url: str, amqp: AbstractRobustConnection, publisher: Publisher,
        arrivals: Arrivals, receiver: ProcessReceiver, tmp_path: Path) -> None:
    limit = RateLimit(per_second=5)
    endpoint, fast_endpoint = "ep_paced_five", "ep_full_speed"
    limited = [limited_job(receiver.url, endpoint, limit) for _ in range(LIMITED)]
    fast_sent: list[str] = []
    loop = asyncio.get_running_loop()

    async with deliverer_processes(amqp_url, 2, tmp_path), facts_of(
            amqp, {endpoint, fast_endpoint}, arrivals.arrived) as facts:
        shard = topology.paced_queue(shard_of(endpoint, topology.PACED_SHARDS))
        vhost = urlsplit(amqp_url).path.lstrip("/")
        # both replicas subscribed to the endpoint's paced queue; RabbitMQ feeds one
        assert sorted(await consumers_of(vhost, shard)) == [False, True]

        stop = asyncio.Event()

        async def full_speed() -> None:
            """Keeps OUTSTANDING jobs of the unlimited endpoint ahead of its deliveries."""
            while not stop.is_set():
                ahead = len(fast_sent) - len(arrivals.ids("fast"))
                if ahead >= OUTSTANDING:
                    arrivals.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1):
                            await arrivals.arrived.wait()
                    continue
                batch = [make_job(arrivals.url("fast")).model_copy(
                    update={"endpoint_id": fast_endpoint}) for _ in range(OUTSTANDING - ahead)]
                fast_sent.extend(j.event.id or "" for j in batch)
                await asyncio.gather(*(hand_over(publisher, signed_for(j)) for j in batch))

        started = loop.time()
        feeder = asyncio.create_task(full_speed())
        await asyncio.gather(*(hand_over(publisher, signed_for(j)) for j in limited))
        try:
            await wait_until(lambda: len(receiver.ids()) >= LIMITED, 150, arrivals.arrived)
        finally:
            stop.set()
            await feeder
        await wait_until(lambda: set(arrivals.ids("fast")) >= set(fast_sent), 60,
                         arrivals.arrived)
        await wait_until(lambda: len(facts) >= LIMITED + len(fast_sent), 30, arrivals.arrived)

    slow_times, fast_times = receiver.times(), arrivals.times("fast")
    slow_ids, fast_ids = receiver.ids(), arrivals.ids("fast")
    span = slow_times[-1] - slow_times[0]
    fast_span = max(fast_times[-1] - fast_times[0], 1e-9)
    expected = {j.event.id for j in limited}
    worst = most_in_a_second(slow_times)
    per_second = Counter(int(t - started) for t in slow_times)
    gaps = sorted(round((b - a) * 1000) for a, b in itertools.pairwise(slow_times))
    print(f"\ngaps between the limited endpoint's arrivals (ms): shortest {gaps[:8]}, median "
          f"{gaps[len(gaps) // 2]}, longest {gaps[-4:]}")
    print(f"\nbooks: limited endpoint (5/s, 2 replicas): accepted {LIMITED}, delivered "
          f"{len(set(slow_ids) & expected)}, lost {len(expected - set(slow_ids))}, duplicates "
          f"same id {sum(n - 1 for n in slow_ids.values())}, new id "
          f"{len(set(slow_ids) - expected)}; over {span:.1f} s: {(len(slow_times) - 1) / span:.2f}"
          f"/s on average, at most {worst} in any 1 s window")
    print(f"books: unlimited endpoint: accepted {len(fast_sent)}, delivered "
          f"{len(set(fast_ids) & set(fast_sent))}, lost {len(set(fast_sent) - set(fast_ids))}, "
          f"duplicates same id {sum(n - 1 for n in fast_ids.values())}, new id "
          f"{len(set(fast_ids) - set(fast_sent))}; {len(fast_times) / fast_span:.0f}/s")
    print(f"books: audit records (delivery.attempted) {sum(facts.values())} for "
          f"{len(facts)} deliveries; limited endpoint per second of the run: "
          f"{[per_second[s] for s in range(int(slow_times[-1] - started) + 1)]}")
    assert expected == set(slow_ids) and set(fast_sent) == set(fast_ids)  # lost 0, no new id
    assert span >= 30.0
    assert worst <= 5  # "≤ 5.5/s in every 1 s window"
    assert len(slow_times) / span >= 2.5  # paced, not starved (the pace is 4.55/s)
    assert len(fast_times) / fast_span > 5 * 10  # the other endpoint is not held to 5/s
    assert len(facts) == LIMITED + len(fast_sent)


async def test_a_retry_after_holds_the_whole_paced_endpoint(
        amqp_url: str, amqp: AbstractRobustConnection, publisher: Publisher,
        arrivals: Arrivals) -> None:
    """A receiver's 429 Retry-After wins over the rate limit: the endpoint's other jobs wait
    until then (deferred: the wait is longer than MAX_PACE_WAIT), and then go at its pace."""
    limit = RateLimit(per_second=20)
    arrivals.scripts["busy"] = [web.Response(status=429, headers={"Retry-After": "3"})]
    endpoint = "ep_paced_busy"
    jobs = [limited_job(arrivals.url("busy"), endpoint, limit) for _ in range(6)]
    async with deliverer(amqp_url), facts_of(amqp, {endpoint}, arrivals.arrived) as facts:
        await hand_over(publisher, signed_for(jobs[0]))
        await wait_until(lambda: len(arrivals.times("busy")) >= 1, 20, arrivals.arrived)
        # its outcome is judged (and the hold set) before its fact is published
        await wait_until(lambda: bool(facts), 20, arrivals.arrived)
        await asyncio.gather(*(hand_over(publisher, signed_for(j)) for j in jobs[1:]))
        # the first one is retried through the signer (none runs here): five more arrive
        await wait_until(lambda: len(arrivals.times("busy")) >= 6, 30, arrivals.arrived)
    times = arrivals.times("busy")
    print(f"\nbooks: accepted 6, POSTs {len(times)} (the 429 one's retry went to the signer), "
          f"after the 429: {[round(t - times[0], 2) for t in times[1:]]} s")
    assert all(t - times[0] >= 3.0 - 0.05 for t in times[1:])
    assert min(b - a for a, b in itertools.pairwise(times[1:])) >= 0.05 * 0.9
    assert set(arrivals.ids("busy")) == {j.event.id for j in jobs}



async def test_a_takeover_keeps_the_limit_and_loses_nothing(
        amqp_url: str, amqp: AbstractRobustConnection, publisher: Publisher,
        arrivals: Arrivals) -> None:
    """The active replica stops mid-run: the other takes over the paced queue (its held
    deliveries come back redelivered) and the endpoint still gets at most 5 in any second."""
    limit = RateLimit(per_second=5)
    endpoint = "ep_paced_takeover"
    jobs = [limited_job(arrivals.url("takeover"), endpoint, limit) for _ in range(40)]
    settings = Settings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "retry_schedule": "200ms,400ms",
        "allowed_networks": "127.0.0.0/8", "shutdown_grace": 2.0})
    stop_first = await start(settings)  # registered first: the active consumer
    try:
        async with deliverer(amqp_url):
            await asyncio.gather(*(hand_over(publisher, signed_for(j)) for j in jobs))
            await wait_until(lambda: len(arrivals.times("takeover")) >= 12, 60,
                             arrivals.arrived)
            stopped_at = asyncio.get_running_loop().time()
            await stop_first()
            stop_first = None
            await wait_until(lambda: set(arrivals.ids("takeover")) >= {j.event.id for j in jobs},
                             90, arrivals.arrived)
    finally:
        if stop_first is not None:
            await stop_first()
    times, ids = arrivals.times("takeover"), arrivals.ids("takeover")
    expected = {j.event.id for j in jobs}
    worst = most_in_a_second(times)
    print(f"\nbooks: accepted {len(jobs)}, delivered {len(set(ids) & expected)}, lost "
          f"{len(expected - set(ids))}, duplicates same id {sum(n - 1 for n in ids.values())}, "
          f"new id {len(set(ids) - expected)}; before the stop "
          f"{sum(t <= stopped_at for t in times)}, after {sum(t > stopped_at for t in times)}; "
          f"at most {worst} in any 1 s window")
    assert expected == set(ids)
    assert sum(t > stopped_at for t in times) > 0  # the other replica took over
    assert worst <= 5
