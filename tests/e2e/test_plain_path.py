"""The plain broker path end to end: the four services started with ``DIHYA_AMQP_FAST_PATH=false``
(aio-pika's public API alone, see shared/broker/fastpath.py) pass a representative set of the
pipeline and crash suites — the happy path, a SIGKILL mid-stream and every broker connection
dropped mid-stream (consumer restore by aio-pika's own ``RobustQueue``). The books are printed
(``pytest -s``), as in test_crash_safety.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson
import pytest

from demo.receiver import Receiver
from launcher.processes import System
from tests.conftest import drop_connections, wait_for
from tests.e2e import test_pipeline
from tests.e2e.conftest import Api
from tests.e2e.test_crash_safety import SCHEDULE, N, restart_after_kill, run_scenario

SERVICES = ("ingest", "signer", "deliverer", "audit")
EVENTS = N // 3
"""Events per crash scenario: a third of the fast path's (CI time), still ~10 s of stream."""


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


@pytest.fixture
def chaos(system: System, receiver: Receiver, api: Api) -> tuple[System, Receiver, Api]:
    return system, receiver, api


def paths_logged(system: System, service: str) -> list[str]:
    """The broker path each connection of ``service`` logged it took (its ``amqp_path``)."""
    found = []
    for line in system.log_path(service).read_bytes().splitlines():
        if b'"amqp_path"' in line:
            found.append(str(orjson.loads(line)["path"]))
    return found


async def audit_books(api: Api, name: str) -> None:
    """Every event of the scenario is in the audit log as accepted (printed, then asserted)."""
    wanted = {f"evt_{name}_{i:05d}" for i in range(EVENTS)}

    async def accepted() -> set[str]:
        return {r["event_id"] for r in await api.records(kind="event.accepted")} & wanted

    with contextlib.suppress(AssertionError):  # not all within the time: the books say which
        await wait_for(lambda: _all(accepted, len(wanted)), timeout=60, interval=0.5)
    found = await accepted()
    print(f"[books] {name} audit: accepted={len(found)} missing={len(wanted - found)}")
    assert found == wanted


async def _all(accepted: Callable[[], Awaitable[set[str]]], count: int) -> bool:
    return len(await accepted()) >= count


async def test_every_service_took_the_plain_path(system: System) -> None:
    for service in SERVICES:
        assert paths_logged(system, service) == ["plain"], service


async def test_http_and_amqp_events_arrive_signed_and_verified(
        api: Api, receiver: Receiver, amqp_url: str) -> None:
    await test_pipeline.test_http_and_amqp_events_arrive_signed_and_verified(
        api, receiver, amqp_url)


async def test_sigkill_signer_mid_stream(chaos: tuple[System, Receiver, Api],
                                         amqp_url: str) -> None:
    await run_scenario(chaos, amqp_url, "plain-kill-signer", restart_after_kill("signer"),
                       n=EVENTS)
    await audit_books(chaos[2], "plain-kill-signer")
    assert paths_logged(chaos[0], "signer") == ["plain", "plain"]  # restarted on it too


async def test_all_broker_connections_dropped_mid_stream(
        chaos: tuple[System, Receiver, Api], amqp_url: str) -> None:
    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"

    async def fault(_: System, __: Receiver) -> None:
        await drop_connections(vhost, "plain path chaos test")

    await run_scenario(chaos, amqp_url, "plain-drop-connections", fault, n=EVENTS)
    await audit_books(chaos[2], "plain-drop-connections")
    for service in SERVICES:  # every service came back, its consumers restored by aio-pika
        await chaos[0].wait_ready(service, timeout=30)
