"""The cluster fault suite's standing configuration: a 3-node RabbitMQ cluster of its own,
every Dihya service as 2 replicas on PostgreSQL, given the node list, and one receiver.

Started once for the module (the scenarios share it and each leaves the cluster whole again);
torn down — every node's process group killed, every data directory removed, every service
stopped — by the fixtures' finalisers, whatever a scenario did.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from demo.receiver import Receiver
from launcher.processes import SERVICES, System
from shared import topology
from tests.cluster.books import Books
from tests.cluster.rabbit import SBIN, Cluster, Node
from tests.conftest import _fresh_pg_database

SCHEDULE = "300ms,600ms,1s,2s,3s,5s,8s,13s"
"""Retries that outlive every fault below (a receiver is never down here, but a delivery may
be in flight when its node goes)."""


BOOKS: list[Books] = []
"""Every scenario's books, printed at the end of the run (in CI's log, captured or not)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts a RabbitMQ cluster of its own")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not BOOKS:
        return
    terminalreporter.section("books of the cluster fault suite")
    terminalreporter.write_line("3 RabbitMQ nodes, 2 replicas of every service, PostgreSQL; "
                                "dup=id: same webhook-id, dup≠id: a new id")
    terminalreporter.write_line(Books.HEADER)
    for entry in BOOKS:
        terminalreporter.write_line(entry.row())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.timeout(600))


@dataclass
class Rig:
    cluster: Cluster
    system: System
    receiver: Receiver
    http: aiohttp.ClientSession
    books: list[Books]

    def connected_nodes(self) -> Counter[Node]:
        """How many service processes are on each node now (their last connect in the log)."""
        found: Counter[Node] = Counter()
        for service in SERVICES:
            for replica in range(self.system.count(service)):
                port = last_node_port(self.system.log_path(service, replica))
                if port is not None:
                    found[self.cluster.by_port(port)] += 1
        return found

    def busiest_node(self) -> Node:
        return self.connected_nodes().most_common(1)[0][0]


def last_node_port(log: Path) -> int | None:
    """The port of the node a service process connected to last (from its JSON log)."""
    if not log.exists():
        return None
    port = None
    for line in log.read_bytes().splitlines():
        if b"broker_node_connected" in line:
            with contextlib.suppress(ValueError):
                port = int(json.loads(line)["node"].rsplit(":", 1)[1])
    return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if SBIN is None:
        pytest.skip("rabbitmq-server is not installed")
    rabbits = Cluster(tmp_path_factory.mktemp("rabbits"))
    try:
        rabbits.start()
        # what loading deploy/rabbitmq/definitions.json does: the leader policy first
        policy = topology.LEADER_POLICY
        rabbits.ctl(rabbits.nodes[0], "set_policy", "-p", "/", "--apply-to",
                    str(policy["apply-to"]), "--priority", str(policy["priority"]),
                    str(policy["name"]), str(policy["pattern"]),
                    json.dumps(policy["definition"]))
        yield rabbits
    finally:
        rabbits.close()


@pytest.fixture(scope="module")
async def rig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[Rig]:
    urls = ",".join(node.url for node in cluster.nodes)
    async with contextlib.AsyncExitStack() as stack:
        databases = {name: await stack.enter_async_context(_fresh_pg_database())
                     for name in ("ingest", "signer", "audit")}
        system = System(urls, Path(tmp_path_factory.mktemp("services")),
                        database_urls=databases, replicas=dict.fromkeys(SERVICES, 2),
                        env={"DIHYA_DELIVERER_RETRY_SCHEDULE": SCHEDULE,
                             "DIHYA_AUDIT_OUTCOME_TIMEOUT": "60",
                             "DIHYA_DELIVERER_TIMEOUT": "5", "DIHYA_SHUTDOWN_GRACE": "5"})
        receiver = Receiver()
        await receiver.start()
        stack.push_async_callback(receiver.stop)
        try:
            for name in SERVICES:  # one replica after the other: the simultaneous start
                for replica in range(system.count(name)):  # is a scenario of its own
                    system.spawn(name, replica)
                    await system.wait_ready(name, timeout=120)
            http = await stack.enter_async_context(aiohttp.ClientSession())
            yield Rig(cluster, system, receiver, http, BOOKS)
        finally:
            await system.stop(timeout=20)
            if os.environ.get("DIHYA_CLUSTER_KEEP_LOGS"):
                print(f"service logs kept in {system.workdir}")
