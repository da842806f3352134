"""Fault injection: break the running system on purpose and keep books of every event.

Each scenario publishes a stream of events over AMQP to its own endpoint, injects a fault in the
middle of the stream (SIGKILL a service, drop every broker connection, take the receiver down,
SIGTERM), lets the system recover, and then counts: every event must reach the receiver with a
valid signature (lost = 0); duplicates are allowed but must carry the same ``webhook-id`` as the
original; the audit log must hold every event as accepted and every one as attempted. The books
are printed (``pytest -s`` shows them).

Every scenario runs on both broker paths (``shared/broker/fastpath.py``): the *fast* one
(``DIHYA_AMQP_FAST_PATH=true``, ``DIHYA_CRASH_EVENTS`` events, 1500 by default) and the *plain*
one (``false``: aio-pika's public API alone, consumers restored by aio-pika's own
``RobustQueue``), with a third of the events to keep CI short — still ~10 s of stream around
each fault. Each path gets a system of its own; every service must log that it took that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aio_pika
import aiohttp
import orjson
import pytest

from demo.receiver import Receiver
from launcher.processes import System
from shared import anchor, topology
from tests.conftest import drop_connections, wait_for
from tests.e2e.conftest import Api

N = int(os.environ.get("DIHYA_CRASH_EVENTS", "1500"))
SCHEDULE = "300ms,600ms,1s,2s,3s,5s"  # ~12 s of retries: outlives every fault below
SERVICES = ("ingest", "signer", "deliverer", "audit")
PATHS = ("fast", "plain")
PLAIN_SHARE = 3
"""The plain path's scenarios publish 1/PLAIN_SHARE of the fast path's events (CI time)."""


@dataclass
class Books:
    """One scenario's count. Duplicates are extra deliveries of an event: with the event's own
    ``webhook-id`` (allowed, receivers drop them) or with another one (``new_id``: never)."""

    scenario: str
    path: str
    published: int
    delivered: int
    duplicates: int
    bad_signatures: int
    foreign_ids: int
    accepted: int = -1  # audit records: event.accepted, delivery.attempted (distinct events)
    attempted: int = -1

    @property
    def lost(self) -> int:
        return self.published - self.delivered

    def __str__(self) -> str:
        return (f"[books] {self.path:<5} {self.scenario:<22} published={self.published} "
                f"delivered={self.delivered} lost={self.lost} "
                f"duplicates_same_id={self.duplicates} duplicates_new_id={self.foreign_ids} "
                f"bad_signatures={self.bad_signatures} audit_accepted={self.accepted} "
                f"audit_attempted={self.attempted}")


@dataclass
class Chaos:
    """A running system on one broker path, its receiver, and its scenarios' size."""

    system: System
    receiver: Receiver
    api: Api
    path: str

    @property
    def events(self) -> int:
        return N if self.path == "fast" else N // PLAIN_SHARE


def path_env(path: str) -> dict[str, str]:
    return {"DIHYA_AMQP_FAST_PATH": "true" if path == "fast" else "false"}


@pytest.fixture(scope="module", params=PATHS)
async def chaos(request: pytest.FixtureRequest, amqp_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chaos]:
    path = str(request.param)
    system = System(amqp_url, Path(tmp_path_factory.mktemp(f"chaos-{path}")),
                    env={"DIHYA_DELIVERER_RETRY_SCHEDULE": SCHEDULE,
                         "DIHYA_DELIVERER_TIMEOUT": "2", "DIHYA_SHUTDOWN_GRACE": "5",
                         "DIHYA_AUDIT_HEADS_INTERVAL": "0.5", **path_env(path)})
    receiver = Receiver()
    await receiver.start()
    try:
        await system.start()  # inside: a start that times out still stops what it started
        async with aiohttp.ClientSession() as http:
            yield Chaos(system, receiver, Api(http, system), path)
    finally:
        await system.stop()
        await receiver.stop()


def paths_logged(system: System, service: str) -> list[str]:
    """The broker path each connection of ``service`` logged it took (its ``amqp_path``)."""
    found = []
    for line in system.log_path(service).read_bytes().splitlines():
        if b'"amqp_path"' in line:
            found.append(str(orjson.loads(line)["path"]))
    return found


async def publish_stream(url: str, routing_key: str, ids: list[str]) -> None:
    """Publish every event with confirms, in pipelined batches; survive connection loss.

    A batch whose confirms did not all arrive is published again (same ids): duplicates are
    allowed, losses are not.
    """
    pending = list(ids)
    while pending:
        try:
            conn = await aio_pika.connect(url, timeout=5)
            async with conn:
                channel = await conn.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(topology.EVENTS_EXCHANGE)
                while pending:
                    batch = pending[:100]
                    await asyncio.gather(*(
                        exchange.publish(aio_pika.Message(
                            orjson.dumps({"id": i, "event": routing_key, "data": {"n": i}}),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=i),
                            routing_key, mandatory=True, timeout=10)
                        for i in batch))
                    del pending[:len(batch)]
                    await asyncio.sleep(0.02)  # a steady stream, not one burst
        except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError,
                ConnectionError, TimeoutError, OSError):
            # (ChannelInvalidStateError, a RuntimeError: a publish found the channel closed)
            await asyncio.sleep(0.5)


def books(name: str, path: str, receiver: Receiver, ids: list[str]) -> Books:
    mine = receiver.received(name)
    counts = Counter(d.json["id"] for d in mine)
    wanted = set(ids)
    same_id = Counter(d.json["id"] for d in mine if d.headers["webhook-id"] == d.json["id"])
    return Books(
        scenario=name, path=path, published=len(ids), delivered=len(wanted & set(counts)),
        duplicates=sum(c - 1 for c in same_id.values()),
        bad_signatures=sum(1 for d in mine if not d.guide_ok),
        foreign_ids=sum(1 for d in mine
                        if d.headers["webhook-id"] != d.json["id"] or d.json["id"] not in wanted),
    )


async def audit_books(api: Api, name: str, endpoint_id: str, wanted: set[str]
                      ) -> tuple[int, int]:
    """(accepted, attempted): how many of ``wanted`` the audit log holds as ``event.accepted``
    and as ``delivery.attempted`` at this endpoint, once both are complete or after 60 s."""

    async def counts() -> tuple[int, int]:
        accepted = await api.records(kind="event.accepted", event_type=f"crash.{name}")
        attempted = await api.records(kind="delivery.attempted", endpoint_id=endpoint_id)
        return (len({r["event_id"] for r in accepted} & wanted),
                len({r["event_id"] for r in attempted} & wanted))

    async def complete() -> bool:
        return min(await counts()) >= len(wanted)

    with contextlib.suppress(AssertionError):  # not all within the time: the books say so
        await wait_for(complete, timeout=60, interval=0.5)
    return await counts()


async def run_scenario(
    chaos: Chaos, amqp_url: str, name: str,
    fault: Callable[[System, Receiver], Awaitable[None]], share: int = 1,
) -> Books:
    """Stream ``chaos.events // share`` events to endpoint ``name``, inject ``fault`` once a
    quarter arrived, then check the books (printed first)."""
    system, receiver, api = chaos.system, chaos.receiver, chaos.api
    n = chaos.events // share
    endpoint = await api.endpoint(receiver, name, [f"crash.{name}"])
    ids = [f"evt_{name}_{i:05d}" for i in range(n)]
    publishing = asyncio.create_task(publish_stream(amqp_url, f"crash.{name}", ids))
    await receiver.wait(lambda ds: sum(d.path == name for d in ds) >= n // 4, 120)
    await fault(system, receiver)
    await publishing
    with contextlib.suppress(TimeoutError):
        await receiver.wait(lambda ds: len({d.json["id"] for d in ds if d.path == name}) >= n,
                            120)
    result = books(name, chaos.path, receiver, ids)
    result.accepted, result.attempted = await audit_books(api, name, endpoint["id"], set(ids))
    print(result)
    assert result.lost == 0, result
    assert result.bad_signatures == 0, result
    assert result.foreign_ids == 0, result
    assert result.accepted == n, result
    assert result.attempted == n, result
    for service in SERVICES:  # every (re)started service took this path
        assert set(paths_logged(system, service)) == {chaos.path}, service
    return result


def restart_after_kill(service: str) -> Callable[[System, Receiver], Awaitable[None]]:
    async def fault(system: System, _: Receiver) -> None:
        system.kill(service, signal.SIGKILL)
        await asyncio.to_thread(system.procs[service].wait, 10)
        assert system.procs[service].returncode == -signal.SIGKILL
        system.spawn(service)
        await system.wait_ready(service)

    return fault


async def test_sigkill_deliverer_mid_stream(chaos: Chaos, amqp_url: str) -> None:
    await run_scenario(chaos, amqp_url, "kill-deliverer", restart_after_kill("deliverer"))


async def test_sigkill_signer_mid_stream(chaos: Chaos, amqp_url: str) -> None:
    await run_scenario(chaos, amqp_url, "kill-signer", restart_after_kill("signer"))
    assert paths_logged(chaos.system, "signer") == [chaos.path] * 2  # restarted on it too


async def test_sigkill_ingest_mid_stream(chaos: Chaos, amqp_url: str) -> None:
    await run_scenario(chaos, amqp_url, "kill-ingest", restart_after_kill("ingest"))


async def test_sigkill_audit_mid_stream_loses_no_record(chaos: Chaos, amqp_url: str) -> None:
    # run_scenario's books include the audit log's: every event accepted and attempted
    await run_scenario(chaos, amqp_url, "kill-audit", restart_after_kill("audit"), share=2)
    # The log, untouched, verifies offline against the heads signed before, during (every
    # 0.5 s, under load) and after the SIGKILL: the restarted service resumed the head chain.
    system, api = chaos.system, chaos.api
    _, head = await api.call("POST", "audit", "/v1/audit/heads", system.admin_token,
                             expect=200)
    # heads first, then the export: a late fact recorded meanwhile is beyond every head read
    heads = list(anchor.parse_lines(system.heads_file().read_bytes().splitlines()))
    async with api.http.get(system.url("audit") + "/v1/audit/export", headers={
            "Authorization": f"Bearer {system.admin_token}"}) as resp:
        assert resp.status == 200
        export = await resp.read()
    verdict = anchor.verify(heads, anchor.HeadSigner(system.audit_head_seed).public,
                            anchor.parse_lines(export.splitlines()))
    print(f"[books] {chaos.path:<5} kill-audit heads: heads={verdict.heads} "
          f"torn={len(heads) - verdict.heads} records={verdict.records} "
          f"verdict={verdict.kind or 'ok'} ({verdict.detail})")
    assert verdict.ok, verdict
    assert verdict.newest_head is not None
    assert verdict.newest_head["seq"] >= head["head"]["seq"]


async def test_all_broker_connections_dropped_mid_stream(chaos: Chaos, amqp_url: str) -> None:
    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"

    async def fault(_: System, __: Receiver) -> None:
        await drop_connections(vhost, "chaos test")

    await run_scenario(chaos, amqp_url, "drop-connections", fault)
    for name in SERVICES:  # every service came back, its consumers restored
        await chaos.system.wait_ready(name, timeout=30)


async def test_receiver_down_for_a_while_then_back(chaos: Chaos, amqp_url: str) -> None:
    async def fault(_: System, receiver: Receiver) -> None:
        port = receiver.port
        await receiver.stop()
        await asyncio.sleep(1.5)  # the outage itself: deliveries fail and go to retry tiers
        receiver.port = port
        await receiver.start()

    result = await run_scenario(chaos, amqp_url, "receiver-down", fault, share=3)
    assert result.delivered == result.published


async def test_sigterm_mid_stream_hands_back_in_flight_work(chaos: Chaos, amqp_url: str
                                                            ) -> None:
    async def fault(system: System, _: Receiver) -> None:
        for service in ("deliverer", "signer"):
            codes = await system.stop(service, timeout=20)
            assert codes[service] == 0, f"{service} exit code {codes[service]} on SIGTERM"
            system.spawn(service)
        await system.wait_ready("signer")
        await system.wait_ready("deliverer")

    await run_scenario(chaos, amqp_url, "sigterm", fault)
