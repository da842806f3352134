"""The fast path: every place Dihya reaches past aio-pika's, aiormq's or asyncio's public API.

Nothing else in the code base touches a library's internals. The whole module is used only on
the *fast path* (``DIHYA_AMQP_FAST_PATH``, on by default) and only with the library versions it
was tested with (:data:`shared.broker.paths.TESTED`); otherwise :mod:`shared.broker.adapter`
takes the *plain path* — ``aio_pika.connect_robust``, ``Queue.consume``, no class patched —
and does not even import this module. Same messages, same guarantees either way; the plain
path costs CPU and loses what is marked *plain: none* below.

Written against aio-pika 10.2.1, aiormq 7.2.4, pamqp 4.0.1 (locks/runtime.txt) and CPython
3.11's asyncio; tested there and at the declared floors, aio-pika 10.0 and aiormq 7.1
(``bin/floors``).

The bypasses, what each buys, and its measured gain:

1. :class:`CorkedWriter` — an ``asyncio.StreamWriter`` subclass overriding ``write``,
   ``drain``, ``close`` (asyncio's writer is not meant to be subclassed). Every frame written
   in one loop iteration leaves in one ``send``; on a busy connection sends are at least
   :data:`MIN_SEND_INTERVAL` apart. Measured: the largest single item of the signer's profile
   (one ``send`` per publish and per ack) gone; CPU per delivery of all Dihya processes and
   RabbitMQ 4.2 → 3.7-4.0 ms at 380 deliveries/s, p50 latency unchanged (development machine).
2. :class:`_NodeTransportFactory` — a subclass of aiormq's ``TransportFactory`` (public in
   aiormq ≥ 6.9.1, but aio-pika has no way to pass one): opens each (re)connection to the next
   node of ``DIHYA_AMQP_URL``'s list (:mod:`shared.nodes`) with TCP keepalive
   (:data:`KEEPALIVE`) and a :class:`CorkedWriter`. Buys node-list failover without a restart
   and a dead host noticed in ~25 s. Plain: the first node that answers at start, then that
   node only (aio-pika reconnects to its one URL); no keepalive.
3. :class:`_FastConnection` — ``aio_pika.RobustConnection`` with ``transport_factory`` written
   into its ``self.kwargs`` (the undocumented dict it passes to aiormq on every reconnection).
   The carrier of 1 and 2. Not measured separately: it has no gain of its own, and 1 and 2
   cannot be applied without it (their figures are its).
4. ``aiormq.Connection.FRAME_BUFFER_SIZE = 1024`` (:data:`WRITE_QUEUE_FRAMES`, aiormq's default
   10; class attribute, read by ``__init__``, no parameter): a burst of publishes is queued to
   the writer at once instead of one per loop iteration, so corking has something to cork.
   Measured alone (``python -m bench.fastpath --write-queue-frames 10 --rounds 7``: the fast
   path with 1024 frames and with aiormq's 10, alternating; 2-vCPU CI machine, load average
   2.2-4.1): client CPU 111 vs 109 µs per confirmed publish and 98 vs 79 µs per consumed
   message (medians; rounds spread up to ±30 %) — no client-CPU gain this bench can tell from noise.
   What it changes is how many frames one send carries under a burst; the effect of that on
   RabbitMQ's CPU was not measured separately.
5. ``aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER = 2`` (:data:`HEARTBEAT_GRACE_PERIODS`,
   aiormq's default 3): a frozen node is given up after 12 s instead of 18 s at a 5 s
   heartbeat, within the three heartbeats a frozen node may stall deliveries. Plain: 18 s.
   4 and 5 are process-wide: :func:`tune_aiormq` sets them when a fast connection is opened,
   :func:`untune_aiormq` puts aiormq's values back when a plain one is (tests run both).
6. :class:`_DirectQueue` / :class:`_DirectRobustQueue` — ``Queue.consume`` overridden with
   another callback type, and a ``RobustQueue`` built on it by multiple inheritance, installed
   per channel through ``channel.QUEUE_CLASS`` (:func:`consume_direct`): the consumer's
   callback gets aiormq's ``DeliveredMessage`` in aiormq's own task, with no aio-pika
   ``IncomingMessage`` built and no task started per message, while ``RobustQueue.restore``
   still restores the consumer after a reconnection. Measured: CPU of a consumed and acked
   message 165 → 108-121 µs (one process, 20,000 messages, development machine); a delivery
   is consumed three times on its way.

Measured together, client side (``python -m bench.fastpath``: 10,000 confirmed publishes and
10,000 consumed and acked messages per round, 3 rounds per path alternating, CPU time of the
one client process; 2-vCPU CI machine shared with other test runs, load average 9-15): fast
116-118 µs per publish and 118-119 µs per consumed message, plain 170-174 and 181-198 µs —
the fast path saves about a third of the client CPU per publish and two fifths per consumed
message. Whole system: ``bin/bench --quick`` vs ``bin/bench --quick --plain-path``
(docs/dependencies.md, "Fast path figures").
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from shared import nodes

log = structlog.get_logger("dihya.broker")

NODE_CONNECT_TIMEOUT = 3.0
"""Seconds the TCP connect to one node may take before the next node of the list is tried."""
HEARTBEAT_GRACE_PERIODS = 2
"""Heartbeat periods of silence after which aiormq gives a connection up (its default, 3,
waits (heartbeat + 1) x 3 = 18 s at a 5 s heartbeat; 2 makes it 12 s, within the three
heartbeats a frozen node may stall deliveries). RabbitMQ gives up a silent client after two
periods too."""
KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
"""TCP keepalive on every broker socket: a peer whose host vanished (no FIN, no RST) is noticed
by the kernel after ~25 s of silence even where the heartbeat is off. A frozen process's kernel
still answers keepalives: that case is the heartbeat's (see :mod:`shared.nodes`)."""
MIN_SEND_INTERVAL = 0.003
"""Seconds between two sends on a busy connection (see :class:`CorkedWriter`). Measured back
to back at 380 deliveries/s: CPU per delivery of all Dihya processes and RabbitMQ 4.0-4.2 →
3.7-4.0 ms (RabbitMQ's share falling most), p50 latency unchanged (13-19 ms); a flat 3 ms
delay on every send saved as much but added its wait to every hop of an idle system."""
WRITE_QUEUE_FRAMES = 1024
"""Frames aiormq may queue for its writer task (its default, 10, would let a burst of
publishes through one per loop iteration, whatever the corking). This adds no unbounded
buffer: every publish still awaits its confirm, and the prefetch bounds the handlers."""

_AIORMQ_DEFAULTS = {"FRAME_BUFFER_SIZE": aiormq.Connection.FRAME_BUFFER_SIZE,
                    "HEARTBEAT_GRACE_MULTIPLIER": aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER}
"""aiormq's own values, as imported (before :func:`tune_aiormq`)."""


async def connect(node_list: nodes.NodeList, *, client_properties: Mapping[str, Any],
                  reconnect_interval: float, timeout: float) -> AbstractRobustConnection:
    """A robust connection on the fast path (bypasses 1-5): corked writes, node-list
    failover on every (re)connection, aiormq tuned."""
    tune_aiormq()
    transport = _NodeTransportFactory(node_list.addresses,
                                      first=nodes.first_node(len(node_list.addresses)))
    # what aio_pika.connect_robust does, but for the transport, which aio-pika's keyword
    # arguments cannot carry (it copies them into the URL's query)
    connection = _FastConnection(node_list.url, transport=transport,
                                 reconnect_interval=reconnect_interval,
                                 client_properties=dict(client_properties))
    await connection.connect(timeout=timeout)
    return connection


def tune_aiormq() -> None:
    """Bypasses 4 and 5: aiormq reads both from its class when it creates a connection."""
    aiormq.Connection.FRAME_BUFFER_SIZE = WRITE_QUEUE_FRAMES
    aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER = HEARTBEAT_GRACE_PERIODS


def untune_aiormq() -> None:
    """Put aiormq's own values back (a plain connection opened after a fast one)."""
    for name, value in _AIORMQ_DEFAULTS.items():
        setattr(aiormq.Connection, name, value)


async def consume_direct(
    channel: AbstractChannel, queue: str,
    callback: Callable[[aiormq.abc.DeliveredMessage], Coroutine[Any, Any, None]],
) -> tuple[aio_pika.abc.AbstractQueue, str]:
    """Bypass 6: declare ``queue`` (passive) on ``channel`` as a :class:`_DirectRobustQueue`
    and consume it with ``callback`` taking aiormq's messages; the queue and consumer tag.

    ``channel`` must be used for this queue alone (its queue class is set for good).
    """
    # the channel builds its queues from this attribute: only this one is declared on it
    channel.QUEUE_CLASS = _DirectRobustQueue
    declared = await channel.declare_queue(queue, passive=True)
    assert isinstance(declared, _DirectRobustQueue)
    # RobustQueue.consume records the callback for its restore and passes it through
    tag = await declared.consume(callback)  # type: ignore[arg-type]  # aiormq's message type
    return declared, tag


class _DirectQueue(aio_pika.Queue):
    """``basic.consume`` with the callback handed straight to aiormq (bypass 6).

    aio-pika's ``Queue.consume`` wraps the callback so that it builds an ``IncomingMessage``
    and starts a task of its own; this one does neither — the callback gets aiormq's
    ``DeliveredMessage`` in the task aiormq already runs it in.
    """

    async def consume(  # type: ignore[override]  # takes aiormq's message, not aio-pika's
        self,
        callback: Callable[[aiormq.abc.DeliveredMessage], Coroutine[Any, Any, None]],
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        consumer_tag: str | None = None,
        timeout: float | None = None,
    ) -> str:
        channel = await self.channel.get_underlay_channel()
        result = await channel.basic_consume(
            queue=self.name, consumer_callback=callback, exclusive=exclusive, no_ack=no_ack,
            arguments=cast(Any, arguments), consumer_tag=consumer_tag, timeout=timeout,
        )
        if result.consumer_tag is None:  # pamqp's type allows it; the broker always names one
            raise RuntimeError("the broker named no consumer tag")
        return result.consumer_tag


class _DirectRobustQueue(aio_pika.RobustQueue, _DirectQueue):  # type: ignore[misc]
    """A robust queue (redeclared, and its consumer restored, after a reconnect: aio-pika's
    ``RobustQueue.restore``) whose consume is :class:`_DirectQueue`'s (bypass 6; mypy: the
    two bases' ``consume`` signatures differ on purpose)."""


class CorkedWriter(asyncio.StreamWriter):
    """A stream writer that sends everything written in one event-loop iteration at once.

    Why: aiormq writes every frame on its own — each publish, each ack — and every write is a
    ``send`` system call while the socket keeps up. Handlers that finish in the same iteration
    (a batch of confirms arriving, say) thus cost one call per message, the largest single
    item of the signer's profile. Corked, they leave as one ``send``, in the order written, at
    the end of the iteration. ``close`` sends what is pending first, so a closing frame is not
    lost; ``drain`` keeps the transport's flow control but does not send early.

    And while the connection is busy, sends are at least ``min_interval`` apart (Nagle's idea,
    by time): a write within that interval of the last send waits for its end, with whatever
    else is written meanwhile; a write after a quiet spell leaves at the end of its iteration.
    So an idle system adds no latency, and a loaded one sends (and RabbitMQ reads) fewer,
    fuller segments: see :data:`MIN_SEND_INTERVAL`.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: asyncio.BaseProtocol,
                 reader: asyncio.StreamReader | None, loop: asyncio.AbstractEventLoop,
                 *, min_interval: float = 0.0) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._pending: list[bytes] = []
        self._event_loop = loop
        self._min_interval = min_interval
        self._last_send = -math.inf

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            due = self._last_send + self._min_interval
            if due > self._event_loop.time():
                self._event_loop.call_at(due, self.flush)
            else:
                self._event_loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Send what was written so far (called at the end of the iteration)."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            super().write(data)
            self._last_send = self._event_loop.time()

    async def drain(self) -> None:
        # No flush here: aiormq drains after every ack, and sending then would send each ack on
        # its own. What is pending leaves at the end of this iteration (``close`` sends it at
        # once); the transport's own flow control still applies.
        await super().drain()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class _NodeTransportFactory(TransportFactory):
    """aiormq's TCP/TLS transport (as ``asyncio.open_connection``) with a :class:`CorkedWriter`,
    to one node of the list: aiormq calls :meth:`create` for every (re)connection, and each call
    tries the nodes in :func:`shared.nodes.failover_order` until one accepts. aiormq still
    reads credentials, virtual host and options from its URL (the list's first)."""

    def __init__(self, addresses: Sequence[tuple[str, int]] = (), *, first: int = 0) -> None:
        self._addresses = tuple(addresses)
        self._last = first - 1  # the node tried before the first one

    async def create(self, url: URL, **kwargs: Any
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=kwargs.pop("limit", 2**16), loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        addresses = self._addresses or ((url.host or "localhost", url.port or 5672),)
        failure: Exception | None = None
        for index in nodes.failover_order(len(addresses), self._last):
            host, port = addresses[index]
            self._last = index  # the next attempt starts after it, whatever happens here
            try:
                async with asyncio.timeout(NODE_CONNECT_TIMEOUT):
                    transport, _ = await loop.create_connection(
                        lambda: protocol, host, port, ssl=ssl,
                        server_hostname=host if ssl else None, **kwargs)
            except (OSError, TimeoutError) as exc:
                log.warning("broker_node_unreachable", node=f"{host}:{port}",
                            error=type(exc).__name__)
                failure = exc
                continue
            _keepalive(transport.get_extra_info("socket"))
            log.info("broker_node_connected", node=f"{host}:{port}")
            return reader, CorkedWriter(transport, protocol, reader, loop,
                                        min_interval=MIN_SEND_INTERVAL)
        raise AMQPConnectionError(f"no broker node answered: {failure!r}")


def _keepalive(sock: socket.socket | None) -> None:
    """Turn TCP keepalive on with :data:`KEEPALIVE`'s timings (where the OS has them)."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _FastConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, whose every (re)connection goes through
    ``transport_factory`` (bypass 3: passed through to aiormq on every reconnection)."""

    dihya_fast_path = True
    """What :class:`shared.broker.consumer.Consumer` asks to consume the fast way."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, *,
                 transport: _NodeTransportFactory | None = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self.kwargs["transport_factory"] = transport or _NodeTransportFactory()
