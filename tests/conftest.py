"""Fixtures for real brokers and databases, isolated per test run.

RabbitMQ: ``DIHYA_TEST_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``) names the
broker. Each test session gets its own virtual host (created with ``rabbitmqctl``, deleted at
the end), so runs never see each other's queues. Without a local ``rabbitmqctl`` but with a
Docker engine, testcontainers starts a throw-away broker instead.

PostgreSQL: ``DIHYA_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
names a server; each test that asks for ``pg_url`` gets a fresh database, dropped afterwards.
When none is given and nothing listens on 127.0.0.1:5432 but a Docker engine answers,
testcontainers starts a throw-away PostgreSQL for the session.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from aio_pika.abc import AbstractChannel

RUN_ID = uuid.uuid4().hex[:8]
AMQP_BASE = os.environ.get("DIHYA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_BASE = os.environ.get("DIHYA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def broker_path_env() -> dict[str, str]:
    """``DIHYA_AMQP_FAST_PATH`` of this test run, for services started as processes (the
    launcher passes them no ``DIHYA_*`` of its own): ``DIHYA_AMQP_FAST_PATH=false bin/test
    tests/integration tests/e2e`` runs the suites on the plain broker path. In-process
    connections and settings read it from the environment themselves."""
    value = os.environ.get("DIHYA_AMQP_FAST_PATH")
    return {} if value is None else {"DIHYA_AMQP_FAST_PATH": value}


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


async def drop_connections(vhost: str, reason: str = "test drop") -> None:
    """Have the broker close every client connection of ``vhost`` (as an outage would)."""
    await asyncio.to_thread(_rabbitmqctl, "close_all_connections", "-p", vhost, reason)


@pytest.fixture(scope="session")
def amqp_base() -> Iterator[str]:
    """A broker URL whose vhosts the tests may create: local rabbitmqctl, else a container."""
    if shutil.which("rabbitmqctl") or "DIHYA_TEST_AMQP_URL" in os.environ:
        yield AMQP_BASE
        return
    try:
        from testcontainers.community.rabbitmq import (  # type: ignore[import-not-found]
            RabbitMqContainer,
        )
    except ImportError:
        pytest.skip("no RabbitMQ: set DIHYA_TEST_AMQP_URL or install rabbitmq-server")
    with RabbitMqContainer("rabbitmq:3.13") as rabbit:
        host, port = rabbit.get_container_host_ip(), rabbit.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"


@pytest.fixture(scope="session")
def amqp_url(amqp_base: str) -> Iterator[str]:
    """An AMQP URL on a virtual host of this test session's own (deleted afterwards)."""
    vhost = f"dihya-test-{RUN_ID}"
    local = shutil.which("rabbitmqctl") is not None
    if local:
        _rabbitmqctl("add_vhost", vhost)
        user = urlsplit(amqp_base).username or "guest"
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        url = _with_path(amqp_base, "/" + vhost)
    else:  # a container of our own: its default vhost is already private
        url = amqp_base
    yield url
    if local:
        _rabbitmqctl("delete_vhost", vhost)


_PG_CONTAINER: list[str] = []


def _pg_base() -> str:
    """The server databases are created on: the configured or local one, else a container."""
    if "DIHYA_TEST_PG_URL" in os.environ or _PG_CONTAINER:
        return _PG_CONTAINER[0] if _PG_CONTAINER else PG_BASE
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", 5432)) == 0:
            return PG_BASE
    try:
        from testcontainers.community.postgres import (  # type: ignore[import-not-found]
            PostgresContainer,
        )

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
    except Exception:  # no testcontainers or no Docker engine: the caller skips
        return PG_BASE
    atexit.register(container.stop)
    _PG_CONTAINER.append(container.get_connection_url())
    return _PG_CONTAINER[0]


@contextlib.asynccontextmanager
async def _fresh_pg_database() -> AsyncIterator[str]:
    asyncpg = pytest.importorskip("asyncpg")
    name = f"dihya_test_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    try:
        base = _pg_base()
        admin = await asyncpg.connect(base, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {PG_BASE}: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_path(base, "/" + name)
    finally:
        admin = await asyncpg.connect(base, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    async with _fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each storage backend in turn: an SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db.sqlite3"
        return
    async with _fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_pair(request: pytest.FixtureRequest, tmp_path: Path
                        ) -> AsyncIterator[tuple[str, str]]:
    """Two empty databases of each storage backend in turn: the same rows written two ways
    (through the engine, through a direct writer) into one each, to be compared."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/one.sqlite3", f"sqlite:///{tmp_path}/two.sqlite3"
        return
    async with _fresh_pg_database() as one, _fresh_pg_database() as two:
        yield one, two


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for services started by a test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ready_messages(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in ``queue`` now, asked of the broker.

    Not ``channel.declare_queue(queue, passive=True).declaration_result``: a robust channel
    that declared the queue before hands back that queue object, with the count it had then.
    """
    underlay = await channel.get_underlay_channel()
    result = await underlay.queue_declare(queue, passive=True)
    assert result.message_count is not None
    return int(result.message_count)


async def wait_for(predicate: object, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll an (a)sync predicate until true; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
