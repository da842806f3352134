"""The circuit breaker in a running deliverer: real RabbitMQ (a virtual host of its own), the
deliverer in-process, a real aiohttp receiver on 127.0.0.1, and the test playing the signer's
part (each retry that reaches ``sign`` is handed back, "signed", as the next attempt).

An endpoint answering 503 opens its breaker after ``BREAKER_AFTER`` failed attempts in a row:
from then on its failed attempts are retried after ``BREAKER_WAIT`` in the longer tier of the
schedule instead of the short one (the attempt facts' ``retry_in_ms`` and the tier each retry
waited in say so). Once the receiver answers again, the first delivered attempt closes the
breaker, and every event arrives exactly once. With the catch-up mode on, a retry the breaker
sent to the long tier is among those a recovery's sweep sends early. Each test prints its
books."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiohttp import web
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.deliverer.settings import Settings
from shared import topology
from shared.broker import Publisher, connect, declare_topology
from shared.contracts import AttemptRecord, AuditFact, DeliveryJob, SignedDelivery, utcnow
from shared.ids import new_id
from tests.conftest import free_port
from tests.integration.test_deliverer_service import deliverer as running_deliverer
from tests.integration.test_deliverer_service import make_job, signed_for
from tests.observe import Observer, Seen

pytestmark = pytest.mark.integration

SCHEDULE = "200ms,200ms,200ms,200ms,2s,2s"
"""Short tiers first, a long one (2 s) the breaker's wait rides: 7 attempts."""
SHORT, LONG = 200, 2_000
BREAKER_AFTER = 3
BREAKER_WAIT = 1.0
"""Seconds: the smallest tier at least that long is the 2 s one, the retry's own expiration
1 s (no jitter here: every wait is exact)."""
EVENTS = 4
"""Deliveries to the failing endpoint."""
FAILURES = 6
"""503s the receiver answers before it recovers: the four first attempts (the third opens the
breaker) and the retries of the two failed before it opened (200 ms later, it is open)."""


def transitions(to: str) -> float:
    return REGISTRY.get_sample_value("dihya_deliverer_breaker_transitions_total",
                                      {"to": to}) or 0.0


def lengthened() -> float:
    return REGISTRY.get_sample_value("dihya_deliverer_breaker_lengthened_total") or 0.0


def breaker_deferred() -> float:
    return REGISTRY.get_sample_value("dihya_deliverer_breaker_deferred_total") or 0.0


def open_endpoints() -> float:
    return REGISTRY.get_sample_value("dihya_deliverer_breaker_open_endpoints") or 0.0


@dataclass
class Receiver:
    """Answers 503 to the first ``failures`` POSTs of path ``down``, 200 from then on (and to
    any other path); notes every POST's path, webhook-id and answer."""

    port: int
    failures: int
    hits: list[tuple[str, str, int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def delivered(self, path: str) -> Counter[str]:
        return Counter(i for p, i, status in self.hits if p == path and status == 200)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        await request.read()
        refused = sum(1 for p, _, s in self.hits if p == path and s == 503)
        status = 503 if path == "down" and refused < self.failures else 200
        self.hits.append((path, request.headers["webhook-id"], status))
        self.arrived.set()
        return web.Response(status=status)

    async def until(self, done: Any, timeout: float = 30.0) -> None:
        """Until ``done()`` holds (checked at each POST)."""
        async with asyncio.timeout(timeout):
            while not done():
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def receiving(failures: int) -> AsyncIterator[Receiver]:
    rec = Receiver(free_port(), failures)
    app = web.Application()
    app.router.add_route("POST", "/{path}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    try:
        yield rec
    finally:
        await runner.cleanup()


@dataclass
class Rig:
    url: str
    connection: AbstractRobustConnection
    publisher: Publisher
    channel: AbstractChannel
    audit: Observer
    to_signer: Observer


@pytest.fixture
async def rig(vhost_url: tuple[str, str]) -> AsyncIterator[Rig]:
    url, _ = vhost_url
    connection = await connect(url, service="test-breaker")
    settings = Settings(retry_schedule=SCHEDULE)
    await declare_topology(connection, retry_delays_ms=settings.retry_delays_ms,
                           defer_delays_ms=settings.defer_delays_ms)
    publisher = await Publisher.open(connection)
    channel = await connection.channel()
    audit = await Observer().bind(channel, topology.AUDIT_EXCHANGE, "delivery.attempted")
    to_signer = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.SIGN)
    try:
        yield Rig(url, connection, publisher, channel, audit, to_signer)
    finally:
        await channel.close()
        await publisher.close()
        await connection.close()


def deliverer(rig: Rig, **overrides: object
              ) -> contextlib.AbstractAsyncContextManager[Settings]:
    """The deliverer in-process with this module's schedule and breaker (no jitter)."""
    return running_deliverer(rig.url, **{
        "retry_schedule": SCHEDULE, "retry_jitter": 0, "breaker_after": BREAKER_AFTER,
        "breaker_wait": BREAKER_WAIT, **overrides})


def deaths(message: Seen) -> list[str]:
    """The wait queues a retry expired from (its ``x-death`` header)."""
    found: Any = message.headers.get("x-death") or []
    return [str(d["queue"]) for d in found]


async def play_signer(rig: Rig, mine: set[str], waited_in: list[tuple[int, list[str]]]) -> None:
    """The signer's part: every retry of ``mine`` that reaches ``sign`` goes back to the
    deliverer as its next attempt; which tier it waited in is noted."""
    def ours(message: Seen) -> bool:
        return DeliveryJob.model_validate_json(message.body).delivery_id in mine
    while True:
        message = await rig.to_signer.next(ours, timeout=3600)
        job = DeliveryJob.model_validate_json(message.body)
        waited_in.append((job.attempt, deaths(message)))
        await rig.publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed_for(job))


async def attempt_facts(rig: Rig, mine: set[str], count: int) -> list[AuditFact]:
    """The next ``count`` ``delivery.attempted`` facts of ``mine``."""
    def ours(message: Seen) -> bool:
        return AuditFact.model_validate_json(message.body).delivery_id in mine
    return [AuditFact.model_validate_json((await rig.audit.next(ours, 30)).body)
            for _ in range(count)]


def books(name: str, offered: list[SignedDelivery], receiver: Receiver, path: str,
          facts: list[AuditFact]) -> dict[str, int]:
    ids = {d.job.event.id for d in offered}
    got = receiver.delivered(path)
    mine = {d.job.delivery_id for d in offered}
    result = {
        "accepted": len(ids), "delivered": len(got.keys() & ids), "lost": len(ids - got.keys()),
        "duplicates_same_id": sum(n - 1 for n in got.values()),
        "duplicates_new_id": len(got.keys() - ids),
        "posts": sum(1 for p, _, _ in receiver.hits if p == path),
        "audit_records": sum(1 for f in facts if f.delivery_id in mine),
    }
    print(f"\n[{name}] books: {result}")
    return result


async def test_an_endpoint_down_waits_in_the_long_tier_and_its_first_delivery_closes_it(
        rig: Rig) -> None:
    opened, closed, longer = transitions("open"), transitions("closed"), lengthened()
    endpoint, healthy = new_id("ep"), new_id("ep")
    async with receiving(FAILURES) as receiver, deliverer(rig):
        down = [signed_for(make_job(receiver.url("down")).model_copy(
            update={"endpoint_id": endpoint})) for _ in range(EVENTS)]
        up = [signed_for(make_job(receiver.url("up")).model_copy(
            update={"endpoint_id": healthy})) for _ in range(2)]
        mine = {d.job.delivery_id for d in (*down, *up)}
        waited_in: list[tuple[int, list[str]]] = []
        signer = asyncio.ensure_future(play_signer(rig, mine, waited_in))
        try:
            with capture_logs() as logs:
                await asyncio.gather(*(rig.publisher.send(topology.WORK_EXCHANGE,
                                                          topology.DELIVER, d)
                                       for d in (*down, *up)))
                await receiver.until(lambda: receiver.delivered("down").keys()
                                     >= {d.job.event.id for d in down}
                                     and len(receiver.delivered("up")) == len(up))
                posts = len(receiver.hits)
                facts = await attempt_facts(rig, mine, posts)  # every POST's record
        finally:
            signer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await signer
        still_open = open_endpoints()

    failed = [f for f in facts if f.outcome == "failed"]
    waits = Counter(f.details["retry_in_ms"] for f in failed)
    print(f"[breaker] failed attempts' retry_in_ms: {dict(waits)}; retries waited in: "
          f"{Counter(q for _, queues in waited_in for q in queues)}")
    print(f"[breaker] transitions: open +{transitions('open') - opened:g}, closed "
          f"+{transitions('closed') - closed:g}; lengthened +{lengthened() - longer:g}")
    ours = [e for e in logs if e.get("endpoint_id") == endpoint
            and e["event"] in ("breaker_opened", "breaker_closed")]
    print(f"[breaker] logs: {ours}")
    result = books("endpoint down, then back", down, receiver, "down", facts)
    healthy_books = books("healthy endpoint beside it", up, receiver, "up", facts)

    # the first BREAKER_AFTER - 1 failures wait their short tier, every later one the long one
    assert len(failed) == FAILURES
    assert all(f.endpoint_id == endpoint and f.status_code == 503 for f in failed)
    assert waits == {SHORT: BREAKER_AFTER - 1, round(BREAKER_WAIT * 1000):
                     FAILURES - BREAKER_AFTER + 1}
    # ... and did wait there: the retries came out of the 2 s tier's queue
    assert Counter(q for _, queues in waited_in for q in queues) == {
        topology.retry_queue(SHORT): BREAKER_AFTER - 1,
        topology.retry_queue(LONG): FAILURES - BREAKER_AFTER + 1}
    assert lengthened() - longer == FAILURES - BREAKER_AFTER + 1
    # opened once, closed by the first delivered attempt; nothing left open
    assert (transitions("open") - opened, transitions("closed") - closed) == (1, 1)
    assert [(e["event"], e["failures"], e["log_level"]) for e in ours] == [
        ("breaker_opened", BREAKER_AFTER, "info"), ("breaker_closed", FAILURES, "info")]
    assert all("url" not in e for e in ours)  # never the URL (it may carry credentials)
    assert still_open == 0
    # the books: every event once, every POST audited
    for got in (result, healthy_books):
        assert got["lost"] == 0 and got["duplicates_new_id"] == 0
        assert got["duplicates_same_id"] == 0
    assert result["posts"] == FAILURES + EVENTS and result["audit_records"] == result["posts"]
    assert healthy_books["posts"] == healthy_books["audit_records"] == len(up)


def _back(url: str, endpoint: str, by: str) -> DeliveryJob:
    """The delivery that says the endpoint is back: a retry on its schedule (its previous
    attempt failed 1 s ago, the test playing the signer), or a new event's first attempt."""
    if by == "first attempt":
        return make_job(url).model_copy(update={"endpoint_id": endpoint})
    return make_job(url, attempt=2).model_copy(update={
        "endpoint_id": endpoint,
        "history": (AttemptRecord(attempt=1, at=utcnow() - timedelta(seconds=1),
                                  outcome="failed", status_code=503, duration_ms=1.0),)})


@pytest.mark.parametrize("back_by", ["retry on schedule", "first attempt"])
async def test_a_catch_up_sweep_sends_a_retry_the_breaker_made_wait_early(
        rig: Rig, back_by: str) -> None:
    """Catch-up on, sweeping tiers of 1 s and longer; the breaker opens at the first failure
    and its wait (20 s) sends the retry to the 30 s tier. A delivery of the same endpoint then
    says it is back: a retry delivered on its schedule, or a new event's first attempt — the
    breaker's usual probe, which asks for no catch-up on its own (only a retry on its schedule
    does) but closes the breaker, and that asks. Either way the sweep sends the waiting retry
    to the signer now, 20 s early."""
    endpoint = new_id("ep")
    async with receiving(1) as receiver, deliverer(
            rig, retry_schedule="200ms,30s,30s", breaker_after=1, breaker_wait=20,
            catch_up=True, catch_up_min_tier="1s", catch_up_interval=0):
        job = make_job(receiver.url("down")).model_copy(update={"endpoint_id": endpoint})
        started = utcnow()
        closed_before = transitions("closed")
        await rig.publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed_for(job))
        [first] = await attempt_facts(rig, {job.delivery_id}, 1)
        assert (first.outcome, first.details["retry_in_ms"]) == ("failed", 20_000)

        back = _back(receiver.url("down"), endpoint, back_by)
        await rig.publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed_for(back))
        [answered] = await attempt_facts(rig, {back.delivery_id}, 1)
        assert answered.outcome == "delivered"
        assert transitions("closed") == closed_before + 1

        def waiting(message: Seen) -> bool:
            return DeliveryJob.model_validate_json(message.body).delivery_id == job.delivery_id
        swept = await rig.to_signer.next(waiting, timeout=15)
        early = (utcnow() - started).total_seconds()
        retry = DeliveryJob.model_validate_json(swept.body)
        print(f"\n[breaker + catch-up, back by a {back_by}] books: accepted 2, POSTs "
              f"{len(receiver.hits)}, delivered 1, lost 0; the retry due in 20 s sent to the "
              f"signer after {early:.1f} s (x-death {deaths(swept)}: by the sweep)")
        assert retry.attempt == 2 and early < 15
        assert deaths(swept) == []  # not expired from its tier: swept out of it
        assert swept.headers[topology.ENDPOINT_HEADER] == endpoint


@pytest.mark.parametrize("breaker", ["open", "off"])
async def test_an_open_endpoints_jobs_without_a_slot_wait_the_breakers_wait(
        rig: Rig, breaker: str) -> None:
    """One slot per endpoint and no local wait, so a job whose endpoint's one POST is still
    in hand is deferred at once. The endpoint answers 503 (the breaker, after one failure, is
    open), its second POST hangs, and a third job comes: deferred to the defer tier that holds
    the breaker's wait (20 s: the 32 s tier) instead of its own first deferral's (1 s) — the
    deferrals of a down endpoint's jobs no longer come back every few seconds. With the
    breaker off, its own 1 s."""
    endpoint = new_id("ep")
    release, held = asyncio.Event(), asyncio.Event()
    posts: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        posts.append(request.headers["webhook-id"])
        if len(posts) > 1:  # the second POST hangs until the test ends
            held.set()
            await release.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_route("POST", "/{path}", answer)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    deferrals = Observer()
    for tier in topology.DEFAULT_DEFER_DELAYS_MS:
        await deferrals.bind(rig.channel, topology.RETRY_EXCHANGE, topology.defer_queue(tier))
    before = breaker_deferred()
    try:
        async with deliverer(rig, retry_schedule="30s", breaker_after=1 if breaker == "open"
                             else 0, breaker_wait=20, max_in_flight_per_endpoint=1,
                             initial_in_flight_per_endpoint=1, max_local_wait=0):
            first, hung, third = (make_job(f"http://127.0.0.1:{port}/down").model_copy(
                update={"endpoint_id": endpoint}) for _ in range(3))
            await rig.publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed_for(first))
            [failed] = await attempt_facts(rig, {first.delivery_id}, 1)
            assert failed.outcome == "failed"
            assert open_endpoints() == (1 if breaker == "open" else 0)
            await rig.publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed_for(hung))
            async with asyncio.timeout(10):
                await held.wait()
            await rig.publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed_for(third))
            deferred = await deferrals.next(lambda m: SignedDelivery.model_validate_json(
                m.body).job.delivery_id == third.delivery_id, timeout=10)
            release.set()
    finally:
        release.set()
        await runner.cleanup()
    tier = topology.DEFAULT_DEFER_DELAYS_MS[0] if breaker == "off" else min(
        t for t in topology.DEFAULT_DEFER_DELAYS_MS if t >= 20_000)
    print(f"\n[breaker {breaker}, deferral] books: accepted 3, POSTs {len(posts)} (1 answered "
          f"503, 1 held), the third deferred to {deferred.routing_key} (expected "
          f"{topology.defer_queue(tier)}); breaker-deferred +{breaker_deferred() - before:g}")
    assert len(posts) == 2  # the third was not POSTed: deferred
    assert deferred.routing_key == topology.defer_queue(tier)
    assert SignedDelivery.model_validate_json(deferred.body).job.deferrals == 1
    assert breaker_deferred() - before == (1 if breaker == "open" else 0)
