"""The same pipeline with every service's state in PostgreSQL instead of SQLite."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from demo.receiver import Receiver
from launcher.processes import System
from tests.conftest import _fresh_pg_database, wait_for
from tests.e2e.conftest import Api


@pytest.fixture
async def pg_system(amqp_url: str, tmp_path: Path) -> AsyncIterator[System]:
    async with contextlib.AsyncExitStack() as stack:
        urls = {name: await stack.enter_async_context(_fresh_pg_database())
                for name in ("ingest", "signer", "audit")}
        system = System(amqp_url, tmp_path, database_urls=urls)
        try:
            await system.start()  # inside: a start that times out still stops what it started
            yield system
        finally:
            codes = await system.stop()
        assert all(code == 0 for code in codes.values()), codes


async def test_pipeline_on_postgresql(pg_system: System) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, pg_system)
            await api.endpoint(receiver, "pg", ["pg.event"])
            event_id = await api.publish({"event": "pg.event", "lang": "ar",
                                          "data": {"user_id": "u"}})
            got = await receiver.wait(lambda ds: any(d.json["id"] == event_id for d in ds))
            assert all(d.guide_ok and d.standard_ok for d in got)

            async def audited() -> bool:
                kinds = {r["kind"] for r in await api.records(event_id=event_id)}
                return {"event.accepted", "delivery.attempted"} <= kinds

            await wait_for(audited, timeout=20)
    finally:
        await receiver.stop()
