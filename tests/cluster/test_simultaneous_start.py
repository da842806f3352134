"""Every service's two replicas started at the same moment on fresh PostgreSQL databases
(issue #17): each replica must come up — the schema upgrade is serialised, not raced."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from launcher.processes import SERVICES, System
from tests.conftest import _fresh_pg_database


async def test_replicas_started_together_on_a_fresh_database_all_come_up(
        amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    async with contextlib.AsyncExitStack() as stack:
        databases = {name: await stack.enter_async_context(_fresh_pg_database())
                     for name in ("ingest", "signer", "audit")}
        system = System(amqp_url, Path(tmp_path_factory.mktemp("together")),
                        database_urls=databases, replicas=dict.fromkeys(SERVICES, 2))
        try:
            for name in SERVICES:
                system.spawn(name)  # both replicas at once, every service at once
            await asyncio.gather(*(system.wait_ready(name, timeout=120) for name in SERVICES))
        finally:
            codes = await system.stop(timeout=20)
        assert all(code == 0 for code in codes.values()), codes
