"""RabbitMQ adapter shared by every service: connect, declare, publish with confirms, consume.

The rules it encodes (field notes; RabbitMQ reliability guide):

* every message is persistent and published ``mandatory`` with publisher confirms awaited, an
  unroutable message raises (``on_return_raises``) and every publish has a timeout, so a
  publish never hangs across a reconnect;
* every message gets a fresh ``message_id`` (aiormq matches returns by it); the business id
  travels in the body or a header;
* a consumed message is acked only after its handler returned, i.e. after everything it
  published was confirmed; a handler that raises gets the message requeued, and the queue's
  delivery limit parks a message that keeps failing;
* after a reconnect, a delivery tag of the old channel is void: acking it fails, and the broker
  redelivers the message instead — that is the at-least-once path, never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from prometheus_client import Counter, Gauge
from yarl import URL

from shared import nodes, outages, telemetry, topology
from shared.batching import Batcher
from shared.contracts import MAX_FACTS_PER_BATCH, AuditFact, AuditFactBatch, Contract, encode

log = structlog.get_logger("dihya.broker")

IN_FLIGHT = Gauge("dihya_consumer_in_flight_messages",
                  "Messages a consumer holds unacked (at most its prefetch): sustained at the "
                  "prefetch means the service is the bottleneck; queue depth itself comes "
                  "from RabbitMQ's own Prometheus endpoint.", ["queue"])
PROCESSED = Counter("dihya_consumer_messages_total",
                    "Messages handled, by result (held: failed for want of a dependency and "
                    "held until it is back, not requeued).", ["queue", "result"])
PAUSED = Gauge("dihya_consumer_paused",
               "1 while a consumer has stopped taking messages because a dependency (its "
               "database, its broker path) is unavailable.", ["queue"])


class Delivery:
    """A consumed message as handlers see it: its body, the properties they read, ack and nack.

    Why not aio-pika's ``IncomingMessage``: aio-pika builds one (copying every property) and
    runs the callback in a second task for each message; handing aiormq's message to the
    consumer in aiormq's own task instead took the CPU of a consumed and acked message from
    165 to 108-121 µs (one process, 20,000 messages, on the development machine), and a
    delivery is consumed three times on its way.
    """

    __slots__ = ("_channel", "_tag", "body", "exchange", "headers", "message_id", "redelivered",
                 "routing_key", "type")

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        properties = message.header.properties
        self.body: bytes = message.body
        self.headers: dict[str, Any] = properties.headers or {}
        self.message_id: str | None = properties.message_id
        self.type: str | None = properties.message_type
        # where the publisher sent it ("" is the default exchange): ingest holds an event's
        # routing key to its type (services/ingest/handlers.py, route_refusal)
        self.exchange: str | None = message.exchange
        self.routing_key: str | None = message.routing_key
        self.redelivered: bool = bool(message.redelivered)
        self._channel = message.channel
        self._tag = message.delivery_tag

    @property
    def settled_elsewhere(self) -> bool:
        """True once the channel it came on is closed: the broker takes it back (and
        redelivers it), so acking or nacking it here is no longer possible."""
        return bool(self._channel.is_closed)

    async def ack(self) -> None:
        """Ack on the channel it came on; raises if that channel is gone (the tag is void)."""
        await self._settle(ack=True)

    async def nack(self, requeue: bool = True) -> None:
        """Hand it back (or drop it, ``requeue=False``); raises if its channel is gone."""
        await self._settle(ack=False, requeue=requeue)

    async def _settle(self, *, ack: bool, requeue: bool = True) -> None:
        if self._channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the channel it came on is closed")
        if self._tag is None:  # only a basic.get of an empty queue has none
            return
        # wait=False: queued for the connection's writer, not awaited until written — nothing
        # follows an ack that needs it on the wire, and an ack lost with its connection means
        # a redelivery (at least once), as it would while awaited. 8 µs of CPU a message less.
        if ack:
            await self._channel.basic_ack(self._tag, wait=False)
        else:
            await self._channel.basic_nack(self._tag, requeue=requeue, wait=False)


Handler = Callable[[Delivery], Awaitable[None]]


class _DirectConsume(aio_pika.Queue):
    """``basic.consume`` with the callback handed straight to aiormq (see :class:`Delivery`).

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


class _DirectRobustQueue(aio_pika.RobustQueue, _DirectConsume):  # type: ignore[misc]
    """A robust queue (redeclared, and its consumer restored, after a reconnect: aio-pika's
    ``RobustQueue.restore``) whose consume is :class:`_DirectConsume`'s."""


CONNECT_TIMEOUT = 10.0
"""Seconds one connection attempt may take (TCP, then the AMQP handshake)."""
NODE_CONNECT_TIMEOUT = 3.0
"""Seconds the TCP connect to one node may take before the next node of the list is tried."""
RECONNECT_INTERVAL = 1.0
"""Seconds aio-pika waits after a failed reconnection attempt (its default is 5): every
attempt already tried each node of the list once."""
HEARTBEAT_GRACE_PERIODS = 2
"""Heartbeat periods of silence after which aiormq gives a connection up (its default, 3,
waits (heartbeat + 1) x 3 = 18 s at a 5 s heartbeat; 2 makes it 12 s, within the three
heartbeats a frozen node may stall deliveries). RabbitMQ gives up a silent client after two
periods too."""
KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
"""TCP keepalive on every broker socket: a peer whose host vanished (no FIN, no RST) is noticed
by the kernel after ~25 s of silence even where the heartbeat is off. A frozen process's kernel
still answers keepalives: that case is the heartbeat's (see :mod:`shared.nodes`)."""


async def connect(url: str, *, service: str,
                  heartbeat: int = nodes.DEFAULT_HEARTBEAT) -> AbstractRobustConnection:
    """Open a robust connection (reconnects and restores consumers by itself) to one of the
    nodes ``url`` lists (see :mod:`shared.nodes`: a random one first, then round robin)."""
    node_list = nodes.parse(url, heartbeat=heartbeat)
    transport = _CorkedTransportFactory(node_list.addresses,
                                        first=nodes.first_node(len(node_list.addresses)))
    # what aio_pika.connect_robust does, but for the transport, which aio-pika's keyword
    # arguments cannot carry (it copies them into the URL's query)
    connection = _CorkedConnection(
        node_list.url, transport=transport, reconnect_interval=RECONNECT_INTERVAL,
        client_properties={"connection_name": f"dihya-{service}"})
    await connection.connect(timeout=CONNECT_TIMEOUT)
    connection.reconnect_callbacks.add(_restored)
    return connection


def _restored(connection: Any) -> None:
    """Log a reconnection once every channel and consumer is back (the node was logged by the
    transport): the time between the two is the broker-side restore."""
    log.info("broker_reconnected")


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


class _CorkedTransportFactory(TransportFactory):
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


MIN_SEND_INTERVAL = 0.003
"""Seconds between two sends on a busy connection (see :class:`CorkedWriter`). Measured back
to back at 380 deliveries/s: CPU per delivery of all Dihya processes and RabbitMQ 4.0-4.2 →
3.7-4.0 ms (RabbitMQ's share falling most), p50 latency unchanged (13-19 ms); a flat 3 ms
delay on every send saved as much but added its wait to every hop of an idle system."""


WRITE_QUEUE_FRAMES = 1024
"""Frames aiormq may queue for its writer task (its default, 10, would let a burst of
publishes through one per loop iteration, whatever the corking). This adds no unbounded
buffer: every publish still awaits its confirm, and the prefetch bounds the handlers."""


class _CorkedConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, whose every (re)connection uses corked writes to a node
    of the list (``transport_factory``, passed through to aiormq on every reconnection)."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, *,
                 transport: _CorkedTransportFactory | None = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self.kwargs["transport_factory"] = transport or _CorkedTransportFactory()


# aiormq reads the size from its class when it creates a connection; there is no parameter
aiormq.Connection.FRAME_BUFFER_SIZE = WRITE_QUEUE_FRAMES
# idem for the heartbeat's grace (see HEARTBEAT_GRACE_PERIODS)
aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER = HEARTBEAT_GRACE_PERIODS


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


RESTORE_POLL = 0.05
"""Seconds between looks at a publisher channel that is closed but not yet being restored."""


class Publisher:
    """Publishes persistent messages on one confirming channel, awaiting each confirm.

    Many publishes may be in flight at once (``asyncio.gather``): confirms are pipelined on the
    channel, which is what makes batching cheap.
    """

    def __init__(self, channel: AbstractChannel, *, timeout: float = 10.0) -> None:
        self._channel = channel
        self._timeout = timeout
        self._closed = False
        self._open: aiormq.Channel | None = None
        """The underlay channel the last publish went out on, while it stays open."""

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, *, timeout: float = 10.0
    ) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, timeout=timeout)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        type: str | None = None,
        expiration: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm; raise if unroutable, nacked or late.

        Straight through aiormq's ``basic_publish`` rather than aio-pika's ``Exchange.publish``
        for one reason: ``wait=False``. With the default, the channel stays locked until the
        frame has been written and drained, so publishes from concurrent handlers leave one
        per loop iteration, each in a ``send`` of its own; without it they queue together and
        the :class:`CorkedWriter` sends them at once. The confirm is awaited all the same.

        Across a reconnection the publish waits (within the same ``timeout``) for this
        channel to be restored, rather than failing at once: the robust connection reports
        itself connected, then restores its channels one by one in no fixed order, so the
        consumers' channels may deliver again before this one is back — and a handler that
        fails in that window has its message redelivered at once, again and again, until the
        queue's delivery limit parks it (see :meth:`_underlay`).
        """
        carrier = dict(headers or {})
        telemetry.inject(carrier)
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_id=uuid.uuid4().hex,
            headers=carrier,
            message_type=type,
            expiration=None if expiration is None else str(int(expiration * 1000)),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout  # a reconnection included
        while True:
            channel = self._open
            if channel is None or channel.is_closed:  # first use, or since a reconnection
                channel = self._open = await self._underlay(deadline)
            try:
                # aiormq's own timeout (what is left of ours): the cancellation stays inside
                # aiormq, which takes back a publish it had not yet queued
                await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                            properties=properties, mandatory=True, wait=False,
                                            timeout=max(deadline - loop.time(), 0.001))
                return
            except aiormq.exceptions.ChannelInvalidStateError:
                # Raised only before the frame was queued (the channel was found closed):
                # the broker never saw this publish, so it goes again on the restored channel.
                # A publish lost after it was written fails with the connection's error
                # instead (no retry: the caller's message is redelivered, at least once).
                if self._closed or loop.time() >= deadline:
                    raise
                await asyncio.sleep(RESTORE_POLL)

    async def _underlay(self, deadline: float) -> aiormq.Channel:
        """The open aiormq channel under the robust one, once restored (or ``TimeoutError``).

        :meth:`publish` keeps it while it is open: every reconnection brings a new one (and
        a publish that finds the old one closed before its frame is queued goes again on
        the new one, see :meth:`publish`). ``ready()`` waits for the connection
        *and* this channel's restore; ``get_underlay_channel()`` alone waits for the connection
        only, and returns the old, closed channel until the restore reaches this one. Right
        after a drop, before aio-pika has noticed it, the channel is closed but not yet marked
        for restore: poll until it is.
        """
        async with asyncio.timeout_at(deadline):
            while True:
                if self._closed:
                    raise aiormq.exceptions.ChannelInvalidStateError("the publisher is closed")
                if isinstance(self._channel, AbstractRobustChannel):
                    await self._channel.ready()
                with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                    # the concrete channel: ``wait`` is not on aiormq's abstract one
                    channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
                    if not channel.is_closed:
                        return channel
                await asyncio.sleep(RESTORE_POLL)

    async def send(
        self,
        exchange: str,
        routing_key: str,
        model: Contract,
        *,
        headers: Mapping[str, Any] | None = None,
        expiration: float | None = None,
    ) -> None:
        """Publish a contract model (``type`` property = its version tag)."""
        tag = getattr(model, "type", None) or getattr(model, "TYPE", None)
        await self.publish(
            exchange, routing_key, encode(model), headers=headers, type=tag, expiration=expiration
        )

    async def park(
        self, queue: str, message: Delivery, *, reason: str, error: str
    ) -> None:
        """Move ``message`` to ``queue``'s parking queue with why, before the caller acks it."""
        await self.park_body(queue, message.body, reason=reason, error=error,
                             headers=message.headers, type=message.type)

    async def park_body(
        self, queue: str, body: bytes, *, reason: str, error: str,
        headers: Mapping[str, Any] | None = None, type: str | None = None,
    ) -> None:
        """Park ``body`` as if a message of ``queue`` (one item of a batch, say) with why."""
        carrier = dict(headers or {})
        carrier.update(
            {
                topology.REASON_HEADER: reason,
                topology.ERROR_HEADER: error[:2000],
                topology.SOURCE_HEADER: queue,
            }
        )
        await self.publish(topology.DEAD_EXCHANGE, queue, body, headers=carrier, type=type)

    async def close(self) -> None:
        self._closed = True
        await self._channel.close()


async def confirm_all(publishes: Iterable[Awaitable[None]]) -> None:
    """Await every publish (confirms pipelined), then raise the first failure, if any.

    ``gather(return_exceptions=True)`` lets every publish settle first, so no publish is left
    running unobserved when the handler gives the message back.
    """
    results = await asyncio.gather(*publishes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


FACT_LINGER = 0.1
"""Seconds a batch of audit facts waits for more facts of its kind (see FactPublisher): only
the producing message's ack waits, so a longer linger costs prefetch slots, not latency."""


class FactPublisher:
    """Publishes audit facts in batches: :meth:`send` returns once the fact is confirmed.

    One :class:`shared.batching.Batcher` per fact kind (the routing key): the facts of a kind
    that arrive within ``linger`` seconds of the first, or while a batch is in flight, leave
    together as one :class:`AuditFactBatch`. The caller acks its own message only after
    :meth:`send` returned, as with :meth:`Publisher.send` — at-least-once is unchanged, the
    broker work per fact is not.

    Why linger: without load to group them, every fact would be a message of its own, consumed
    by audit (and ``delivery.attempted`` by ingest's health queue too). The wait delays only
    the *ack* of the message that produced the fact — its successors (jobs, the POST) have
    already left — so it costs no delivery latency, only a few more messages in flight.
    """

    def __init__(self, publisher: Publisher, *, size: int = MAX_FACTS_PER_BATCH,
                 linger: float = FACT_LINGER) -> None:
        self._publisher = publisher
        self._size = min(size, MAX_FACTS_PER_BATCH)
        self._linger = linger
        self._kinds: dict[str, Batcher[AuditFact, None]] = {}
        self._closed = False

    async def send(self, fact: AuditFact) -> None:
        batcher = self._kinds.get(fact.kind)
        if batcher is None:
            if self._closed:
                raise RuntimeError("the fact publisher is closed")
            batcher = Batcher(functools.partial(self._publish, fact.kind), size=self._size,
                              wait=self._linger, name=f"{fact.kind} facts")
            batcher.start()
            self._kinds[fact.kind] = batcher
        await batcher.submit(fact)

    async def send_until_confirmed(self, fact: AuditFact) -> None:
        """:meth:`send`, again and again (same fact, same id) while it fails for want of the
        broker (:func:`shared.outages.is_infrastructure`), backing off as a paused consumer
        does; any other failure is raised.

        For a fact about something done outside, that cannot be taken back — a POST: the
        message that led to it may be redelivered and do it again (a record of its own), but
        this one must be recorded too, even when its own message's ack is lost with the
        connection. Audit keeps one record if the fact arrives twice. Cancellation (the
        service stopping) ends the attempts.
        """
        delay = OUTAGE_FIRST
        while True:
            try:
                await self.send(fact)
                return
            except Exception as exc:
                if not outages.is_infrastructure(exc):
                    raise
                log.warning("fact_publish_retry", kind=fact.kind, fact_id=fact.id,
                            error=outages.describe(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_MAX)

    async def send_after(self, first: Awaitable[None], fact: AuditFact) -> None:
        """Publish ``fact`` on its own once ``first`` is confirmed — for a fact the audit log
        must show after another that travels in a lingering batch (a giving up after its
        attempt). Audit orders an event's facts after its acceptance by itself."""
        await first
        await self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)

    async def _publish(self, kind: str, facts: Sequence[AuditFact]) -> None:
        await self._publisher.send(topology.AUDIT_EXCHANGE, kind,
                                   AuditFactBatch(facts=list(facts)))

    async def close(self, grace: float = 10.0) -> None:
        """Publish what is pending (within ``grace``), then refuse new facts."""
        self._closed = True
        await asyncio.gather(*(b.stop(grace) for b in self._kinds.values()))


REQUEUE_FIRST = 0.05
REQUEUE_MAX = 2.0
"""Seconds a failed message is held before it is requeued: doubling from the first with each
delivery of the message, up to the max (see :func:`requeue_delay`)."""


def requeue_delay(deliveries: int) -> float:
    """How long to hold a message whose handler failed, before requeueing it, given how many
    times it was delivered before (the quorum queue's ``x-delivery-count``).

    Why not at once: the broker redelivers a requeued message at once, and the queue's delivery
    limit (``topology.DELIVERY_LIMIT``, 10) parks it after that many failures — a dependency
    failing fast for a second (a database restart) would park a prefetch's worth of healthy
    messages. Held this way, the limit is reached after about 11 s of failures, while a real
    poison message is still parked soon and never blocks the queue.
    """
    return float(min(REQUEUE_FIRST * 2 ** min(max(deliveries, 0), 32), REQUEUE_MAX))


OUTAGE_FIRST = 0.5
OUTAGE_MAX = 5.0
"""Seconds between looks at a dependency while it is down: doubling from the first, up to the
max (so a consumer notices within ~5 s that its database or broker path is back)."""

PROBE_TIMEOUT = 5.0
"""Seconds a dependency probe may take before it counts as failed (a frozen database host
answers nothing at all)."""

SUSPECT_AFTER = 10
"""Releases after which a message that still fails with an infrastructure error although its
dependencies answer their probes counts as failing on its own (requeued with backoff, parked
by the delivery limit): an error misread as an outage never holds a poison message, and its
paused queue, for ever. With the probe's backoff that is a minute or more of failures."""

Probe = Callable[[], Awaitable[bool]]
"""Says whether what a consumer's handler depends on answers (its database, its broker
path); an exception counts as no."""


class Consumer:
    """Consumes one queue with bounded concurrency; acks after the handler returns.

    ``handler`` does the work and publishes what follows (awaiting confirms) before it returns.
    What happens when it raises depends on why (``is_infrastructure``, by default
    :func:`shared.outages.is_infrastructure`):

    * the message's own failure (bad content, a bug): the message is requeued after a delay
      (``backoff``, see :func:`requeue_delay`); the queue's ``x-delivery-limit`` then parks a
      message that fails again and again, so one poison message never blocks the queue;
    * a dependency's failure (the database or the broker path unavailable): an *outage*. The
      message is held, unsettled; so is every other that fails so, until the prefetch is all
      held and the broker sends no more: the consumer takes no new messages. It reports not
      :attr:`ready` and probes the dependencies with backoff; once they answer, the held
      messages are handled again in place. Nothing is requeued, so the outage does not count
      towards any message's delivery limit (RabbitMQ counts every requeue, channel close and
      connection loss; a held message costs nothing — see docs/operations.md, "Dependency
      outages"). Why not ``basic.cancel``: measured on RabbitMQ 3.10.8, a delivery racing
      the cancel came back with one more count. A message held past the broker's consumer
      timeout (30 min by default) has its channel closed by the broker and is redelivered:
      one count per timeout.

    The dependencies answer when the broker connection is up and ``probe`` (if given: a
    service whose handlers use a database passes one that pings it) says yes.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 200,
        backoff: Callable[[int], float] = requeue_delay,
        is_infrastructure: Callable[[BaseException], bool] = outages.is_infrastructure,
        probe: Probe | None = None,
    ) -> None:
        self._connection = connection
        self._backoff = backoff
        self._queue_name = queue
        self._handler = handler
        self._prefetch = prefetch
        self._is_infrastructure = is_infrastructure
        self._probe = probe
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # the metric children, looked up once: ``labels()`` per message shows in profiles
        self._in_flight = IN_FLIGHT.labels(queue)
        self._acked = PROCESSED.labels(queue, "acked")
        self._requeued = PROCESSED.labels(queue, "requeued")
        self._held = PROCESSED.labels(queue, "held")
        self._paused = PAUSED.labels(queue)
        self._idle = asyncio.Event()
        self._idle.set()
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def ready(self) -> bool:
        """False while this consumer holds messages for an unavailable dependency (for the
        service's ``/readyz``)."""
        return self._healthy.is_set()

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        # This channel's queue consumes through aiormq directly (_DirectRobustQueue): the
        # channel builds its queues from this attribute, and no other queue is declared on it.
        self._channel.QUEUE_CLASS = _DirectRobustQueue
        await self._channel.set_qos(prefetch_count=self._prefetch)
        # a (passive) declare, not get_queue(ensure=False): only a declared queue is restored,
        # with its consumer, when the robust connection comes back after a broker outage
        self._queue = await self._channel.declare_queue(self._queue_name, passive=True)
        assert isinstance(self._queue, _DirectRobustQueue)
        await self._consume()

    async def _consume(self) -> None:
        assert self._queue is not None
        # RobustQueue.consume records the callback for its restore and passes it through
        self._tag = await self._queue.consume(self._on_delivered)  # type: ignore[arg-type]

    async def _on_delivered(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        message = Delivery(delivered)
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        self._idle.clear()
        self._in_flight.inc()
        try:
            await self._process(message)
        finally:
            self._in_flight.dec()
            self._inflight.discard(task)
            if not self._inflight:
                self._idle.set()

    async def _process(self, message: Delivery) -> None:
        released = 0  # times this message was let go again after its dependency came back
        while True:
            try:
                with telemetry.consuming(self._queue_name, message.headers):
                    await self._handler(message)
            except asyncio.CancelledError:
                await _settle(message.nack(requeue=True))
                raise
            except Exception as exc:
                if self._is_infrastructure(exc) and released < SUSPECT_AFTER:
                    self._held.inc()
                    self._outage(exc)
                    await self._healthy.wait()
                    if message.settled_elsewhere:  # its channel is gone: the broker redelivers
                        return
                    released += 1
                    message.redelivered = True  # handled again: for the handler, a redelivery
                    continue
                await self._requeue_later(message, exc)
            else:
                self._acked.inc()
                await _settle(message.ack())
            return

    async def _requeue_later(self, message: Delivery, exc: Exception) -> None:
        log.error("handler_failed", queue=self._queue_name, redelivered=message.redelivered,
                  exc_info=exc)
        self._requeued.inc()
        count = (message.headers or {}).get("x-delivery-count", 0)
        try:
            await asyncio.sleep(self._backoff(count if isinstance(count, int) else 0))
        finally:  # cancelled (stopping) or not, the message goes back
            await _settle(message.nack(requeue=True))

    def _outage(self, exc: Exception) -> None:
        """A handler met an unavailable dependency: hold (from now on) until it answers."""
        if not self._healthy.is_set():
            return
        self._healthy.clear()
        self._paused.set(1)
        log.warning("dependency_outage", queue=self._queue_name, error=outages.describe(exc))
        if not self._stopping:  # stopping: held until the grace ends, then handed back
            self._watcher = asyncio.create_task(self._watch(),
                                                name=f"outage-{self._queue_name}")

    async def _watch(self) -> None:
        """Probe with backoff until the dependencies answer, then release the held messages."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        delay = OUTAGE_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_MAX)
            if await self._probe_ok():
                break
        self._paused.set(0)
        self._healthy.set()
        log.warning("dependency_back", queue=self._queue_name,
                    outage_s=round(loop.time() - began, 3))

    async def _probe_ok(self) -> bool:
        if self._connection.is_closed or not self._connection.connected.is_set():
            return False
        if self._probe is None:
            return True
        try:
            return bool(await asyncio.wait_for(self._probe(), PROBE_TIMEOUT))
        except Exception:
            return False

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages, give in-flight ones ``grace`` seconds, hand back the rest."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()


async def _settle(op: Awaitable[None]) -> None:
    """Ack or nack; a void delivery tag (channel gone) means the broker will redeliver."""
    try:
        await op
    except Exception as exc:  # channel closed under us: redelivery covers it
        log.warning("settle_failed", error=str(exc))
