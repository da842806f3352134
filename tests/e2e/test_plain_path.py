"""The plain broker path end to end: the four services started with ``DIHYA_AMQP_FAST_PATH=false``
(aio-pika's public API alone, see shared/broker/fastpath.py) take it and pass the pipeline's
happy path. The crash scenarios run on this path too, in test_crash_safety.py (parametrized over
both paths, with their books).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from demo.receiver import Receiver
from launcher.processes import System
from tests.e2e import test_pipeline
from tests.e2e.conftest import Api
from tests.e2e.test_crash_safety import SCHEDULE, SERVICES, paths_logged


@pytest.fixture(scope="module")
async def system(amqp_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[System]:
    """This module's system: every service on the plain path (overrides conftest's)."""
    plain = System(amqp_url, Path(tmp_path_factory.mktemp("plain")),
                   env={"DIHYA_AMQP_FAST_PATH": "false",
                        "DIHYA_DELIVERER_RETRY_SCHEDULE": SCHEDULE,
                        "DIHYA_DELIVERER_TIMEOUT": "2", "DIHYA_SHUTDOWN_GRACE": "5"})
    try:
        await plain.start()  # inside: a start that times out still stops what it started
        yield plain
    finally:
        codes = await plain.stop()
    assert all(code == 0 for code in codes.values()), codes


async def test_every_service_took_the_plain_path(system: System) -> None:
    for service in SERVICES:
        assert paths_logged(system, service) == ["plain"], service


async def test_http_and_amqp_events_arrive_signed_and_verified(
        api: Api, receiver: Receiver, amqp_url: str) -> None:
    await test_pipeline.test_http_and_amqp_events_arrive_signed_and_verified(
        api, receiver, amqp_url)
