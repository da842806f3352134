"""Fixtures the ingest integration tests share: the broker with the topology declared, and
ingest started in-process (on each storage backend, or on SQLite alone)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from shared.broker import declare
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
