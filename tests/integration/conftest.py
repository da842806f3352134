"""Fixtures the integration tests share: the broker with the topology declared, a throw-away
virtual host whose connections a test may drop, and ingest started in-process (on each storage
backend, or on SQLite alone)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from shared.broker import declare
from tests.conftest import _rabbitmqctl, _with_path
from tests.integration.test_ingest_api import Client, running_ingest


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection.channel() as channel:
        await declare(channel)
    yield connection
    await connection.close()


@pytest.fixture
async def ingest(amqp_url: str, database_url: str) -> AsyncIterator[Client]:
    async with running_ingest(amqp_url, database_url) as client:
        yield client


@pytest.fixture
async def ingest_sqlite(amqp_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    """For what does not depend on the storage backend."""
    async with running_ingest(amqp_url, f"sqlite:///{tmp_path}/ingest.db") as client:
        yield client


@pytest.fixture
async def vhost_url(amqp_base: str) -> AsyncIterator[tuple[str, str]]:
    """A throw-away virtual host (its URL and name): dropping its connections hurts no one."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs a local rabbitmqctl to drop connections")
    vhost = f"dihya-test-reconnect-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", vhost)
    try:
        await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", vhost, "guest",
                                ".*", ".*", ".*")
        yield _with_path(amqp_base, "/" + vhost), vhost
    finally:
        await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)


def is_fast(connection: object) -> bool:
    """Whether ``connection`` took the broker fast path (see shared/broker/fastpath.py)."""
    return bool(getattr(connection, "dihya_fast_path", False))


def quick(url: str) -> str:
    """Reconnect half a second after a drop (aio-pika's default is five)."""
    return f"{url}?reconnect_interval=0.5"
