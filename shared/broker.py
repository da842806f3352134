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
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from prometheus_client import Counter, Gauge
from yarl import URL

from shared import telemetry, topology
from shared.batching import Batcher
from shared.contracts import MAX_FACTS_PER_BATCH, AuditFact, AuditFactBatch, Contract, encode

log = structlog.get_logger("dihya.broker")

IN_FLIGHT = Gauge("dihya_consumer_in_flight_messages",
                  "Messages a consumer holds unacked (at most its prefetch): sustained at the "
                  "prefetch means the service is the bottleneck; queue depth itself comes "
                  "from RabbitMQ's own Prometheus endpoint.", ["queue"])
PROCESSED = Counter("dihya_consumer_messages_total", "Messages handled, by result.",
                    ["queue", "result"])

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


async def connect(url: str, *, service: str) -> AbstractRobustConnection:
    """Open a robust connection (reconnects and restores consumers by itself)."""
    return await aio_pika.connect_robust(
        url, client_properties={"connection_name": f"dihya-{service}"}, timeout=10,
        connection_class=_CorkedConnection,
    )


class CorkedWriter(asyncio.StreamWriter):
    """A stream writer that sends everything written in one event-loop iteration at once.

    Why: aiormq writes every frame on its own — each publish, each ack — and every write is a
    ``send`` system call while the socket keeps up. Handlers that finish in the same iteration
    (a batch of confirms arriving, say) thus cost one call per message, the largest single
    item of the signer's profile. Corked, they leave as one ``send``, in the order written, at
    the end of the iteration. ``close`` sends what is pending first, so a closing frame is not
    lost; ``drain`` keeps the transport's flow control but does not send early.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: asyncio.BaseProtocol,
                 reader: asyncio.StreamReader | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._pending: list[bytes] = []
        self._event_loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
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
    """aiormq's TCP/TLS transport (as ``asyncio.open_connection``) with a :class:`CorkedWriter`."""

    async def create(self, url: URL, **kwargs: Any
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=kwargs.pop("limit", 2**16), loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(  # aiormq has set the port
                lambda: protocol, url.host or "localhost", url.port or 5672, ssl=ssl, **kwargs)
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, CorkedWriter(transport, protocol, reader, loop)


WRITE_QUEUE_FRAMES = 1024
"""Frames aiormq may queue for its writer task (its default, 10, would let a burst of
publishes through one per loop iteration, whatever the corking). This adds no unbounded
buffer: every publish still awaits its confirm, and the prefetch bounds the handlers."""


class _CorkedConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, whose every (re)connection uses corked writes."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None,
                 **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        # passed through to aiormq.connect on every reconnection
        self.kwargs["transport_factory"] = _CorkedTransportFactory()


# aiormq reads the size from its class when it creates a connection; there is no parameter
aiormq.Connection.FRAME_BUFFER_SIZE = WRITE_QUEUE_FRAMES


async def declare(channel: AbstractChannel, retry_delays_ms: tuple[int, ...] = ()) -> None:
    """Declare the whole topology (idempotent): see :mod:`shared.topology`."""
    for ex in topology.EXCHANGES:
        await channel.declare_exchange(ex.name, ex.type, durable=True)
    for q in topology.queues(retry_delays_ms):
        await declare_queue(channel, q)


async def declare_queue(channel: AbstractChannel, q: topology.Queue) -> None:
    """Declare one queue of the topology with its arguments, and bind it."""
    queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
    for exchange, routing_key in q.bindings:
        await queue.bind(exchange, routing_key)


async def declare_topology(connection: AbstractRobustConnection,
                           retry_delays_ms: tuple[int, ...] = ()) -> None:
    """What every service does at start: :func:`declare` on a channel of its own."""
    async with connection.channel() as channel:
        await declare(channel, retry_delays_ms)


class Publisher:
    """Publishes persistent messages on one confirming channel, awaiting each confirm.

    Many publishes may be in flight at once (``asyncio.gather``): confirms are pipelined on the
    channel, which is what makes batching cheap.
    """

    def __init__(self, channel: AbstractChannel, *, timeout: float = 10.0) -> None:
        self._channel = channel
        self._timeout = timeout
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, *, timeout: float = 10.0
    ) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, timeout=timeout)

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

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
        """Publish and wait for the broker's confirm; raise if unroutable, nacked or late."""
        carrier = dict(headers or {})
        telemetry.inject(carrier)
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=uuid.uuid4().hex,
            headers=carrier,
            type=type,
            expiration=expiration,
        )
        target = await self._exchange(exchange)
        await target.publish(message, routing_key, mandatory=True, timeout=self._timeout)

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
        self, queue: str, message: AbstractIncomingMessage, *, reason: str, error: str
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
        await self._channel.close()


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

    async def send_after(self, first: Awaitable[None], fact: AuditFact) -> None:
        """Publish ``fact`` on its own once ``first`` is confirmed — for a fact audit must
        store after another (a giving up after its attempt, a held delivery after the
        acceptance naming the subject) when that other travels in a lingering batch."""
        await first
        await self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)

    async def _publish(self, kind: str, facts: Sequence[AuditFact]) -> None:
        await self._publisher.send(topology.AUDIT_EXCHANGE, kind,
                                   AuditFactBatch(facts=list(facts)))

    async def close(self, grace: float = 10.0) -> None:
        """Publish what is pending (within ``grace``), then refuse new facts."""
        self._closed = True
        await asyncio.gather(*(b.stop(grace) for b in self._kinds.values()))


class _Acks:
    """The acks of one consumer: the messages finished in delivery order are acked by one
    ``multiple`` ack per loop iteration; one finished out of order waits up to ``hold`` seconds
    for those before it to finish (then one ``multiple`` ack covers it too), else is acked on
    its own — so a slow message (a receiver taking 2 s) holds nothing behind it for long.

    Why: on a quorum queue every ack frame is a command in the queue's Raft log (written,
    replicated, applied), one per message when each message is acked alone; a run of
    deliveries settled by one ``multiple`` ack is one command. Safety: a ``multiple`` ack
    covers every outstanding delivery of the channel up to its tag, so it only ever covers
    tags this consumer saw *and* finished, without a gap (tags of a channel are consecutive
    from 1, and the consumer has its channel to itself). A delivery that never reached the
    handler leaves a gap: the acks after it go one by one, and the broker redelivers it when the
    channel closes. After a reconnect the old channel's tags are void: nothing of it is acked,
    the broker redelivers.
    """

    HOLD = 0.02
    """Seconds a message finished out of order waits for a ``multiple`` ack to cover it."""

    MAX_FINISHED = 100_000
    """Finished tags kept behind a gap, past which this channel's acks all go one by one."""

    def __init__(self, hold: float = HOLD) -> None:
        self._hold = hold
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._next = 1  # lowest tag of the channel not yet covered by a multiple ack
        self._finished: set[int] = set()  # settled (or to be acked) tags at or above _next
        self._ready: list[int] = []  # finished since the last flush
        self._held: dict[int, float] = {}  # finished out of order, not acked yet: since when
        self._contiguous = True
        self._flushing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def finished(self, message: AbstractIncomingMessage) -> None:
        """``message``'s handler succeeded: ack it with this iteration's others."""
        if self._channel_of(message) is None or message.delivery_tag is None:
            return  # the channel is gone: the broker redelivers the message
        self._ready.append(message.delivery_tag)
        self._kick()

    def settled(self, message: AbstractIncomingMessage) -> None:
        """``message`` was settled otherwise (nacked): a multiple ack may pass over it."""
        if self._channel_of(message) is not None and message.delivery_tag is not None:
            self._finished.add(message.delivery_tag)

    async def drain(self) -> None:
        """Send every pending ack now, held ones included (before the channel closes)."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._flush(hold=0.0)

    def _channel_of(self, message: AbstractIncomingMessage) -> aiormq.abc.AbstractChannel | None:
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return None
        if channel is not self._channel:  # the first message, or the first after a reconnect
            self._channel, self._next, self._contiguous = channel, 1, True
            self._finished.clear()
            self._ready.clear()
            self._held.clear()
        return channel

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    def _kick(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # let the handlers finishing in this iteration join
            await self._flush(hold=self._hold)
        finally:
            self._flushing = None
            if self._ready:
                self._kick()

    async def _flush(self, hold: float) -> None:
        channel, ready = self._channel, self._ready
        self._ready = []
        if channel is None:
            return
        now = asyncio.get_running_loop().time()
        self._finished.update(ready)
        self._held.update((tag, now) for tag in ready)
        if self._contiguous:
            while self._next in self._finished:
                self._finished.discard(self._next)
                self._next += 1
            if len(self._finished) > self.MAX_FINISHED:
                self._contiguous = False
                self._finished.clear()
        # The multiple ack's own tag must be outstanding (a tag acked alone or nacked before
        # is unknown to the broker, which closes the channel): the highest held one it covers.
        covered = [tag for tag in self._held if tag < self._next]
        upto = max(covered, default=None)
        for tag in covered:
            del self._held[tag]
        singles = [tag for tag, since in self._held.items()
                   if now - since >= hold * 0.9]  # a timer may fire a hair early
        for tag in singles:
            del self._held[tag]
        if self._held and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(hold, self._on_timer)
        try:
            if upto is not None:
                await channel.basic_ack(upto, multiple=True, wait=False)
            for tag in singles:
                await channel.basic_ack(tag, wait=False)
        except Exception as exc:  # channel closed under us: redelivery covers it
            log.warning("settle_failed", error=str(exc))


class Consumer:
    """Consumes one queue with bounded concurrency; acks after the handler returns.

    ``handler`` does the work and publishes what follows (awaiting confirms) before it returns.
    If it raises, the message is requeued; the queue's ``x-delivery-limit`` then parks a
    message that fails again and again, so one poison message never blocks the queue.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 200,
    ) -> None:
        self._connection = connection
        self._queue_name = queue
        self._handler = handler
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # the metric children, looked up once: ``labels()`` per message shows in profiles
        self._in_flight = IN_FLIGHT.labels(queue)
        self._acked = PROCESSED.labels(queue, "acked")
        self._requeued = PROCESSED.labels(queue, "requeued")
        self._idle = asyncio.Event()
        self._idle.set()
        self._acks = _Acks()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        # a (passive) declare, not get_queue(ensure=False): only a declared queue is restored,
        # with its consumer, when the robust connection comes back after a broker outage
        self._queue = await self._channel.declare_queue(self._queue_name, passive=True)
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
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

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            with telemetry.consuming(self._queue_name, message.headers):
                await self._handler(message)
        except asyncio.CancelledError:
            await self._nack(message)
            raise
        except Exception:
            log.exception("handler_failed", queue=self._queue_name,
                          redelivered=message.redelivered)
            self._requeued.inc()
            await self._nack(message)
        else:
            self._acked.inc()
            self._acks.finished(message)

    async def _nack(self, message: AbstractIncomingMessage) -> None:
        await _settle(message.nack(requeue=True))
        self._acks.settled(message)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages, give in-flight ones ``grace`` seconds, hand back the rest."""
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._acks.drain()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()


async def _settle(op: Awaitable[None]) -> None:
    """Ack or nack; a void delivery tag (channel gone) means the broker will redeliver."""
    try:
        await op
    except Exception as exc:  # channel closed under us: redelivery covers it
        log.warning("settle_failed", error=str(exc))
