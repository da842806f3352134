"""The signer in-process against the real RabbitMQ and a real keystore (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from cryptography.fernet import Fernet
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from services.signer import consumer as signer_consumer
from services.signer.app import start
from services.signer.decisions import standard_webhooks_secret
from services.signer.settings import ConfigError, Settings
from services.signer.store import Keystore
from shared import topology
from shared.broker import Publisher, declare
from shared.contracts import (
    AuditFact,
    DeliveryJob,
    DeliveryJobBatch,
    EndpointSecret,
    Event,
    SignedDelivery,
    utcnow,
)
from shared.db import make_engine
from shared.ids import new_id
from shared.runtime import Stop
from tests.conftest import free_port, ready_messages, wait_for
from tests.observe import Matcher, Observer

pytestmark = pytest.mark.integration

MASTER_KEY = Fernet.generate_key().decode()
FREE = "an admin-supplied secret, not whsec"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"



def about(delivery_id: str) -> Matcher:
    def match(message: AbstractIncomingMessage) -> bool:
        return delivery_id.encode() in message.body
    return match


def fact_of(kind: str, **fields: str) -> Matcher:
    def match(message: AbstractIncomingMessage) -> bool:
        fact = AuditFact.model_validate_json(message.body)
        return fact.kind == kind and all(getattr(fact, k) == v for k, v in fields.items())
    return match


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await declare(channel)
    await channel.close()
    yield connection
    # Leave no signed delivery behind for a deliverer another test may start later.
    channel = await connection.channel()
    await (await channel.get_queue(topology.DELIVERER_JOBS)).purge()
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


@contextlib.asynccontextmanager
async def signer(amqp_url: str, database_url: str, **overrides: object
                 ) -> AsyncIterator[Settings]:
    settings = Settings.model_validate({
        "amqp_url": amqp_url, "database_url": database_url, "master_key": MASTER_KEY,
        "port": free_port(), "secret_wait": 5.0, "shutdown_grace": 1.0, **overrides})
    stop: Stop = await start(settings)
    try:
        yield settings
    finally:
        await stop()


def secret_msg(endpoint_id: str, secret: str | None, *, action: str = "set",
               overlap: timedelta | None = None) -> EndpointSecret:
    return EndpointSecret.model_validate({
        "endpoint_id": endpoint_id, "action": action,
        "secret": None if secret is None else SecretStr(secret),
        "previous_valid_until": None if overlap is None else utcnow() + overlap,
        "issued_at": utcnow()})


def make_job(endpoint_id: str, *, attempt: int = 1) -> DeliveryJob:
    event = Event(id=new_id("evt"), event="template.created", timestamp=utcnow(), lang="ar",
                  data={"template_id": "abc123", "details": {"ar": "تم الإنشاء"}})
    return DeliveryJob(delivery_id=new_id("dlv"), endpoint_id=endpoint_id,
                       url="https://receiver.example/hook", event=event, attempt=attempt)


async def send_secret(publisher: Publisher, msg: EndpointSecret) -> None:
    await publisher.send(topology.CONTROL_EXCHANGE, f"secret.{msg.action}", msg)


async def send_job(publisher: Publisher, job: DeliveryJob) -> None:
    await publisher.send(topology.WORK_EXCHANGE, topology.SIGN, job)


def guide_verify(secret: str, body: bytes, signature: str) -> bool:
    """The guide's Flask receiver, verbatim in spirit."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


async def test_signs_a_job_once_its_secret_is_stored(
        amqp_url: str, database_url: str, channel: AbstractChannel, publisher: Publisher
) -> None:
    deliver = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.DELIVER)
    audit = await Observer().bind(channel, topology.AUDIT_EXCHANGE, "#")
    endpoint = new_id("ep")
    async with signer(amqp_url, database_url) as settings:
        await send_secret(publisher, secret_msg(endpoint, FREE))
        set_fact = await audit.next(fact_of("secret.set", endpoint_id=endpoint))
        assert FREE.encode() not in set_fact.body
        job = make_job(endpoint)
        await send_job(publisher, job)
        message = await deliver.next(about(job.delivery_id))

        signed = SignedDelivery.model_validate_json(message.body)
        body = signed.body.encode()
        assert FREE.encode() not in message.body
        assert signed.job == job
        assert guide_verify(FREE, body, signed.headers["X-Dihya-Signature"])
        payload = Webhook(standard_webhooks_secret(FREE)).verify(body, signed.headers)
        assert payload["id"] == job.event.id and payload["delivery"]["id"] == job.delivery_id
        assert payload["data"]["details"]["ar"] == "تم الإنشاء"
        assert signed.headers["webhook-id"] == job.event.id
        assert message.type == "dihya.signed_delivery.v1"

        async with aiohttp.ClientSession() as http:
            base = f"http://{settings.host}:{settings.port}"
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["checks"] == {"broker": True, "storage": True,
                                                              "consuming": True}
            async with http.get(f"{base}/metrics") as resp:
                assert "dihya_signer_jobs_total" in await resp.text()


async def _held_by_signer(channel: AbstractChannel) -> None:
    """Wait until the signer has taken every ready job (so it is waiting for the secret)."""
    async def taken() -> bool:
        return await ready_messages(channel, topology.SIGNER_JOBS) == 0

    await wait_for(taken)


async def test_a_job_sent_before_its_secret_is_signed_when_the_secret_arrives(
        amqp_url: str, tmp_path: Path, channel: AbstractChannel, publisher: Publisher,
        monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic re-read: only the control handler's signal can wake the waiting job.
    monkeypatch.setattr(signer_consumer, "RECHECK_INTERVAL", 60.0)
    deliver = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.DELIVER)
    endpoint = new_id("ep")
    async with signer(amqp_url, f"sqlite:///{tmp_path}/k.db", secret_wait=30.0):
        job = make_job(endpoint)
        await send_job(publisher, job)
        await _held_by_signer(channel)
        sent = asyncio.get_running_loop().time()
        await send_secret(publisher, secret_msg(endpoint, WHSEC))
        message = await deliver.next(about(job.delivery_id))
        assert asyncio.get_running_loop().time() - sent < 5  # woken, not timed out
        signed = SignedDelivery.model_validate_json(message.body)
        Webhook(WHSEC).verify(signed.body.encode(), signed.headers)
        assert guide_verify(WHSEC, signed.body.encode(), signed.headers["X-Dihya-Signature"])


async def test_a_secret_stored_by_another_replica_is_found_while_waiting(
        amqp_url: str, tmp_path: Path, channel: AbstractChannel, publisher: Publisher
) -> None:
    """Replicas share the keystore; the one holding the job never sees the control message."""
    deliver = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.DELIVER)
    endpoint, dsn = new_id("ep"), f"sqlite:///{tmp_path}/shared.db"
    async with signer(amqp_url, dsn, secret_wait=30.0):
        job = make_job(endpoint)
        await send_job(publisher, job)
        await _held_by_signer(channel)
        other_replica = make_engine(dsn)
        try:
            store = Keystore(other_replica, Settings(master_key=MASTER_KEY).cipher())
            assert await store.apply(secret_msg(endpoint, FREE), utcnow())
        finally:
            await other_replica.dispose()
        signed = SignedDelivery.model_validate_json(
            (await deliver.next(about(job.delivery_id))).body)
        assert guide_verify(FREE, signed.body.encode(), signed.headers["X-Dihya-Signature"])


async def test_a_job_for_an_unknown_endpoint_is_parked_no_secret(
        amqp_url: str, tmp_path: Path, channel: AbstractChannel, publisher: Publisher
) -> None:
    dead = await Observer().bind(channel, topology.DEAD_EXCHANGE, topology.SIGNER_JOBS)
    audit = await Observer().bind(channel, topology.AUDIT_EXCHANGE, "delivery.parked")
    async with signer(amqp_url, f"sqlite:///{tmp_path}/k.db", secret_wait=0.3):
        job = make_job(new_id("ep"))
        await send_job(publisher, job)
        parked = await dead.next(about(job.delivery_id))
        assert parked.headers[topology.REASON_HEADER] == "no_secret"
        assert DeliveryJob.model_validate_json(parked.body) == job
        fact = AuditFact.model_validate_json(
            (await audit.next(fact_of("delivery.parked", delivery_id=job.delivery_id))).body)
        assert fact.reason == "no_secret" and fact.endpoint_id == job.endpoint_id


async def test_a_batch_is_signed_job_by_job_and_an_unsignable_job_parked_alone(
        amqp_url: str, tmp_path: Path, channel: AbstractChannel, publisher: Publisher
) -> None:
    deliver = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.DELIVER)
    dead = await Observer().bind(channel, topology.DEAD_EXCHANGE, topology.SIGNER_JOBS)
    audit = await Observer().bind(channel, topology.AUDIT_EXCHANGE, "#")
    known, unknown = new_id("ep"), new_id("ep")
    async with signer(amqp_url, f"sqlite:///{tmp_path}/k.db", secret_wait=0.3):
        await send_secret(publisher, secret_msg(known, WHSEC))
        await audit.next(fact_of("secret.set", endpoint_id=known))
        good = [make_job(known) for _ in range(3)]
        lost = make_job(unknown)
        await publisher.send(topology.WORK_EXCHANGE, topology.SIGN,
                             DeliveryJobBatch(jobs=[good[0], lost, *good[1:]]),
                             headers={topology.BATCH_HEADER: 4,
                                      topology.TRACES_HEADER: ["", "", "", ""]})
        for job in good:  # each forwarded on its own, signed
            signed = SignedDelivery.model_validate_json(
                (await deliver.next(about(job.delivery_id))).body)
            assert signed.job == job
            Webhook(standard_webhooks_secret(WHSEC)).verify(signed.body.encode(),
                                                            signed.headers)
        # the one without a secret is parked as a job of its own, not the batch
        parked = await dead.next(about(lost.delivery_id))
        assert DeliveryJob.model_validate_json(parked.body) == lost
        assert parked.type == "dihya.delivery_job.v1"
        assert parked.headers[topology.REASON_HEADER] == "no_secret"
        assert topology.BATCH_HEADER not in parked.headers  # the batch's, not the job's
        assert topology.TRACES_HEADER not in parked.headers
        fact = AuditFact.model_validate_json((await audit.next(
            fact_of("delivery.parked", delivery_id=lost.delivery_id))).body)
        assert fact.reason == "no_secret" and fact.endpoint_id == unknown
    # the signer has stopped: an unacked batch would be back in the queue
    assert await ready_messages(channel, topology.SIGNER_JOBS) == 0
    assert not [m for m in dead.received if good[0].delivery_id.encode() in m.body]


async def test_rotation_with_overlap_signs_with_both_secrets(
        amqp_url: str, tmp_path: Path, channel: AbstractChannel, publisher: Publisher
) -> None:
    deliver = await Observer().bind(channel, topology.WORK_EXCHANGE, topology.DELIVER)
    audit = await Observer().bind(channel, topology.AUDIT_EXCHANGE, "secret.set")
    endpoint = new_id("ep")
    async with signer(amqp_url, f"sqlite:///{tmp_path}/k.db"):
        first = secret_msg(endpoint, FREE)
        await send_secret(publisher, first)
        await audit.next(fact_of("secret.set", endpoint_id=endpoint))
        job = make_job(endpoint)
        await send_job(publisher, job)  # warms the cache with the first secret
        await deliver.next(about(job.delivery_id))

        await send_secret(publisher, secret_msg(endpoint, WHSEC, overlap=timedelta(hours=1)))
        await audit.next(fact_of("secret.set", endpoint_id=endpoint))
        job = make_job(endpoint, attempt=2)
        await send_job(publisher, job)
        signed = SignedDelivery.model_validate_json(
            (await deliver.next(about(job.delivery_id))).body)
        body = signed.body.encode()
        assert len(signed.headers["webhook-signature"].split(" ")) == 2
        Webhook(WHSEC).verify(body, signed.headers)
        Webhook(standard_webhooks_secret(FREE)).verify(body, signed.headers)
        assert guide_verify(WHSEC, body, signed.headers["X-Dihya-Signature"])  # current one

        await send_secret(publisher, secret_msg(endpoint, None, action="delete"))
        await audit.next(fact_of("secret.set", endpoint_id=endpoint))


async def test_invalid_messages_are_parked_with_a_reason_and_no_secret_leaks(
        amqp_url: str, tmp_path: Path, channel: AbstractChannel, publisher: Publisher
) -> None:
    dead_control = await Observer().bind(channel, topology.DEAD_EXCHANGE,
                                         topology.SIGNER_CONTROL)
    dead_jobs = await Observer().bind(channel, topology.DEAD_EXCHANGE, topology.SIGNER_JOBS)
    audit = await Observer().bind(channel, topology.AUDIT_EXCHANGE, "delivery.parked")
    marker = new_id("bad")
    async with signer(amqp_url, f"sqlite:///{tmp_path}/k.db"):
        bad_control = orjson.dumps({"type": "dihya.endpoint_secret.v1", "endpoint_id": marker,
                                    "action": "rotate", "secret": FREE,
                                    "issued_at": utcnow().isoformat()})
        await publisher.publish(topology.CONTROL_EXCHANGE, "secret.set", bad_control)
        parked = await dead_control.next(about(marker))
        assert parked.headers[topology.REASON_HEADER] == "invalid_message"
        assert "action" in str(parked.headers[topology.ERROR_HEADER])
        assert FREE not in str(parked.headers[topology.ERROR_HEADER])

        await publisher.publish(topology.WORK_EXCHANGE, topology.SIGN,
                                b'{"delivery_id": "' + marker.encode() + b'"}')
        parked = await dead_jobs.next(about(marker))
        assert parked.headers[topology.REASON_HEADER] == "invalid_message"

        facts = [AuditFact.model_validate_json((await audit.next(lambda _: True)).body)
                 for _ in range(2)]
        assert {f.details["queue"] for f in facts} == {topology.SIGNER_CONTROL,
                                                       topology.SIGNER_JOBS}
        assert all(FREE not in f.model_dump_json() for f in facts)


async def test_start_refuses_without_a_master_key(amqp_url: str, tmp_path: Path) -> None:
    settings = Settings(amqp_url=amqp_url, database_url=f"sqlite:///{tmp_path}/k.db",
                        master_key=None, master_key_file=None, port=free_port())
    with pytest.raises(ConfigError, match="DIHYA_SIGNER_MASTER_KEY"):
        await start(settings)
