"""Every POST is audited (issue #17, item 8): audit records == POSTs the receiver saw.

The deliverer and audit run in-process on a virtual host of the test's own, a real receiver
on 127.0.0.1 counts POSTs. While the receiver holds the first POST of each delivery, the
broker drops every connection of the virtual host (as a node restart would): the deliverer's
ack then goes nowhere and the broker redelivers the job, which is POSTed again. Each POST must
be its own ``delivery.attempted`` record — the repeat marked ``details.repeat`` — and the audit
writer must still keep one record per fact when a fact itself is delivered twice.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aiohttp import web

from services.audit.decisions import REPEAT_KEY
from shared import topology
from shared.broker import Publisher
from shared.contracts import AuditFact, AuditFactBatch, DeliveryJob
from tests.conftest import drop_connections, free_port, wait_for
from tests.integration.conftest import quick
from tests.integration.test_audit_service import Audit, running, settings_for
from tests.integration.test_deliverer_service import (
    deliverer,
    hand_over,
    make_job,
    signed_for,
)

pytestmark = pytest.mark.integration

DELIVERIES = 5


class CountingReceiver:
    """Counts POSTs per delivery (``webhook-id`` is the event id, one event per delivery);
    holds the first POST of each until the test has dropped the broker connections."""

    def __init__(self, vhost: str) -> None:
        self.port = free_port()
        self.posts: Counter[str] = Counter()
        self._vhost = vhost
        self._dropped: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        event = request.headers["webhook-id"]
        self.posts[event] += 1
        if event not in self._dropped:  # the first POST: its ack will find no channel
            self._dropped.add(event)
            await drop_connections(self._vhost, "every POST audited: a redelivery")
        return web.Response(status=200)


@pytest.fixture
async def receiver(vhost_url: tuple[str, str]) -> AsyncIterator[CountingReceiver]:
    rec = CountingReceiver(vhost_url[1])
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    await runner.cleanup()


async def test_a_post_repeated_after_a_redelivery_is_its_own_audit_record(
        vhost_url: tuple[str, str], receiver: CountingReceiver) -> None:
    url = quick(vhost_url[0])
    with tempfile.TemporaryDirectory() as tmp:
        async with running(settings_for(url, f"sqlite:///{Path(tmp) / 'audit.db'}")) as audit, \
                deliverer(url, publish_timeout=20.0):
            connection = await aio_pika.connect_robust(url)
            try:
                publisher = await Publisher.open(connection)
                jobs = [make_job(f"http://127.0.0.1:{receiver.port}/hook")
                        for _ in range(DELIVERIES)]
                for job in jobs:  # one at a time: each POST's drop is its own
                    await hand_over(publisher, signed_for(job))
                    await wait_for(lambda job=job: receiver.posts[job.event.id or ""] >= 2,
                                   timeout=60)
                await _check_books(audit, publisher, jobs, receiver)
                await publisher.close()
            finally:
                await connection.close()


async def _records(audit: Audit, delivery_id: str) -> list[dict[str, object]]:
    return await audit.records(kind="delivery.attempted", delivery_id=delivery_id)


async def _check_books(audit: Audit, publisher: Publisher, jobs: list[DeliveryJob],
                       receiver: CountingReceiver) -> None:
    by_delivery: dict[str, list[dict[str, object]]] = {}
    for job in jobs:
        event = job.event.id or ""
        # every POST's record, or (the bug) fewer for good: then the books below say so
        with contextlib.suppress(AssertionError):
            await wait_for(lambda job=job, event=event: _count(
                audit, job.delivery_id, receiver.posts[event]), timeout=15)
        by_delivery[job.delivery_id] = await _records(audit, job.delivery_id)
    posts = sum(receiver.posts.values())
    records = sum(len(r) for r in by_delivery.values())
    repeats = sum(bool(dict(r["details"]).get(REPEAT_KEY))  # type: ignore[call-overload]
                  for rs in by_delivery.values() for r in rs)
    print(f"\nbooks: deliveries {len(jobs)}, POSTs {posts}, audit records {records} "
          f"(marked repeat {repeats})")
    assert records == posts
    for delivery, recs in by_delivery.items():
        assert len({r["id"] for r in recs}) == len(recs), delivery
        assert [bool(dict(r["details"]).get(REPEAT_KEY))  # type: ignore[call-overload]
                for r in recs].count(False) == 1, delivery

    # the same fact delivered twice (a redelivered fact) is still one record
    [first] = by_delivery[next(iter(by_delivery))][:1]
    fact = AuditFact.model_validate({k: first[k] for k in (
        "id", "kind", "occurred_at", "service", "event_id", "endpoint_id", "delivery_id",
        "attempt", "url", "outcome", "status_code", "details")})
    before = len(await audit.records())
    await publisher.send(topology.AUDIT_EXCHANGE, fact.kind, AuditFactBatch(facts=[fact]))
    sentinel = fact.model_copy(update={"id": fact.id + "s", "delivery_id": "dlv_sentinel"})
    await publisher.send(topology.AUDIT_EXCHANGE, fact.kind, AuditFactBatch(facts=[sentinel]))
    await wait_for(lambda: _has(audit, "dlv_sentinel"), timeout=30)
    assert len(await audit.records()) == before + 1  # the sentinel only


async def _count(audit: Audit, delivery_id: str, posts: int) -> bool:
    return len(await _records(audit, delivery_id)) >= posts


async def _has(audit: Audit, delivery_id: str) -> bool:
    return bool(await audit.records(delivery_id=delivery_id))
