"""Catch-up mode end to end (DIHYA_DELIVERER_CATCH_UP): the four services as real processes,
each test on a virtual host of its own, a real HTTP receiver.

Two endpoints fail (503) with the schedule ``1s,20s``: each delivery's first two attempts fail
and its third waits ~20 s (16 to 24 s) in the tier ``dihya.retry.20000ms``, swept from 10 s on.
Then one endpoint (``back``) recovers: a fresh event's retry succeeds on schedule, which asks
for a catch-up. With the mode on, its waiting deliveries arrive within seconds, each once with
its webhook-id, while the other endpoint's (``down``) third attempts keep their band. With the
mode off (the default), nothing is early. A deliverer SIGKILLed mid-sweep (2,000 waiting, tier
80 s: building the backlog takes a while on a busy machine) loses nothing and the sweep
completes after its restart. Each test prints its books.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest

from demo.receiver import Delivery, Receiver
from launcher.processes import System
from shared import topology
from tests.conftest import _rabbitmqctl, _with_path, broker_path_env, wait_for
from tests.e2e.conftest import Api

pytestmark = pytest.mark.integration

SCHEDULE = "1s,20s"
TIER_S = 20.0
JITTER = 0.2
EARLIEST = TIER_S * (1 - JITTER)  # a third attempt on schedule comes no sooner after the 2nd
LATEST = TIER_S * (1 + JITTER) + 4.0  # nor later (slack: a shared 2-vCPU machine)


@dataclass
class Hits:
    """Every POST the receiver got, with when (loop time)."""

    times: dict[str, dict[str, list[tuple[float, int]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    foreign: int = 0

    def note(self, delivery: Delivery) -> None:
        webhook_id = delivery.headers.get("webhook-id", "")
        if webhook_id != delivery.json.get("id"):
            self.foreign += 1  # a delivery under a new id: must never happen
        self.times[delivery.path][webhook_id].append(
            (asyncio.get_running_loop().time(), delivery.status))

    def delivered(self, path: str, ids: list[str]) -> int:
        return sum(1 for i in ids if any(s == 200 for _, s in self.times[path].get(i, [])))

    def posts(self, path: str, ids: list[str]) -> int:
        return sum(len(self.times[path].get(i, [])) for i in ids)


@dataclass
class Run:
    system: System
    receiver: Receiver
    api: Api
    url: str
    hits: Hits


@contextlib.asynccontextmanager
async def running(amqp_base: str, workdir: Path, catch_up: bool, **env: str
                  ) -> AsyncIterator[Run]:
    """The four services on a fresh virtual host, and a receiver noting every POST."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs a local rabbitmqctl for a virtual host of its own")
    vhost = f"dihya-test-catchup-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", vhost)
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", vhost, "guest",
                            ".*", ".*", ".*")
    url = _with_path(amqp_base, "/" + vhost)
    # The circuit breaker off: each endpoint here fails 40 to 4,000 attempts in a row, which
    # would open its breaker, and its 60 s wait (no tier that long: the schedule's longest)
    # would send the 1 s retries to the 20 s tier — not the schedule these tests measure.
    # Breaker and catch-up together: tests/integration/test_deliverer_breaker.py.
    system = System(url, workdir, env={
        "DIHYA_DELIVERER_RETRY_SCHEDULE": SCHEDULE, "DIHYA_DELIVERER_RETRY_JITTER": str(JITTER),
        "DIHYA_DELIVERER_TIMEOUT": "3", "DIHYA_DELIVERER_CATCH_UP": str(catch_up).lower(),
        "DIHYA_DELIVERER_CATCH_UP_MIN_TIER": "10s", "DIHYA_DELIVERER_BREAKER_AFTER": "0",
        **env, **broker_path_env()})
    hits = Hits()
    receiver = Receiver(on_delivery=hits.note)
    await receiver.start()
    try:
        await system.start()
        async with aiohttp.ClientSession() as http:
            yield Run(system, receiver, Api(http, system), url, hits)
    finally:
        await system.stop()
        await receiver.stop()
        await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)


async def publish(url: str, event_type: str, ids: list[str]) -> None:
    """Events over AMQP with confirms, in batches."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
        for start in range(0, len(ids), 200):
            await asyncio.gather(*(
                exchange.publish(aio_pika.Message(
                    orjson.dumps({"id": i, "event": event_type, "data": {"n": i}}),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=i),
                    event_type, mandatory=True, timeout=10)
                for i in ids[start:start + 200]))


async def metric(run: Run, step: str) -> float:
    """``dihya_deliverer_catch_up_total{step=…}`` of the (running) deliverer."""
    async with run.api.http.get(run.system.url("deliverer") + "/metrics") as resp:
        text = await resp.text()
    wanted = f'dihya_deliverer_catch_up_total{{step="{step}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


async def backlog(run: Run, n: int, *, down: int | None = None) -> tuple[list[str], list[str]]:
    """``n`` events for ``back`` and ``down`` (or ``down`` of them), both endpoints failing:
    returns once every one has failed twice, i.e. waits in the 20 s tier."""
    receiver, api = run.receiver, run.api
    down = n if down is None else down
    receiver.statuses["back"] = [503] * (2 * n)
    receiver.statuses["down"] = [503] * (10 * down + 10)
    await api.endpoint(receiver, "back", ["catchup.back"])
    await api.endpoint(receiver, "down", ["catchup.down"])
    tag = uuid.uuid4().hex[:6]
    back = [f"evt_back_{tag}_{i:05d}" for i in range(n)]
    other = [f"evt_down_{tag}_{i:05d}" for i in range(down)]
    await asyncio.gather(publish(run.url, "catchup.back", back),
                         publish(run.url, "catchup.down", other))
    await wait_for(lambda: run.hits.posts("back", back) >= 2 * n
                   and run.hits.posts("down", other) >= 2 * down, timeout=120, interval=0.1)
    return back, other


async def recover(run: Run) -> float:
    """``back`` answers again: a fresh event's retry succeeds on schedule (its first attempt
    fails once more). Returns when (loop time) that retry was delivered."""
    run.receiver.statuses["back"] = [503]
    probe = f"evt_probe_{uuid.uuid4().hex[:6]}"
    await publish(run.url, "catchup.back", [probe])
    await wait_for(lambda: run.hits.delivered("back", [probe]) == 1, timeout=30, interval=0.05)
    return next(t for t, s in run.hits.times["back"][probe] if s == 200)


def third_attempt_gaps(hits: Hits, path: str, ids: list[str]) -> list[float]:
    """For each delivery's third POST: seconds after its second (its wait in the tier)."""
    gaps = []
    for i in ids:
        posts = sorted(hits.times[path].get(i, []))
        if len(posts) >= 3:
            gaps.append(posts[2][0] - posts[1][0])
    return gaps


def books(name: str, hits: Hits, path: str, ids: list[str]) -> tuple[int, int, int]:
    """(delivered, duplicates under the same id, lost) of ``ids`` at ``path``, printed."""
    delivered = Counter(i for i in ids for _, s in hits.times[path].get(i, []) if s == 200)
    duplicates = sum(c - 1 for c in delivered.values())
    lost = len(ids) - len(delivered)
    print(f"[books] {name}: accepted={len(ids)} delivered={len(delivered)} lost={lost} "
          f"duplicates_same_id={duplicates} new_id={hits.foreign}")
    return len(delivered), duplicates, lost


async def test_a_recovered_endpoint_catches_up_and_the_other_keeps_its_schedule(
        amqp_base: str, tmp_path: Path) -> None:
    n = 30
    async with running(amqp_base, tmp_path, catch_up=True) as run:
        back, down = await backlog(run, n)
        parked = {i: sorted(run.hits.times["back"][i])[1][0] for i in back}
        recovered = await recover(run)
        await wait_for(lambda: run.hits.delivered("back", back) == n, timeout=LATEST)
        done = {i: min(t for t, s in run.hits.times["back"][i] if s == 200) for i in back}
        arrived = max(done.values())
        # the other endpoint's third attempts: all of them, each in its band
        await wait_for(lambda: len(third_attempt_gaps(run.hits, "down", down)) == n,
                       timeout=LATEST + 10)
        early, moved, swept = (await metric(run, "sent_early"), await metric(run, "moved"),
                               await metric(run, "sweeps"))
    delivered, duplicates, lost = books("catch-up on, back", run.hits, "back", back)
    gaps = third_attempt_gaps(run.hits, "down", down)
    waited = max(done[i] - parked[i] for i in back)
    print(f"[books] back: all {n} delivered {arrived - recovered:.1f} s after the recovery, "
          f"each at most {waited:.1f} s after its second failure; down: third attempts "
          f"{min(gaps):.1f}-{max(gaps):.1f} s after the second (band {EARLIEST:.0f}-"
          f"{TIER_S * (1 + JITTER):.0f} s); metrics: sweeps={swept:g} sent_early={early:g} "
          f"moved={moved:g}")
    assert (delivered, duplicates, lost, run.hits.foreign) == (n, 0, 0, 0)
    assert arrived - recovered < 8.0  # far before their due time (≥ 16 s after the 2nd try)
    assert waited < EARLIEST  # each one before its own delay could have ended
    assert early >= n and moved >= n and swept >= 1
    assert min(gaps) >= EARLIEST - 0.05 and max(gaps) <= LATEST  # none early, none held


async def test_with_catch_up_off_a_recovered_endpoint_waits_its_schedule(
        amqp_base: str, tmp_path: Path) -> None:
    n = 20
    async with running(amqp_base, tmp_path, catch_up=False) as run:
        back, _ = await backlog(run, n, down=1)
        recovered = await recover(run)
        await wait_for(lambda: run.hits.delivered("back", back) == n, timeout=LATEST + 10)
        requested = await metric(run, "requested")
    delivered, duplicates, lost = books("catch-up off, back", run.hits, "back", back)
    gaps = third_attempt_gaps(run.hits, "back", back)
    first = min(t for i in back for t, s in run.hits.times["back"][i] if s == 200)
    print(f"[books] back: third attempts {min(gaps):.1f}-{max(gaps):.1f} s after the second; "
          f"first delivered {first - recovered:.1f} s after the recovery; requests={requested:g}")
    assert (delivered, duplicates, lost, run.hits.foreign) == (n, 0, 0, 0)
    assert min(gaps) >= EARLIEST - 0.05  # every one waited out its delay
    assert requested == 0


async def test_a_deliverer_killed_mid_sweep_loses_nothing_and_the_sweep_completes(
        amqp_base: str, tmp_path: Path) -> None:
    n, others = 2000, 50
    # a small allowance of queued jobs: the sweep is paced, so it is still running at the kill
    async with running(amqp_base, tmp_path, catch_up=True,
                       DIHYA_DELIVERER_RETRY_SCHEDULE="1s,80s",
                       DIHYA_DELIVERER_CATCH_UP_MAX_QUEUED="20") as run:
        back, down = await backlog(run, n, down=others)
        parked = {i: sorted(run.hits.times["back"][i])[1][0] for i in back}
        await recover(run)
        await wait_for(lambda: run.hits.delivered("back", back) >= n // 10, timeout=30,
                       interval=0.01)
        run.system.kill("deliverer", signal.SIGKILL)
        at_kill = run.hits.delivered("back", back)
        killed = run.system.replica_procs["deliverer"][0]
        assert killed is not None
        await asyncio.to_thread(killed.wait)
        run.system.spawn("deliverer")
        await run.system.wait_ready("deliverer")
        await wait_for(lambda: run.hits.delivered("back", back) == n, timeout=60)
        done = {i: min(t for t, s in run.hits.times["back"][i] if s == 200) for i in back}
        await wait_for(lambda: len(third_attempt_gaps(run.hits, "down", down)) == others,
                       timeout=110)
        audited: set[str] = set()

        async def all_audited() -> bool:
            records = await run.api.records(kind="delivery.attempted", outcome="delivered")
            audited.update(r["event_id"] for r in records)
            return audited >= set(back)

        with contextlib.suppress(AssertionError):  # short of it: the books say so
            await wait_for(all_audited, timeout=60, interval=2.0)
    sweeps = [line for line in run.system.log_path("deliverer").read_bytes().splitlines()
              if b'"catch_up_sweep_done"' in line]
    delivered, _, lost = books("killed mid-sweep, back", run.hits, "back", back)
    waited = max(done[i] - parked[i] for i in back)
    gaps = third_attempt_gaps(run.hits, "down", down)
    print(f"[books] back: {at_kill} delivered at the kill, all {n} within {waited:.1f} s of "
          f"their second failure (due from 64 s on); sweeps done (after the restart)="
          f"{len(sweeps)}; audit: delivered records for {len(audited & set(back))}/{n}; "
          f"down: third attempts {min(gaps):.1f}-{max(gaps):.1f} s after the second")
    assert at_kill < n  # the kill came mid-sweep
    assert (delivered, lost, run.hits.foreign) == (n, 0, 0)
    assert waited < 64.0  # the sweep completed after the restart: none waited its delay
    assert len(sweeps) >= 1
    assert audited >= set(back)
    assert min(gaps) >= 64.0 - 0.05 and max(gaps) <= 96.0 + 4.0
