"""Connect to RabbitMQ and declare the topology: the adapter every service starts with.

:func:`connect` takes the fast path (:mod:`shared.broker.fastpath`) when the setting asks for
it and the installed aio-pika and aiormq were tested with it (:mod:`shared.broker.paths`),
the plain path (``aio_pika.connect_robust``) otherwise. Either way the connection is robust:
it reconnects, and restores its channels, queues and consumers, by itself.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPConnectionError

from shared import nodes, topology
from shared.broker import paths
from shared.settings import AmqpPathSettings

log = structlog.get_logger("dihya.broker")

CONNECT_TIMEOUT = 10.0
"""Seconds one connection attempt may take (TCP, then the AMQP handshake)."""
RECONNECT_INTERVAL = 1.0
"""Seconds aio-pika waits after a failed reconnection attempt (its default is 5): on the fast
path every attempt already tried each node of the list once."""

_tuned: set[str] = set()
"""Non-empty once a fast connection has tuned aiormq's class attributes in this process."""


async def connect(url: str, *, service: str, heartbeat: int = nodes.DEFAULT_HEARTBEAT,
                  fast_path: bool | None = None) -> AbstractRobustConnection:
    """Open a robust connection to one of the nodes ``url`` lists (see :mod:`shared.nodes`).

    ``fast_path``: the service's ``DIHYA_AMQP_FAST_PATH`` (``None``: read it from the
    environment). It is taken only with library versions it was tested with; else a warning
    (``amqp_fast_path_untested``) and the plain path.
    """
    wanted = AmqpPathSettings().amqp_fast_path if fast_path is None else fast_path
    choice = paths.choose(wanted, installed_versions())
    if choice.untested:
        log.warning("amqp_fast_path_untested", untested=list(choice.untested),
                    tested={name: str(bounds) for name, bounds in paths.TESTED.items()},
                    path="plain")
    node_list = nodes.parse(url, heartbeat=heartbeat)
    properties = {"connection_name": f"dihya-{service}"}
    if choice.fast:
        from shared.broker import fastpath  # imported only where its versions were tested

        _tuned.add("aiormq")
        connection = await fastpath.connect(
            node_list, client_properties=properties, reconnect_interval=RECONNECT_INTERVAL,
            timeout=CONNECT_TIMEOUT)
    else:
        connection = await _connect_plain(node_list, properties)
    log.info("amqp_path", path="fast" if choice.fast else "plain", reason=choice.reason)
    connection.reconnect_callbacks.add(_restored)
    return connection


def installed_versions() -> dict[str, str | None]:
    """The installed version of each distribution the fast path depends on."""
    found: dict[str, str | None] = {}
    for name in paths.TESTED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


async def _connect_plain(node_list: nodes.NodeList,
                         properties: dict[str, Any]) -> AbstractRobustConnection:
    """``aio_pika.connect_robust`` to the first node of the list that answers, starting at a
    random one. aio-pika then reconnects to that node only: failing over to another node of
    a cluster needs the fast path's transport (see :mod:`shared.broker.fastpath`)."""
    if _tuned:  # this process opened a fast connection before (tests run both paths)
        from shared.broker import fastpath

        fastpath.untune_aiormq()
        _tuned.clear()
    addresses = node_list.addresses
    failure: Exception | None = None
    for index in nodes.failover_order(len(addresses), nodes.first_node(len(addresses)) - 1):
        host, port = addresses[index]
        try:
            return await aio_pika.connect_robust(
                node_list.url.with_host(host).with_port(port), timeout=CONNECT_TIMEOUT,
                reconnect_interval=RECONNECT_INTERVAL, client_properties=properties)
        except (AMQPConnectionError, OSError, TimeoutError) as exc:
            log.warning("broker_node_unreachable", node=f"{host}:{port}",
                        error=type(exc).__name__)
            failure = exc
    raise AMQPConnectionError(f"no broker node answered: {failure!r}")


def _restored(connection: Any) -> None:
    """Log a reconnection once every channel and consumer is back (on the fast path, the node
    was logged by the transport): the time between the two is the broker-side restore."""
    log.info("broker_reconnected")


async def declare(channel: AbstractChannel, retry_delays_ms: tuple[int, ...] = (),
                  defer_delays_ms: tuple[int, ...] = ()) -> None:
    """Declare the whole topology (idempotent): see :mod:`shared.topology`."""
    for ex in topology.EXCHANGES:
        await channel.declare_exchange(ex.name, ex.type, durable=True)
    for q in topology.queues(retry_delays_ms, defer_delays_ms):
        await declare_queue(channel, q)


async def declare_queue(channel: AbstractChannel, q: topology.Queue) -> None:
    """Declare one queue of the topology with its arguments, and bind it."""
    queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
    for exchange, routing_key in q.bindings:
        await queue.bind(exchange, routing_key)


async def declare_topology(connection: AbstractRobustConnection,
                           retry_delays_ms: tuple[int, ...] = (),
                           defer_delays_ms: tuple[int, ...] = ()) -> None:
    """What every service does at start: :func:`declare` on a channel of its own."""
    async with connection.channel() as channel:
        await declare(channel, retry_delays_ms, defer_delays_ms)
