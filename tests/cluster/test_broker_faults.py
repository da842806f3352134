"""Broker faults on a 3-node RabbitMQ cluster, under load, with the books of every event.

Each scenario publishes >= 1,000 events (the freeze 1,500): half over HTTP, with and without
Idempotency-Key, half over AMQP with confirms and a fixed message id. It injects its fault once
a quarter have arrived, waits until every accepted event arrived, and prints its books. Pass:
nothing lost, no duplicate under a new id, nothing parked, one audit record per POST, and no
stretch without a delivery longer than :data:`MAX_STALL` (three heartbeats).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from launcher.processes import SERVICES
from services.audit.decisions import UNKNOWN_OUTCOME
from shared.nodes import DEFAULT_HEARTBEAT
from tests.cluster.books import Books, keep, longest_gap
from tests.cluster.conftest import Rig
from tests.cluster.load import Arrivals, Load, amqp_publish, http_publish
from tests.cluster.probe import ProbeResult, leader_loss_probe
from tests.cluster.rabbit import DLX_CONFIRM_MS

N = int(os.environ.get("DIHYA_CLUSTER_EVENTS", "1000"))
FREEZE_N = max(N, 1500)
"""The freeze scenario publishes longer: its stall is the time the services take to leave the
frozen node (12-14 s), and the load must still be running when they do."""
MAX_STALL = 3.0 * DEFAULT_HEARTBEAT
FREEZE = 40.0
AUDIT_WAIT = 100.0
"""Seconds the books wait for the last audit records: the rig's outcome timeout (conftest,
DIHYA_AUDIT_OUTCOME_TIMEOUT) and a sweep interval, with room to spare."""

Fault = Callable[[Rig], Awaitable[None]]


async def _parked(rig: Rig, endpoint_id: str) -> int:
    """Messages parked anywhere: the parking queues, ingest's stores of failed deliveries of
    the endpoint and of unreadable messages."""
    dead = sum(count for name, count in rig.cluster.messages("/").items()
               if name.endswith(".dead"))
    admin = {"Authorization": f"Bearer {rig.system.admin_token}"}
    async with rig.http.get(f"{rig.system.url('ingest')}/v1/endpoints/{endpoint_id}"
                            "/deliveries?status=failed&limit=1000", headers=admin) as resp:
        failed = len((await resp.json())["items"])
    async with rig.http.get(f"{rig.system.url('ingest')}/v1/parked-messages?limit=1000",
                            headers=admin) as resp:
        unreadable = len((await resp.json())["items"])
    return dead + failed + unreadable


async def _audited(rig: Rig, endpoint_id: str) -> tuple[int, int]:
    """``delivery.attempted`` records of the endpoint in the audit log, and how many of them
    say ``unknown`` (a POST started by a deliverer that was killed before its outcome)."""
    admin = {"Authorization": f"Bearer {rig.system.admin_token}"}
    count, unknown, cursor = 0, 0, None
    while True:
        params = {"endpoint_id": endpoint_id, "kind": "delivery.attempted", "limit": "500",
                  **({"cursor": cursor} if cursor else {})}
        async with rig.http.get(f"{rig.system.url('audit')}/v1/audit/records",
                                params=params, headers=admin) as resp:
            page = await resp.json()
        count += len(page["records"])
        unknown += sum(r["outcome"] == UNKNOWN_OUTCOME for r in page["records"])
        cursor = page["next_cursor"]
        if not cursor:
            return count, unknown


async def _audit_settled(rig: Rig, endpoint_id: str, posts: int) -> tuple[int, int]:
    """:func:`_audited` once every POST has its record, or after :data:`AUDIT_WAIT` seconds
    (an outcome-less POST is recorded after the rig's DIHYA_AUDIT_OUTCOME_TIMEOUT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + AUDIT_WAIT
    while True:
        audited, unknown = await _audited(rig, endpoint_id)
        if audited >= posts or loop.time() > deadline:
            return audited, unknown
        await asyncio.sleep(1)


async def run(rig: Rig, name: str, fault: Fault, n: int = N) -> Books:
    """Publish ``n`` events to a fresh endpoint, break things, and keep the books."""
    admin = {"Authorization": f"Bearer {rig.system.admin_token}"}
    async with rig.http.post(f"{rig.system.url('ingest')}/v1/endpoints", headers=admin,
                             json={"url": rig.receiver.url(name),
                                   "events": [f"cluster.{name}"]}) as resp:
        endpoint = await resp.json()
        assert resp.status == 201, endpoint
    rig.receiver.secrets[name] = endpoint["secret"]
    parked_before = await _parked(rig, endpoint["id"])
    arrivals = Arrivals(rig.receiver, name)
    load = Load(name, f"cluster.{name}")
    ingests = [rig.system.url("ingest", i) for i in range(rig.system.count("ingest"))]
    publishing = asyncio.gather(
        http_publish(load, ingests, rig.system.admin_token, n // 2),
        amqp_publish(load, [node.url for node in rig.cluster.nodes], n - n // 2))
    await arrivals.wait_count(n // 4, timeout=180)
    loop = asyncio.get_running_loop()
    fault_at = loop.time()
    await fault(rig)
    await publishing
    complete = await arrivals.wait_for(set(load.accepted), timeout=180)
    last = max((a.at for a in arrivals.items), default=fault_at)
    await asyncio.sleep(2)  # late duplicates and audit records still in flight
    audited, unknown = await _audit_settled(rig, endpoint["id"], len(arrivals.items))
    books = keep(name, load.accepted, list(arrivals.items),
                 parked=await _parked(rig, endpoint["id"]) - parked_before, audited=audited,
                 http_5xx=load.http_5xx, window=(fault_at, last), unknown=unknown,
                 unanswered_keyless=load.unanswered_keyless)
    rig.books.append(books)
    print(f"\n[books] {Books.HEADER}\n[books] {books.row()}   (complete={complete}, "
          f"transport errors={load.transport_errors}, new ids of keyless events sent again "
          f"after no answer={books.dup_new_id_keyless})")
    print(f"[books] {name}: deliveries per 5 s from the fault: "
          f"{timeline([a.at for a in arrivals.items], fault_at)}")
    begin, end = longest_gap((a.at for a in arrivals.items), fault_at, last)
    to_wall = time.time() - loop.time()  # the services' logs are stamped in UTC wall time
    print(f"[books] {name}: fault at {utc(fault_at + to_wall)}; longest stall "
          f"{end - begin:.1f} s, from +{begin - fault_at:.1f} s to +{end - fault_at:.1f} s "
          f"({utc(begin + to_wall)} to {utc(end + to_wall)}): compare the service logs")
    if books.dup_new_id or books.dup_new_id_keyless:  # which events, and what they were told
        ids: dict[str, set[str]] = {}
        for a in arrivals.items:
            ids.setdefault(a.logical, set()).add(a.event_id)
        for logical, delivered in sorted(ids.items()):
            if len(delivered) > 1:
                print(f"[books] {name}: {logical} delivered as {sorted(delivered)}; "
                      f"accepted as {sorted(load.accepted.get(logical, ()))}")
    for service in rig.system.replica_procs:  # no replica died of it
        for proc in rig.system.replica_procs[service]:
            assert proc is not None and proc.poll() is None, f"{service} exited"
    return books


def utc(at: float) -> str:
    """A wall-clock time as the services' logs stamp it (UTC, milliseconds)."""
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def timeline(times: list[float], start: float, step: float = 5.0) -> str:
    """Arrivals per ``step`` seconds from ``start``, as ``"12 0 0 31 …"``: where a stall sat."""
    counts = Counter(int((t - start) // step) for t in times if t >= start)
    return " ".join(str(counts.get(i, 0)) for i in range(max(counts, default=-1) + 1))


def check(books: Books, max_stall: float = MAX_STALL) -> None:
    """Every promise of the scenario holds."""
    assert books.accepted >= N
    failures = books.failures(max_stall)
    assert not failures, (failures, books)


def test_nodes_resend_a_dead_letter_hop_after_5_s(rig: Rig) -> None:
    """The nodes took the suite's advanced.config: RabbitMQ's dead-letter worker resends an
    unconfirmed hop after DLX_CONFIRM_MS, not its default 180 s (see tests/cluster/rabbit.py)."""
    for node in rig.cluster.nodes:
        got = rig.cluster.ctl(node, "eval", "application:get_env(rabbit, "
                              "dead_letter_worker_publisher_confirm_timeout).")
        assert got.strip() == f"{{ok,{DLX_CONFIRM_MS}}}", (node.name, got)


def test_leaders_are_spread_over_the_nodes(rig: Rig) -> None:
    leaders = Counter(rig.cluster.leaders("/").values())
    queues = sum(leaders.values())
    print(f"\n[books] leaders per node: {dict(leaders)}")
    assert set(leaders) == {node.name for node in rig.cluster.nodes}
    assert max(leaders.values()) <= math.ceil(queues / 3) + 1


async def test_kill_the_node_leading_the_queues(rig: Rig) -> None:
    probed: list[ProbeResult] = []

    async def fault(rig: Rig) -> None:
        # in a thread: rabbitmqctl takes seconds, and the receiver shares this event loop
        # (a blocked loop is a stall of the test's own: arrivals waited for the CLI)
        leader = (await asyncio.to_thread(rig.cluster.leaders, "/"))["dihya.ingest.events"]
        node = rig.cluster.node_named(leader)
        async with leader_loss_probe(rig.cluster, node) as probe:
            await asyncio.to_thread(rig.cluster.kill, node)
            probed.append(await probe.after_kill())
            await asyncio.sleep(15)  # the cluster runs on two nodes for a while
        await asyncio.to_thread(rig.cluster.restart, node)

    books = await run(rig, "kill-leader", fault)
    result = probed[0]
    print(f"[books] kill-leader: a queue led by the killed node, first publish of a channel "
          f"right after the kill: bare channel {result.bare} (a second later "
          f"{result.bare_again}); Publisher {result.publisher} in "
          f"{result.publisher_seconds:.2f} s")
    assert result.publisher == "confirmed", result  # a nacked channel is renewed (#17)
    check(books)


async def test_kill_the_node_the_services_are_connected_to(rig: Rig) -> None:
    async def fault(rig: Rig) -> None:
        node = rig.busiest_node()
        await asyncio.to_thread(rig.cluster.kill, node)
        await asyncio.sleep(15)
        await asyncio.to_thread(rig.cluster.restart, node)

    check(await run(rig, "kill-connected", fault))


async def test_sigkill_every_replica_in_turn(rig: Rig) -> None:
    async def fault(rig: Rig) -> None:
        for service in SERVICES:
            for replica in range(rig.system.count(service)):
                proc = rig.system.replica_procs[service][replica]
                assert proc is not None
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
                rig.system.spawn(service, replica)
                await rig.system.wait_ready(service, timeout=60)

    # audit = POSTs: a POST of a deliverer killed before its outcome's confirm is recorded
    # from its write-ahead (delivery.started) as outcome "unknown" (see run)
    check(await run(rig, "sigkill-replicas", fault))


async def test_rolling_restart_of_every_node(rig: Rig) -> None:
    async def fault(rig: Rig) -> None:
        for node in rig.cluster.nodes:
            await asyncio.to_thread(rig.cluster.stop, node)
            await asyncio.to_thread(rig.cluster.restart, node)

    check(await run(rig, "rolling-restart", fault))


async def test_freeze_a_node_for_40_seconds(rig: Rig) -> None:
    """The busiest node stopped (SIGSTOP) for 40 s, then continued.

    Two things made this stall for good before (issue #17): the services' fact batchers died
    when their connection dropped mid-batch (shared/batching.py: an interrupted write is now
    a failed batch), and the cluster waited for the frozen node for as long as it was frozen —
    RabbitMQ declares a silent node down after ``net_ticktime`` (60 s by default), and until
    then every metadata write (a quorum queue's new leader, a consumer's registration) waits
    for it. The rig runs ``net_ticktime = 10`` (rabbit.py, NET_TICKTIME), as
    docs/operations.md advises for a cluster that must ride out a frozen node. Last of the
    module: the frozen node pauses itself (pause_minority) and rejoins after the thaw."""

    async def fault(rig: Rig) -> None:
        node = rig.busiest_node()
        print(f"\n[freeze] {node.name} frozen; service processes per node port: "
              f"{ {n.port: c for n, c in rig.connected_nodes().items()} }")
        rig.cluster.freeze(node)
        try:
            await asyncio.sleep(FREEZE)
        finally:
            rig.cluster.thaw(node)

    check(await run(rig, "freeze-40s", fault, FREEZE_N))


@pytest.fixture(autouse=True)
def _cluster_whole(rig: Rig) -> None:
    """Every scenario starts on three running nodes."""
    assert len(rig.cluster.running()) == 3
