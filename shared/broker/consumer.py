"""Consuming a queue: bounded concurrency, ack after the handler returned, outages held.

A consumed message is acked only after its handler returned, i.e. after everything it
published was confirmed; a handler that raises gets the message requeued after a backoff, and
the queue's delivery limit parks a message that keeps failing; a handler that meets an
unavailable dependency holds its message until the dependency is back. After a reconnect, a
delivery tag of the old channel is void: acking it fails, and the broker redelivers the
message instead — that is the at-least-once path, never a loss.

How messages reach the handler depends on the connection's path: on the fast path straight
from aiormq (:func:`shared.broker.fastpath.consume_direct`), on the plain path through
aio-pika's ``Queue.consume``. Handlers see a :class:`Delivery` either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from prometheus_client import Counter, Gauge

from shared import outages, telemetry

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

    Built from aiormq's message on the fast path (:meth:`__init__`), from aio-pika's
    ``IncomingMessage`` on the plain path (:meth:`from_incoming`): handlers cannot tell.
    Why not hand aio-pika's message to handlers: aio-pika builds one (copying every property)
    and runs the callback in a second task for each message; handing aiormq's message to the
    consumer in aiormq's own task instead took the CPU of a consumed and acked message from
    165 to 108-121 µs (one process, 20,000 messages, on the development machine), and a
    delivery is consumed three times on its way (see :mod:`shared.broker.fastpath`).
    """

    __slots__ = ("_channel", "_tag", "body", "correlation_id", "exchange", "headers",
                 "message_id", "redelivered", "reply_to", "routing_key", "type")

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        properties = message.header.properties
        self.body: bytes = message.body
        self.headers: dict[str, Any] = properties.headers or {}
        self.message_id: str | None = properties.message_id
        self.type: str | None = properties.message_type
        # a request's (RPC over direct reply-to): where to answer, and with which id
        self.reply_to: str | None = properties.reply_to
        self.correlation_id: str | None = properties.correlation_id
        # where the publisher sent it ("" is the default exchange): ingest holds an event's
        # routing key to its type (services/ingest/decisions/__init__.py, route_refusal)
        self.exchange: str | None = message.exchange
        self.routing_key: str | None = message.routing_key
        self.redelivered: bool = bool(message.redelivered)
        self._channel = message.channel
        self._tag = message.delivery_tag

    @classmethod
    def from_incoming(cls, message: AbstractIncomingMessage) -> Delivery:
        """The same from aio-pika's message (the plain path): the same fields, settled the
        same way, on the aiormq channel it came on."""
        delivery = cls.__new__(cls)
        delivery.body = message.body
        delivery.headers = dict(message.headers or {})
        delivery.message_id = message.message_id
        delivery.type = message.type
        delivery.reply_to = message.reply_to
        delivery.correlation_id = message.correlation_id
        delivery.exchange = message.exchange
        delivery.routing_key = message.routing_key
        delivery.redelivered = bool(message.redelivered)
        delivery._channel = message.channel
        delivery._tag = message.delivery_tag
        return delivery

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
    def ready(self) -> bool:
        """False while this consumer holds messages for an unavailable dependency (for the
        service's ``/readyz``)."""
        return self._healthy.is_set()

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        # Consumed through a (passive) declare, not get_queue(ensure=False), on either path:
        # only a declared queue is restored, with its consumer, when the robust connection
        # comes back after a broker outage (aio-pika's RobustQueue.restore).
        if bool(getattr(self._connection, "dihya_fast_path", False)):
            from shared.broker import fastpath  # only a fast connection brings it in

            self._queue, self._tag = await fastpath.consume_direct(
                self._channel, self._queue_name, self._on_delivered)
        else:
            self._queue = await self._channel.declare_queue(self._queue_name, passive=True)
            self._tag = await self._queue.consume(self._on_incoming)

    async def _on_delivered(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        """The fast path's callback, in the task aiormq runs it in."""
        await self._on_message(Delivery(delivered))

    async def _on_incoming(self, message: AbstractIncomingMessage) -> None:
        """The plain path's callback, in the task aio-pika starts for each message."""
        try:
            delivery = Delivery.from_incoming(message)
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # its channel closed meanwhile: the broker redelivers it
        await self._on_message(delivery)

    async def _on_message(self, message: Delivery) -> None:
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
