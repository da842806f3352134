"""The deliverer in-process against the real RabbitMQ and real aiohttp receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web
from aiohttp.abc import AbstractResolver

from services.deliverer.app import start
from services.deliverer.settings import Settings
from shared import topology
from shared.broker import Publisher, declare
from shared.contracts import AuditFact, DeliveryJob, Event, SignedDelivery, utcnow
from shared.ids import new_id
from tests.conftest import free_port
from tests.observe import Matcher, Observer

pytestmark = pytest.mark.integration

SCHEDULE = "200ms,400ms"


def fact_of(kind: str, delivery_id: str, attempt: int | None = None) -> Matcher:
    def match(message: AbstractIncomingMessage) -> bool:
        fact = AuditFact.model_validate_json(message.body)
        return (fact.kind == kind and fact.delivery_id == delivery_id
                and (attempt is None or fact.attempt == attempt))
    return match


def job_of(delivery_id: str, attempt: int | None = None) -> Matcher:
    def match(message: AbstractIncomingMessage) -> bool:
        job = DeliveryJob.model_validate_json(message.body)
        return job.delivery_id == delivery_id and (attempt is None or job.attempt == attempt)
    return match


def signed_of(delivery_id: str) -> Matcher:
    def match(message: AbstractIncomingMessage) -> bool:
        return bool(SignedDelivery.model_validate_json(message.body).job.delivery_id
                    == delivery_id)
    return match


async def fact(observer: Observer, match: Matcher) -> AuditFact:
    return AuditFact.model_validate_json((await observer.next(match)).body)


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP receiver: each path answers from its script (the last answer repeats)."""

    port: int
    scripts: dict[str, list[web.Response | str]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path}"

    def hits_on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.hits.append(Hit(path, dict(request.headers), await request.read()))
        script = self.scripts.get(path) or [web.Response(status=404)]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if answer == "hang":
            await self.release.wait()
            return web.Response(status=200)
        assert isinstance(answer, web.Response)
        return web.Response(status=answer.status, body=answer.body,
                            headers={k: v for k, v in answer.headers.items()
                                     if k in ("Location", "Retry-After")})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(free_port())
    app = web.Application()
    app.router.add_route("*", "/{path}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    rec.release.set()
    await runner.cleanup()


@pytest.fixture(scope="module")
async def amqp(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await declare(channel, retry_delays_ms=(200, 400))
    yield connection
    # No signer runs here: drop the retries this module sent it, for the tests that follow.
    await (await channel.get_queue(topology.SIGNER_JOBS)).purge()
    await connection.close()


@pytest.fixture
async def channel(amqp: AbstractRobustConnection) -> AsyncIterator[AbstractChannel]:
    ch = await amqp.channel()
    yield ch
    await ch.close()


@pytest.fixture
async def publisher(amqp: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    pub = await Publisher.open(amqp)
    yield pub
    await pub.close()


@pytest.fixture
async def audit(channel: AbstractChannel) -> Observer:
    return await Observer().bind(channel, topology.AUDIT_EXCHANGE, "delivery.*")


@pytest.fixture
async def to_signer(channel: AbstractChannel) -> Observer:
    return await Observer().bind(channel, topology.WORK_EXCHANGE, topology.SIGN)


@pytest.fixture
async def dead(channel: AbstractChannel) -> Observer:
    return await Observer().bind(channel, topology.DEAD_EXCHANGE, topology.DELIVERER_JOBS)


@contextlib.asynccontextmanager
async def deliverer(amqp_url: str, *, resolver: AbstractResolver | None = None,
                    **overrides: object) -> AsyncIterator[Settings]:
    settings = Settings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "retry_schedule": SCHEDULE,
        "allowed_networks": "127.0.0.0/8", "shutdown_grace": 2.0, **overrides})
    stop = await start(settings, resolver=resolver)
    try:
        yield settings
    finally:
        await stop()


def make_job(url: str, attempt: int = 1) -> DeliveryJob:
    event = Event(id=new_id("evt"), event="incident.security", timestamp=utcnow(), lang="tzm",
                  data={"details": {"tzm": "ⴰⵎⵙⴰⵙⴰ"}})
    return DeliveryJob(delivery_id=new_id("dlv"), endpoint_id=new_id("ep"), url=url,
                       event=event, attempt=attempt)


def signed_for(job: DeliveryJob, *, age: timedelta = timedelta()) -> SignedDelivery:
    """What the signer would hand over (the deliverer does not check signatures)."""
    body = orjson.dumps({"id": job.event.id, "delivery": {"attempt": job.attempt},
                         "text": "ⴰⵎⵙⴰⵙⴰ"}).decode()
    headers = {"Content-Type": "application/json", "User-Agent": "Dihya-Webhooks/0.1",
               "webhook-id": job.event.id or "", "webhook-timestamp": "1700000000",
               "webhook-signature": "v1,c2ln", "X-Dihya-Signature": "ab" * 32,
               "X-Dihya-Attempt": str(job.attempt)}
    return SignedDelivery(job=job, body=body, headers=headers, signed_at=utcnow() - age)


async def hand_over(publisher: Publisher, signed: SignedDelivery) -> None:
    await publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed)


async def test_2xx_is_delivered_with_exact_body_and_headers(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer) -> None:
    receiver.scripts["ok"] = [web.Response(status=200, text="thanks " * 100)]
    async with deliverer(amqp_url, response_excerpt_bytes=50) as settings:
        signed = signed_for(make_job(receiver.url("ok")))
        await hand_over(publisher, signed)
        got = await fact(audit, fact_of("delivery.attempted", signed.job.delivery_id))
        assert (got.outcome, got.status_code, got.reason, got.attempt) == (
            "delivered", 200, "ok", 1)
        assert got.details["response_excerpt"] == ("thanks " * 100)[:50]
        assert got.details["next"] == "done"
        assert got.duration_ms is not None and got.duration_ms > 0
        assert got.url == receiver.url("ok")
        [hit] = receiver.hits_on("ok")
        assert hit.body == signed.body.encode()
        for name, value in signed.headers.items():
            assert hit.headers[name] == value

        async with aiohttp.ClientSession() as http:
            base = f"http://{settings.host}:{settings.port}"
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/metrics") as resp:
                assert ('dihya_deliverer_attempts_total{outcome="delivered",reason="ok",'
                        'status_class="2xx"}') in await resp.text()


async def test_500_goes_back_to_the_signer_through_the_delay_tier(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        to_signer: Observer) -> None:
    receiver.scripts["flaky"] = [web.Response(status=500, text="oops"),
                                 web.Response(status=200)]
    async with deliverer(amqp_url):
        job = make_job(receiver.url("flaky"))
        await hand_over(publisher, signed_for(job))
        first = await fact(audit, fact_of("delivery.attempted", job.delivery_id, 1))
        assert (first.outcome, first.status_code, first.reason) == ("failed", 500, "http_error")
        assert first.details["next"] == "retry"
        assert 160 <= int(first.details["retry_in_ms"]) <= 240  # type: ignore[arg-type]

        message = await to_signer.next(job_of(job.delivery_id, 2))
        # from the attempt itself: its fact reaches audit up to a batch linger later
        waited = (utcnow() - first.occurred_at).total_seconds()
        retry = DeliveryJob.model_validate_json(message.body)
        assert retry.event == job.event and retry.url == job.url
        assert [(r.attempt, r.status_code, r.outcome) for r in retry.history] == [
            (1, 500, "failed")]
        deaths: Any = message.headers.get("x-death") or []
        assert any(d["queue"] == topology.retry_queue(200) for d in deaths)
        assert waited >= 0.15  # it waited in the tier (0.16 to 0.24 s after the attempt)

        # Play the signer's part: the re-signed attempt 2 gets the 200.
        await hand_over(publisher, signed_for(retry))
        second = await fact(audit, fact_of("delivery.attempted", job.delivery_id, 2))
        assert (second.outcome, second.status_code) == ("delivered", 200)
        assert len(receiver.hits_on("flaky")) == 2


async def test_410_is_dead_lettered_at_once_as_gone(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        dead: Observer) -> None:
    receiver.scripts["gone"] = [web.Response(status=410)]
    async with deliverer(amqp_url):
        job = make_job(receiver.url("gone"))
        await hand_over(publisher, signed_for(job))
        parked = await dead.next(job_of(job.delivery_id))
        assert parked.headers[topology.REASON_HEADER] == "gone"
        assert parked.headers[topology.SOURCE_HEADER] == topology.DELIVERER_JOBS
        kept = DeliveryJob.model_validate_json(parked.body)
        assert kept.attempt == 2 and [r.status_code for r in kept.history] == [410]
        lettered = await fact(audit, fact_of("delivery.dead_lettered", job.delivery_id))
        assert (lettered.reason, lettered.attempt, lettered.status_code) == ("gone", 1, 410)
        attempted = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
        assert attempted.details["next"] == "dead_letter"
        assert len(receiver.hits_on("gone")) == 1


async def test_a_receiver_that_hangs_times_out_and_is_retried(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        to_signer: Observer) -> None:
    receiver.scripts["slow"] = ["hang"]
    async with deliverer(amqp_url, timeout=0.5):
        job = make_job(receiver.url("slow"))
        await hand_over(publisher, signed_for(job))
        got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
        assert (got.outcome, got.reason, got.status_code) == ("failed", "timeout", None)
        assert got.error == "timeout after 0.5s"
        assert got.duration_ms is not None and 400 <= got.duration_ms < 3000
        retry = DeliveryJob.model_validate_json(
            (await to_signer.next(job_of(job.delivery_id, 2))).body)
        assert retry.history[0].error == "timeout after 0.5s"
        receiver.release.set()


async def test_a_redirect_is_never_followed(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer) -> None:
    receiver.scripts["moved"] = [web.Response(status=302,
                                              headers={"Location": receiver.url("target")})]
    receiver.scripts["target"] = [web.Response(status=200)]
    async with deliverer(amqp_url):
        job = make_job(receiver.url("moved"))
        await hand_over(publisher, signed_for(job))
        got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
        assert (got.outcome, got.status_code, got.reason) == ("failed", 302, "redirect")
        assert len(receiver.hits_on("moved")) == 1
        assert receiver.hits_on("target") == []


async def test_exhaustion_parks_the_job_with_its_full_history(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        to_signer: Observer, dead: Observer) -> None:
    receiver.scripts["down"] = [web.Response(status=503, text="down")]
    async with deliverer(amqp_url):
        job = make_job(receiver.url("down"))
        await hand_over(publisher, signed_for(job))
        for attempt in (2, 3):  # play the signer for each retry coming back from its tier
            retry = DeliveryJob.model_validate_json(
                (await to_signer.next(job_of(job.delivery_id, attempt))).body)
            await hand_over(publisher, signed_for(retry))
        parked = await dead.next(job_of(job.delivery_id))
        assert parked.headers[topology.REASON_HEADER] == "exhausted"
        kept = DeliveryJob.model_validate_json(parked.body)
        assert kept.attempt == 4
        assert [(r.attempt, r.status_code, r.outcome) for r in kept.history] == [
            (1, 503, "failed"), (2, 503, "failed"), (3, 503, "failed")]
        lettered = await fact(audit, fact_of("delivery.dead_lettered", job.delivery_id))
        assert (lettered.reason, lettered.attempt) == ("exhausted", 3)
        assert lettered.details == {"attempts": 3}
        assert len(receiver.hits_on("down")) == 3
        assert [h.headers["X-Dihya-Attempt"] for h in receiver.hits_on("down")] == [
            "1", "2", "3"]


async def test_private_destinations_are_refused_unless_allow_listed(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        dead: Observer) -> None:
    receiver.scripts["internal"] = [web.Response(status=200)]
    async with deliverer(amqp_url, allowed_networks=""):
        literal = make_job(receiver.url("internal"))
        named = make_job(receiver.url("internal", host="localhost"))
        for job in (literal, named):
            await hand_over(publisher, signed_for(job))
            parked = await dead.next(job_of(job.delivery_id))
            assert parked.headers[topology.REASON_HEADER] == "ssrf_blocked"
            got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
            assert got.reason == "ssrf_blocked" and got.status_code is None
    assert receiver.hits_on("internal") == []


async def test_a_stale_signature_goes_back_to_the_signer_unposted(
        amqp_url: str, receiver: Receiver, publisher: Publisher, to_signer: Observer) -> None:
    receiver.scripts["fresh"] = [web.Response(status=200)]
    async with deliverer(amqp_url, resign_after=60):
        job = make_job(receiver.url("fresh"))
        await hand_over(publisher, signed_for(job, age=timedelta(minutes=10)))
        again = DeliveryJob.model_validate_json(
            (await to_signer.next(job_of(job.delivery_id))).body)
        assert again == job  # same attempt: no attempt was spent
    assert receiver.hits_on("fresh") == []


async def test_a_malformed_message_is_parked_with_its_reason(
        amqp_url: str, publisher: Publisher, dead: Observer, audit: Observer) -> None:
    marker = new_id("junk")
    async with deliverer(amqp_url):
        await publisher.publish(topology.WORK_EXCHANGE, topology.DELIVER,
                                orjson.dumps({"type": "dihya.signed_delivery.v1",
                                              "marker": marker}))
        parked = await dead.next(lambda m: marker.encode() in m.body)
        assert parked.headers[topology.REASON_HEADER] == "invalid_message"
        assert "job" in str(parked.headers[topology.ERROR_HEADER])
        got = await audit.next(lambda m: AuditFact.model_validate_json(m.body).kind
                               == "delivery.parked")
        assert AuditFact.model_validate_json(got.body).reason == "invalid_message"


async def test_a_slow_endpoint_cannot_hold_back_the_others(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer,
        to_signer: Observer, channel: AbstractChannel) -> None:
    """With 2 in flight per endpoint, a hanging endpoint keeps 2 requests; the rest flows. Its
    other deliveries wait in the defer tiers, still signed, and land once it answers — without
    a trip through the signer."""
    deferrals = await Observer().bind(channel, topology.RETRY_EXCHANGE,
                                      topology.defer_queue(200))
    receiver.scripts["slow"] = ["hang"]
    receiver.scripts["fast"] = [web.Response(status=200)]
    async with deliverer(amqp_url, max_in_flight_per_endpoint=2, max_waiting_per_endpoint=0,
                         defer_delay="200ms", defer_max="400ms",
                         timeout=30, prefetch=10):
        slow_jobs = [make_job(receiver.url("slow")) for _ in range(12)]
        slow = [signed_for(j.model_copy(update={"endpoint_id": slow_jobs[0].endpoint_id}))
                for j in slow_jobs]
        fast = [make_job(receiver.url("fast")) for _ in range(30)]
        for signed in slow:
            await hand_over(publisher, signed)
        for job in fast:
            await hand_over(publisher, signed_for(job))
        for job in fast:  # every fast delivery lands while the slow endpoint hangs
            got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
            assert got.outcome == "delivered"
        hits = receiver.hits_on("slow")
        assert len(hits) == 2  # never more than its share in flight
        posted = {orjson.loads(h.body)["id"] for h in hits}
        # the other ten wait in the first defer tier, as signed, same attempt
        for signed in (s for s in slow if s.job.event.id not in posted):
            back = SignedDelivery.model_validate_json(
                (await deferrals.next(signed_of(signed.job.delivery_id))).body)
            assert back.job == signed.job.model_copy(update={"deferrals": 1})
            assert (back.body, back.headers, back.signed_at) == (
                signed.body, signed.headers, signed.signed_at)
        receiver.release.set()
        for signed in slow:  # once it answers, each lands once, with its first signature
            got = await fact(audit, fact_of("delivery.attempted", signed.job.delivery_id))
            assert (got.outcome, got.attempt) == ("delivered", 1)
        landed = {h.body: h.headers for h in receiver.hits_on("slow")}
        assert len(receiver.hits_on("slow")) == len(landed) == len(slow)
        for signed in slow:
            headers = landed[signed.body.encode()]
            assert all(headers[name] == value for name, value in signed.headers.items())
    slow_ids = {s.job.delivery_id for s in slow}
    assert not [m for m in to_signer.received if m.json["delivery_id"] in slow_ids]
