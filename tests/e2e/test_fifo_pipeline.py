"""Ordered (FIFO) endpoints end to end: the four services as real processes, two deliverer
replicas, a receiver on 127.0.0.1 that fails at random, and a SIGKILL of the deliverer replica
that holds the lanes in the middle of the stream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import orjson
import pytest
from aiohttp import web

from demo.receiver import Receiver, standard_webhooks_verify
from launcher.processes import System
from shared import topology
from tests.conftest import broker_path_env, drop_connections
from tests.e2e.conftest import Api

pytestmark = pytest.mark.integration

KEYS = 50
PER_KEY = 40
"""2,000 events over 50 keys."""
FAIL_SHARE = 0.1
"""Share of deliveries the receiver fails (HTTP 500) once or twice before taking them."""


@dataclass
class Arrival:
    key: str
    seq: int
    webhook_id: str
    status: int
    verified: bool | None
    attempt: int
    signed_age: float
    """Seconds between its signature's timestamp and its arrival."""


@dataclass
class OrderedReceiver(Receiver):
    """The demo receiver's server, answering 500 to a delivery's first one or two attempts
    for a random ``FAIL_SHARE`` of them (seeded), 200 otherwise; records every arrival and
    the most requests of one key it had in flight at once."""

    arrivals: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, int] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    """``name/key`` whose every delivery is answered 500 (until dead-lettered)."""
    random_failures: set[str] = field(default_factory=set)
    """Endpoint names whose deliveries fail at random."""
    in_flight: Counter[tuple[str, str]] = field(default_factory=Counter)
    most_in_flight: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(22))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        event = orjson.loads(body)
        key, seq = str(event["data"]["key"]), int(event["data"]["seq"])
        webhook_id = request.headers["webhook-id"]
        self.in_flight[(name, key)] += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[(name, key)])
        try:
            await asyncio.sleep(0.002)  # a receiver's own latency, so overlaps would show
            if f"{name}/{key}" in self.refused:
                status = 500
            else:
                if webhook_id not in self.failures:
                    self.failures[webhook_id] = (
                        self.rng.choice((1, 2)) if name in self.random_failures
                        and self.rng.random() < FAIL_SHARE else 0)
                status = 500 if self.failures[webhook_id] > 0 else 200
                self.failures[webhook_id] -= 1
        finally:
            self.in_flight[(name, key)] -= 1
        verified = standard_webhooks_verify(self.secrets[name], body, dict(request.headers))
        self.arrivals[name].append(Arrival(
            key, seq, webhook_id, status, verified, int(event["delivery"]["attempt"]),
            time.time() - int(request.headers["webhook-timestamp"])))
        self.changed.set()
        return web.Response(status=status)

    def delivered(self, name: str) -> list[Arrival]:
        return [a for a in self.arrivals[name] if a.status == 200]

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Books:
    accepted: int
    delivered: int
    lost: int
    repeats_same_id: int
    repeats_new_id: int
    out_of_order: int
    failed_attempts: int
    bad_signatures: int

    def __str__(self) -> str:
        return (f"[books] accepted={self.accepted} delivered={self.delivered} lost={self.lost} "
                f"duplicates: same id={self.repeats_same_id} new id={self.repeats_new_id} "
                f"out_of_order={self.out_of_order} failed_attempts={self.failed_attempts} "
                f"bad_signatures={self.bad_signatures}")


def books(receiver: OrderedReceiver, name: str, expected: dict[str, list[str]]) -> Books:
    """Per key, the first successful arrival of each webhook id must come in sequence order,
    with no gap; a later arrival of an id already delivered is a same-id repeat."""
    seen: set[str] = set()
    firsts: dict[str, list[int]] = defaultdict(list)
    repeats = 0
    for arrival in receiver.delivered(name):
        if arrival.webhook_id in seen:
            repeats += 1
            continue
        seen.add(arrival.webhook_id)
        firsts[arrival.key].append(arrival.seq)
    wanted = {i for ids in expected.values() for i in ids}
    out_of_order = sum(sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
                       for seqs in firsts.values())
    gaps = sum(1 for key, seqs in firsts.items() if seqs != list(range(len(seqs))))
    return Books(
        accepted=len(wanted), delivered=len(seen & wanted), lost=len(wanted - seen),
        repeats_same_id=repeats, repeats_new_id=len(seen - wanted),
        out_of_order=out_of_order + gaps,
        failed_attempts=sum(1 for a in receiver.arrivals[name] if a.status != 200),
        bad_signatures=sum(1 for a in receiver.arrivals[name] if a.verified is False))


@pytest.fixture(scope="module")
async def fifo_system(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[tuple[System, OrderedReceiver, Api]]:
    system = System(amqp_url, Path(tmp_path_factory.mktemp("fifo")),
                    replicas={"deliverer": 2},
                    env={"DIHYA_DELIVERER_RETRY_SCHEDULE": "100ms,200ms,200ms,200ms",
                         "DIHYA_DELIVERER_TIMEOUT": "3", "DIHYA_SHUTDOWN_GRACE": "3",
                       "DIHYA_DELIVERER_SIGN_NOW_TIMEOUT": "2",
                         **broker_path_env()})
    receiver = OrderedReceiver()
    await receiver.start()
    try:
        await system.start()  # inside: a start that times out still stops what it started
        async with aiohttp.ClientSession() as http:
            yield system, receiver, Api(http, system)
    finally:
        await system.stop()
        await receiver.stop()


async def _ordered_endpoint(api: Api, receiver: OrderedReceiver, name: str) -> str:
    """An ordered endpoint keyed by ``data.key`` (the deployment's schedule here: 5 attempts
    0.1-0.2 s apart)."""
    _, ep = await api.call("POST", "ingest", "/v1/endpoints", api.system.admin_token, {
        "url": receiver.url(name), "events": [f"fifo.{name}"], "ordering": "fifo",
        "ordering_key": "data.key"}, expect=201)
    assert ep["ordering"] == "fifo" and ep["ordering_key"] == "data.key"
    receiver.secrets[name] = ep["secret"]
    return str(ep["id"])


async def _publish_in_order(amqp_url: str, name: str, events: list[tuple[str, int]]
                            ) -> dict[str, list[str]]:
    """Publish on one confirming channel, in list order (pipelined in batches of 100: one
    channel keeps its publishes in order); returns each key's event ids in sequence order."""
    ids: dict[str, list[str]] = defaultdict(list)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
        for start in range(0, len(events), 100):
            batch = events[start:start + 100]
            for key, seq in batch:
                ids[key].append(f"evt_{name}_{key}_{seq:04d}")
            await asyncio.gather(*(exchange.publish(aio_pika.Message(
                orjson.dumps({"id": f"evt_{name}_{key}_{seq:04d}", "event": f"fifo.{name}",
                              "data": {"key": key, "seq": seq}}),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"evt_{name}_{key}_{seq:04d}"), f"fifo.{name}", mandatory=True,
                timeout=10) for key, seq in batch))
    return ids


async def _ordered(system: System, replica: int, step: str = "signed") -> float:
    """Deliverer ``replica``'s ``dihya_deliverer_ordered_total`` of ``step`` (``signed``:
    the sign-now answers it got, its lanes' attempts)."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{system.url('deliverer', replica)}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf'^dihya_deliverer_ordered_total\{{step="{step}"\}} (\S+)$', text,
                      re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_failing_delivery_holds_its_key_only(
        fifo_system: tuple[System, OrderedReceiver, Api], amqp_url: str) -> None:
    _, receiver, api = fifo_system
    name = "hold"
    await _ordered_endpoint(api, receiver, name)
    receiver.refused.add(f"{name}/dead")  # its deliveries fail until dead-lettered
    # "slow"'s first delivery fails 4 times (about 0.7 s of retries) before it is taken
    receiver.failures[f"evt_{name}_slow_0000"] = 4
    events = [(key, seq) for seq in range(5) for key in ("slow", "fast", "dead")]
    ids = await _publish_in_order(amqp_url, name, events)
    await receiver.wait_until(lambda: len({a.webhook_id for a in receiver.delivered(name)}) >= 10
                        and sum(a.key == "dead" for a in receiver.arrivals[name]) >= 25, 60)
    result = books(receiver, name, {k: v for k, v in ids.items() if k != "dead"})
    print(result)
    arrivals = receiver.arrivals[name]
    slow_first_ok = next(i for i, a in enumerate(arrivals)
                         if a.key == "slow" and a.seq == 0 and a.status == 200)
    fast_done = max(i for i, a in enumerate(arrivals) if a.key == "fast")
    slow = [(a.seq, a.status) for a in arrivals if a.key == "slow"]
    dead = [(a.seq, a.status) for a in arrivals if a.key == "dead"]
    print(f"[books] slow key arrivals {slow}; dead key arrivals {dead}")
    assert result.lost == 0 and result.out_of_order == 0 and result.bad_signatures == 0
    assert slow[:5] == [(0, 500)] * 4 + [(0, 200)]  # retried in place, nothing overtook it
    assert fast_done < slow_first_ok  # the other key was not held up
    # each tried 5 times and given up, then the next went, in order
    assert dead == [(seq, 500) for seq in range(5) for _ in range(5)]
    assert receiver.most_in_flight == 1
    # each dead letter records how many later deliveries of its key were waiting behind it
    dead_letters: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while len(dead_letters) < 5:
            dead_letters = [r for r in await api.records(kind="delivery.dead_lettered")
                            if r.get("event_id", "").startswith(f"evt_{name}_dead_")]
            await asyncio.sleep(0.2)
    held = {r["event_id"]: r["details"]["held_up"] for r in dead_letters}
    print(f"[books] dead letters held_up: {sorted(held.values(), reverse=True)}")
    assert held[f"evt_{name}_dead_0004"] == 0
    assert all(0 <= n <= 4 for n in held.values())


async def test_2000_events_over_50_keys_in_order_through_a_sigkill(
        fifo_system: tuple[System, OrderedReceiver, Api], amqp_url: str) -> None:
    system, receiver, api = fifo_system
    name = "stream"
    await _ordered_endpoint(api, receiver, name)
    receiver.random_failures.add(name)
    events = [(f"k{key:02d}", seq) for seq in range(PER_KEY) for key in range(KEYS)]
    publishing = asyncio.create_task(_publish_in_order(amqp_url, name, events))
    loop = asyncio.get_running_loop()
    began = loop.time()
    await receiver.wait_until(lambda: len(receiver.delivered(name)) >= 600, 60)
    counts = [await _ordered(system, i) for i in range(2)]
    victim = counts.index(max(counts))
    proc = system.replica_procs["deliverer"][victim]
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    killed_at = len(receiver.delivered(name))
    ids = await publishing
    expected = sum(len(v) for v in ids.values())
    with contextlib.suppress(TimeoutError):
        await receiver.wait_until(lambda: len({a.webhook_id for a in receiver.delivered(name)})
                            >= expected, 90)
    took = loop.time() - began
    result = books(receiver, name, ids)
    print(f"\n[books] deliverer replica {victim} SIGKILLed after {killed_at} deliveries "
          f"(sign-now answers per replica before: {counts}); {took:.1f} s; most requests of "
          f"one key in flight at once: {receiver.most_in_flight}")
    print(result)
    system.spawn("deliverer", replica=victim)  # back for the module's orderly stop
    await system.wait_ready("deliverer")
    assert result.lost == 0, result
    assert result.out_of_order == 0, result
    assert result.repeats_new_id == 0, result
    assert result.bad_signatures == 0, result
    assert result.failed_attempts > 0, result  # the receiver did fail some
    assert receiver.most_in_flight == 1


async def test_ordering_is_refused_with_a_rate_limit_and_shown_back(
        fifo_system: tuple[System, OrderedReceiver, Api]) -> None:
    _, receiver, api = fifo_system
    admin = api.system.admin_token
    status, body = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("refused"), "events": ["fifo.refused"], "ordering": "fifo",
        "rate_limit": {"per_second": 5}})
    assert status == 422 and "rate_limit" in str(body)
    status, body = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("refused"), "events": ["fifo.refused"],
        "ordering_key": "data.user_id"})
    assert status == 422 and "needs ordering fifo" in str(body)
    status, body = await api.call("POST", "ingest", "/v1/endpoints", admin, {
        "url": receiver.url("refused"), "events": ["fifo.refused"], "ordering": "fifo",
        "ordering_key": "data[0]"})
    assert status == 422 and "ordering_key" in str(body)
    endpoint = await _ordered_endpoint(api, receiver, "patched")
    path = f"/v1/endpoints/{endpoint}"
    status, body = await api.call("PATCH", "ingest", path, admin,
                                  {"rate_limit": {"per_second": 5}})
    assert status == 422 and "rate_limit" in str(body)  # the stored order counts
    _, ep = await api.call("PATCH", "ingest", path, admin,
                           {"ordering": None, "ordering_key": None,
                            "rate_limit": {"per_second": 5}}, expect=200)
    assert (ep["ordering"], ep["ordering_key"], ep["rate_limit"]["per_second"]) == (
        None, None, 5)


async def test_a_signer_outage_holds_ordered_deliveries_without_using_attempts(
        fifo_system: tuple[System, OrderedReceiver, Api], amqp_url: str) -> None:
    system, receiver, api = fifo_system
    name = "outage"
    await _ordered_endpoint(api, receiver, name)
    before = sum([await _ordered(system, i, "unanswered") for i in range(2)])
    system.kill("signer")
    publishing = asyncio.create_task(
        _publish_in_order(amqp_url, name, [("k", seq) for seq in range(5)]))
    # the deliverer asks, gets no answer, asks again: seen in its metrics, another process's
    # (polled: there is no event to await across processes)
    async with asyncio.timeout(60):
        while sum([await _ordered(system, i, "unanswered")  # noqa: ASYNC110
                   for i in range(2)]) < before + 2:
            await asyncio.sleep(0.5)
    held = len(receiver.arrivals[name])
    system.spawn("signer")
    await system.wait_ready("signer")
    ids = await publishing
    await receiver.wait_until(lambda: len(receiver.delivered(name)) >= 5, 60)
    result = books(receiver, name, ids)
    arrivals = receiver.arrivals[name]
    print(f"\n[books] signer down: {held} arrivals while unanswered; after: {result}; "
          f"attempts {[a.attempt for a in arrivals]}, signature ages "
          f"{[round(a.signed_age, 1) for a in arrivals]} s")
    assert held == 0
    assert result.lost == 0 and result.out_of_order == 0 and result.bad_signatures == 0
    assert all(a.attempt == 1 for a in arrivals)  # the outage cost no attempt
    assert all(a.signed_age < 10 for a in arrivals)  # signed at its turn, not before


async def test_order_holds_through_a_broker_connection_drop(
        fifo_system: tuple[System, OrderedReceiver, Api], amqp_url: str) -> None:
    """Every service's connection closed by the broker mid-stream (only this module's
    processes use the session's virtual host while it runs): they reconnect, the lanes come
    back in order."""
    _, receiver, api = fifo_system
    name = "drop"
    await _ordered_endpoint(api, receiver, name)
    receiver.random_failures.add(name)
    ids = await _publish_in_order(amqp_url, name,
                                  [(f"k{key}", seq) for seq in range(100) for key in range(5)])
    await receiver.wait_until(lambda: len(receiver.delivered(name)) >= 100, 60)
    await drop_connections(urlsplit(amqp_url).path.lstrip("/"), "fifo test drop")
    dropped_at = len(receiver.delivered(name))
    await receiver.wait_until(
        lambda: len({a.webhook_id for a in receiver.delivered(name)}) >= 500, 120)
    result = books(receiver, name, ids)
    print(f"\n[books] connections dropped after {dropped_at} deliveries; {result}")
    assert dropped_at < 500  # the drop came mid-stream
    assert result.lost == 0 and result.out_of_order == 0 and result.repeats_new_id == 0
    assert result.bad_signatures == 0
