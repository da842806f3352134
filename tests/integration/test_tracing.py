"""One trace per event: the platform's span, ingest, signer, deliverer and the receiver's request.

Ingest, signer and deliverer run in this process against the real broker, with an in-memory span
exporter installed; the W3C context travels in AMQP headers between them and in the outgoing
HTTP request to the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.deliverer.app import start as start_deliverer
from services.deliverer.settings import Settings as DelivererSettings
from services.ingest.app import start as start_ingest
from services.ingest.consumer import JobPublisher
from services.ingest.settings import Settings as IngestSettings
from services.signer.app import start as start_signer
from services.signer.settings import Settings as SignerSettings
from shared import telemetry, topology
from shared.broker import Publisher
from shared.contracts import DeliveryJob, EndpointSecret, Event, utcnow
from shared.ids import new_id
from tests.conftest import free_port
from tests.observe import Observer

pytestmark = pytest.mark.integration

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))
    telemetry.refresh()  # a "no provider" answer may be remembered from an earlier test


@contextlib.asynccontextmanager
async def pipeline(amqp_url: str, workdir: Path) -> AsyncIterator[IngestSettings]:
    token = "tracing-admin-token-0123456789"
    ingest = IngestSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "admin_token": token,
        "allowed_networks": "127.0.0.0/8", "DIHYA_DEFAULT_TENANT": "default",
        "database_url": f"sqlite:///{workdir}/ingest.db"})
    signer = SignerSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "master_key": Fernet.generate_key().decode(),
        "database_url": f"sqlite:///{workdir}/signer.db"})
    deliverer = DelivererSettings.model_validate({
        "amqp_url": amqp_url, "port": free_port(), "allowed_networks": "127.0.0.0/8"})
    stops = [await start_signer(signer), await start_deliverer(deliverer),
             await start_ingest(ingest)]
    try:
        yield ingest
    finally:
        for stop in reversed(stops):
            await stop()


async def test_spans_of_every_service_join_one_trace(amqp_url: str, tmp_path: Path) -> None:
    arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def receive(request: web.Request) -> web.Response:
        if not arrived.done():
            arrived.set_result(request.headers.get("traceparent", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with pipeline(amqp_url, tmp_path) as ingest, aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{ingest.port}/v1/endpoints",
                json={"url": f"http://127.0.0.1:{port}/hook", "events": ["trace.me"]},
                headers={"Authorization": "Bearer tracing-admin-token-0123456789"},
            ) as resp:
                assert resp.status == 201, await resp.text()

            tracer = trace.get_tracer("platform")
            with tracer.start_as_current_span("platform publishes trace.me") as root:
                headers: dict[str, str] = {}
                propagate.inject(headers)
                connection = await aio_pika.connect(amqp_url)
                async with connection:
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
                    await exchange.publish(aio_pika.Message(
                        orjson.dumps({"event": "trace.me", "data": {}}), headers=headers,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "trace.me")
            trace_id = format(root.get_span_context().trace_id, "032x")
            traceparent = await asyncio.wait_for(arrived, 20)
    finally:
        await runner.cleanup()

    assert traceparent.split("-")[1] == trace_id  # the receiver's request joined the trace
    spans = [s for s in EXPORTER.get_finished_spans()
             if format(s.context.trace_id, "032x") == trace_id]
    names = {s.name for s in spans}
    assert {f"{topology.INGEST_EVENTS} process", f"{topology.SIGNER_JOBS} process",
            f"{topology.DELIVERER_JOBS} process", "POST"} <= names, names


def _trace_of(traceparent: object) -> str:
    text = traceparent.decode() if isinstance(traceparent, bytes) else str(traceparent)
    return text.split("-")[1]


async def test_each_job_of_a_batch_keeps_the_trace_of_its_event(amqp_url: str,
                                                                tmp_path: Path) -> None:
    endpoint = new_id("ep")

    def job() -> DeliveryJob:
        event = Event(id=new_id("evt"), event="trace.me", timestamp=utcnow(), data={})
        return DeliveryJob(delivery_id=new_id("dlv"), endpoint_id=endpoint,
                           url="https://receiver.example/hook", event=event)

    jobs = [job(), job()]
    tracer = trace.get_tracer("platform")
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        sign = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.SIGN)
        deliver = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.DELIVER)
        publisher = await Publisher.open(connection)
        jobs_out = JobPublisher(publisher)
        jobs_out.start()
        roots: dict[str, str] = {}

        async def handle(one: DeliveryJob) -> None:  # as ingest's handler, in its event's trace
            with tracer.start_as_current_span(f"event {one.event.id}") as root:
                roots[one.delivery_id] = format(root.get_span_context().trace_id, "032x")
                await jobs_out.send(one)

        await asyncio.gather(*(handle(one) for one in jobs))  # in flight together: one batch
        await jobs_out.close()
        first = await sign.next(lambda m: jobs[0].delivery_id.encode() in m.body)
        assert first.batch == 2
        assert [_trace_of(p) for p in first.headers[topology.TRACES_HEADER]] == [
            roots[one.delivery_id] for one in jobs]

        settings = SignerSettings.model_validate({
            "amqp_url": amqp_url, "port": free_port(),
            "master_key": Fernet.generate_key().decode(),
            "database_url": f"sqlite:///{tmp_path}/signer.db"})
        stop = await start_signer(settings)
        try:
            await publisher.send(topology.CONTROL_EXCHANGE, "secret.set", EndpointSecret(
                endpoint_id=endpoint, action="set", secret="a secret of the test",
                issued_at=utcnow()))
            for one in jobs:  # each signed delivery continues its own event's trace
                signed = await deliver.next(lambda m, one=one: one.delivery_id.encode()
                                            in m.body)
                assert _trace_of(signed.headers["traceparent"]) == roots[one.delivery_id]
        finally:
            await stop()
            await (await channel.get_queue(topology.DELIVERER_JOBS)).purge()
            await publisher.close()
