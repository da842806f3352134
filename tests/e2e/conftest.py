"""End-to-end fixtures: the four services as real processes on this run's vhost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from demo.receiver import Receiver
from launcher.processes import System
from shared import topology
from tests.conftest import broker_path_env

FAST_RETRIES = "150ms,300ms"


class Api:
    """A thin client for the HTTP APIs, failing loudly on unexpected statuses."""

    def __init__(self, http: aiohttp.ClientSession, system: System) -> None:
        self.http = http
        self.system = system

    async def call(self, method: str, service: str, path: str, token: str | None,
                   body: Any = None, expect: int | None = None, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.system.url(service) + path, json=body,
                                     headers=headers, **kw) as resp:
            data = await resp.json() if resp.content_type == "application/json" else None
            if expect is not None:
                assert resp.status == expect, (resp.status, data)
            return resp.status, data

    async def endpoint(self, receiver: Receiver, name: str, events: list[str]) -> dict[str, Any]:
        _, ep = await self.call("POST", "ingest", "/v1/endpoints", self.system.admin_token,
                                {"url": receiver.url(name), "events": events}, expect=201)
        receiver.secrets[name] = ep["secret"]
        return dict(ep)

    async def publish(self, event: dict[str, Any], token: str | None = None) -> str:
        _, data = await self.call("POST", "ingest", "/v1/events",
                                  token or self.system.admin_token, event, expect=202)
        return str(data["id"])

    async def records(self, **filters: str) -> list[dict[str, Any]]:
        """Every audit record matching ``filters``, walking all pages."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = dict(filters, limit="500", **({"cursor": cursor} if cursor else {}))
            _, page = await self.call("GET", "audit", "/v1/audit/records",
                                      self.system.admin_token, params=params, expect=200)
            out.extend(page["records"])
            cursor = page["next_cursor"]
            if not cursor:
                return out


@pytest.fixture(scope="module")
async def system(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[System]:
    sys_ = System(amqp_url, Path(tmp_path_factory.mktemp("system")),
                  env={"DIHYA_DELIVERER_RETRY_SCHEDULE": FAST_RETRIES,
                       "DIHYA_DELIVERER_TIMEOUT": "3", **broker_path_env()})
    try:
        await sys_.start()  # inside: a start that times out still stops what it started
        yield sys_
    finally:
        codes = await sys_.stop()
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


class Tap:
    """A copy of every message that crosses any Dihya exchange while the module runs."""

    def __init__(self) -> None:
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.messages.append(message)


@pytest.fixture(scope="module")
async def tap(amqp_url: str, system: System) -> AsyncIterator[Tap]:
    """Bind a private queue to every exchange with every routing key the system uses."""
    tap = Tap()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    bindings = [(topology.EVENTS_EXCHANGE, "#"), (topology.AUDIT_EXCHANGE, "#"),
                (topology.CONTROL_EXCHANGE, "#"), (topology.WORK_EXCHANGE, topology.SIGN),
                (topology.WORK_EXCHANGE, topology.DELIVER)]
    bindings += [(topology.DEAD_EXCHANGE, q.name) for q in topology.WORK_QUEUES]
    bindings += [(topology.RETRY_EXCHANGE, q.name) for q in topology.retry_queues(
        (150, 300, 1000)) + topology.defer_queues((1000,))]
    for exchange, key in bindings:
        await queue.bind(exchange, key)
    await queue.consume(tap.on_message, no_ack=True)
    yield tap
    await connection.close()


@pytest.fixture(scope="module")
async def api(system: System, tap: Tap) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(http, system)
