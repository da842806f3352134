"""The sampler's process groups, on the machine's real PostgreSQL server."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from bench.monitor import ProcSampler, listening_pid, postgres_pids
from tests.conftest import _pg_base, wait_for

pytestmark = pytest.mark.integration


async def test_the_postgres_group_is_the_server_and_every_backend_of_the_moment() -> None:
    base = _pg_base()
    postmaster = listening_pid(urlsplit(base).port or 5432)
    if postmaster is None:  # a server in a container: the bench has no group for it either
        pytest.skip(f"PostgreSQL at {base} is not a process of this machine")
    assert psutil.Process(postmaster).name() == "postgres"
    before = set(postgres_pids(postmaster))
    connection = await asyncpg.connect(base)
    try:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        during = postgres_pids(postmaster)
        assert postmaster in during and backend in during and backend not in before
        sampler = ProcSampler(lambda: {"postgres": postgres_pids(postmaster)})
        first = sampler.sample()
        await connection.fetchval("SELECT count(*) FROM generate_series(1, 3000000)")
        second = sampler.sample()
        assert second.cpu["postgres"] > first.cpu["postgres"]  # the query's CPU is counted
    finally:
        await connection.close()
    await wait_for(lambda: backend not in postgres_pids(postmaster), timeout=10)
    third = sampler.sample()  # the backend has left the group: its CPU stays counted
    assert third.cpu["postgres"] >= second.cpu["postgres"]
    assert postgres_pids(None) == [] and listening_pid(1) is None
