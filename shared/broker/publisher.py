"""Publishing with publisher confirms: every message persistent, ``mandatory``, confirmed.

Every publish awaits the broker's confirm within a timeout (a reconnection included, and a
nacked publish tried again on a fresh channel), an unroutable message raises
(``on_return_raises``), and every message gets a fresh ``message_id`` (aiormq matches returns
by it); the business id travels in the body or a header.
Public API of both libraries only (aio-pika's ``get_underlay_channel``, aiormq's
``basic_publish``): the same on the fast and the plain path (see :mod:`shared.broker.fastpath`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection

from shared import telemetry, topology
from shared.broker.consumer import Delivery
from shared.contracts import Contract, encode

log = structlog.get_logger("dihya.broker")

RESTORE_POLL = 0.05
"""Seconds between looks at a publisher channel that is closed but not yet being restored."""
RENEW_PAUSE = 0.25
"""Seconds a publish waits before it renews its channel again when the fresh channel was nacked
too (a quorum queue still electing its leader): see :meth:`Publisher.publish`."""

ChannelOpener = Callable[[], Awaitable[AbstractChannel]]
"""Opens a fresh confirming channel on the publisher's connection."""


class Publisher:
    """Publishes persistent messages on one confirming channel, awaiting each confirm.

    Many publishes may be in flight at once (``asyncio.gather``): confirms are pipelined on the
    channel, which is what makes batching cheap.
    """

    def __init__(self, channel: AbstractChannel, *, timeout: float = 10.0,
                 reopen: ChannelOpener | None = None) -> None:
        self._channel = channel
        self._timeout = timeout
        self._reopen = reopen
        self._closed = False
        self._open: aiormq.Channel | None = None
        """The underlay channel the last publish went out on, while it stays open."""
        self._renewing = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, *, timeout: float = 10.0
    ) -> Publisher:
        """A publisher on a channel of its own, renewed on a broker nack (see :meth:`publish`)."""

        async def reopen() -> AbstractChannel:
            return await connection.channel(publisher_confirms=True, on_return_raises=True)

        return cls(await reopen(), timeout=timeout, reopen=reopen)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        type: str | None = None,
        expiration: float | None = None,
        correlation_id: str | None = None,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the broker's confirm; raise if unroutable, nacked or late
        (``mandatory=False``: an unroutable message is dropped, as an answer whose asker is
        gone; ``correlation_id``: the request an answer is for).

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

        A publish the broker nacks goes again on a fresh channel (within the same
        ``timeout``; a publisher built without ``reopen`` raises at once): on a cluster a
        channel can be left nacking one quorum queue for as long as a dead node is away
        (issue #17, see the comment below and docs/operations.md, "Running on a cluster").
        """
        carrier = dict(headers or {})
        telemetry.inject(carrier)
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_id=uuid.uuid4().hex,
            headers=carrier,
            message_type=type,
            correlation_id=correlation_id,
            expiration=None if expiration is None else str(int(expiration * 1000)),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout  # a reconnection included
        renewed = False
        while True:
            robust = self._channel
            channel = self._open
            if channel is None or channel.is_closed:  # first use, or since a reconnection
                channel = self._open = await self._underlay(deadline)
            try:
                # aiormq's own timeout (what is left of ours): the cancellation stays inside
                # aiormq, which takes back a publish it had not yet queued
                await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                            properties=properties, mandatory=mandatory, wait=False,
                                            timeout=max(deadline - loop.time(), 0.001))
                return
            except aiormq.exceptions.DeliveryError as exc:
                # A nack: the broker did not take the message (no Dihya queue has a length
                # limit, so never for a full queue). Measured on RabbitMQ 3.10.8: a channel
                # whose first publish to a quorum queue came while that queue's leader was on a
                # node just killed (a reconnection lands exactly then) has every later publish
                # to it nacked until that node is back, 15-20 s and more; a fresh channel
                # opened once the new leader is elected (~0.3 s) is acked. So: a fresh channel,
                # and the publish again (the nacked one was not enqueued), within the timeout.
                if (not _nacked(exc) or self._reopen is None or self._closed
                        or loop.time() + RENEW_PAUSE >= deadline):
                    raise
                if renewed:  # nacked on a fresh channel too: the leader is not elected yet
                    await asyncio.sleep(RENEW_PAUSE)
                await self._renew(robust, deadline, exchange, routing_key)
                renewed = True
            except aiormq.exceptions.ChannelInvalidStateError:
                # Raised only before the frame was queued (the channel was found closed):
                # the broker never saw this publish, so it goes again on the restored channel.
                # A publish lost after it was written fails with the connection's error
                # instead (no retry: the caller's message is redelivered, at least once).
                if self._closed or loop.time() >= deadline:
                    raise
                await asyncio.sleep(RESTORE_POLL)

    async def _renew(self, nacked: AbstractChannel, deadline: float, exchange: str,
                     routing_key: str) -> None:
        """Replace the channel ``nacked`` by a fresh one, once for all the publishes it nacked;
        the old one is closed after the timeout, once the publishes still on it settled."""
        async with self._renewing, asyncio.timeout_at(deadline):
            if self._channel is not nacked or self._reopen is None:
                return  # another publish renewed it already
            self._channel, self._open = await self._reopen(), None
        log.info("publisher_channel_renewed", reason="nacked", exchange=exchange,
                 routing_key=routing_key)
        retiring = asyncio.create_task(self._retire(nacked))
        self._retired.add(retiring)
        retiring.add_done_callback(self._retired.discard)

    async def _retire(self, channel: AbstractChannel) -> None:
        try:
            await asyncio.sleep(self._timeout)
        finally:  # closed at the publisher's close too
            with contextlib.suppress(Exception):
                await channel.close()

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
        correlation_id: str | None = None,
        mandatory: bool = True,
    ) -> None:
        """Publish a contract model (``type`` property = its version tag)."""
        tag = getattr(model, "type", None) or getattr(model, "TYPE", None)
        await self.publish(
            exchange, routing_key, encode(model), headers=headers, type=tag, expiration=expiration,
            correlation_id=correlation_id, mandatory=mandatory,
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
        for retiring in list(self._retired):
            retiring.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self._channel.close()


def _nacked(exc: aiormq.exceptions.DeliveryError) -> bool:
    """A broker's ``basic.nack`` (not an unroutable message's return, the message's own)."""
    return (not isinstance(exc, aiormq.exceptions.PublishError)
            and isinstance(exc.frame, aiormq.spec.Basic.Nack))


async def confirm_all(publishes: Iterable[Awaitable[None]]) -> None:
    """Await every publish (confirms pipelined), then raise the first failure, if any.

    ``gather(return_exceptions=True)`` lets every publish settle first, so no publish is left
    running unobserved when the handler gives the message back.
    """
    results = await asyncio.gather(*publishes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

