"""The broker's node list: parse ``DIHYA_AMQP_URL`` and decide the order nodes are tried in.

Pure decisions, no I/O: :mod:`shared.broker`'s transport uses them on every (re)connection.

``DIHYA_AMQP_URL`` is one AMQP URL or a comma-separated list of them, one per node of a RabbitMQ
cluster (``amqp://u:p@rmq-1:5672/dihya,amqp://u:p@rmq-2:5672/dihya,…``). The nodes of a cluster
share users and virtual hosts, so every URL must name the same scheme, credentials, virtual host
and options; only host and port differ. The order: a process starts at a random node of the list
(so replicas spread over the cluster instead of all landing on the first node), and each later
connection attempt — after a loss or a failed attempt — goes to the next node of the list, round
robin: a dead or frozen node is left at once, and it is tried again only after every other one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from yarl import URL

DEFAULT_HEARTBEAT = 5
"""Seconds: the AMQP heartbeat each connection asks for unless its URL names one. RabbitMQ's
docs advise against values below 5 s (false positives on a busy host); with aiormq declaring
the peer dead after two silent periods (see :mod:`shared.broker`), a frozen node is left after
12-14 s instead of the ~3 min the server's 60 s default would take."""


@dataclass(frozen=True)
class NodeList:
    """What a connection needs: one URL (credentials, virtual host, options) and every node."""

    url: URL
    """The first node's URL, with the heartbeat set: aiormq reads credentials, virtual host and
    options from it; the host and port it names are the first node's."""
    addresses: tuple[tuple[str, int], ...]
    """(host, port) of each node, in the order given."""


def parse(value: str, *, heartbeat: int = DEFAULT_HEARTBEAT) -> NodeList:
    """Parse one AMQP URL or a comma-separated list of them (``ValueError`` if malformed or if
    the URLs differ in anything but host and port). ``heartbeat`` is added unless the URLs name
    their own (``?heartbeat=N``)."""
    urls = [URL(part.strip()) for part in value.split(",")]
    if not value.strip() or any(not str(u) for u in urls):
        raise ValueError("an empty AMQP URL in the node list")
    first = urls[0]
    for url in urls:
        if url.scheme not in ("amqp", "amqps") or not url.host:
            raise ValueError("every URL of the node list needs an amqp:// or amqps:// scheme "
                             "and a host")
        if (url.scheme, url.user, url.password, url.path, url.query) != (
                first.scheme, first.user, first.password, first.path, first.query):
            raise ValueError("the URLs of a node list may differ only in host and port "
                             "(the nodes of a cluster share users, virtual hosts and options)")
    default_port = 5671 if first.scheme == "amqps" else 5672
    addresses = tuple((u.host or "", u.port or default_port) for u in urls)
    if "heartbeat" not in first.query:
        first = first.update_query(heartbeat=str(heartbeat))
    return NodeList(first, addresses)


def first_node(count: int, rng: random.Random | None = None) -> int:
    """Where a process starts in a list of ``count`` nodes: at random, so replicas spread."""
    return (rng or random).randrange(count)


def failover_order(count: int, after: int) -> list[int]:
    """The nodes to try, in order, for the next connection when the last one was ``after``:
    the following node first, round robin, ``after`` itself last."""
    return [(after + step) % count for step in range(1, count + 1)]
