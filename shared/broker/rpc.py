"""Requests answered over RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``).

A :class:`Requester` publishes a request with ``reply_to`` set to the pseudo-queue
``amq.rabbitmq.reply-to`` and a fresh ``correlation_id``, on the channel that consumes that
pseudo-queue; the answering service publishes its answer to the default exchange with the
routing key ``reply_to`` and the same ``correlation_id`` (:meth:`Publisher.publish` with
``mandatory=False``). No queue is declared for the answers: RabbitMQ routes them to the
asking channel directly, and drops them if that channel is gone.

What is lost on the way (a request expired in its queue, an answer whose channel closed) is
never an error of the request's own: :meth:`Requester.call` raises ``TimeoutError`` and the
caller asks again. Public API of both libraries only (aio-pika's ``get_underlay_channel``,
aiormq's ``basic_consume`` and ``basic_publish``); after a reconnection the robust channel
brings a new underlay channel, and the next call consumes the pseudo-queue on it again.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

REPLY_TO = "amq.rabbitmq.reply-to"


class Requester:
    """Sends requests to ``routing_key`` on ``exchange`` and awaits their answers."""

    def __init__(self, connection: AbstractRobustConnection, exchange: str,
                 routing_key: str) -> None:
        self._connection = connection
        self._exchange = exchange
        self._routing_key = routing_key
        self._channel: AbstractChannel | None = None
        self._listening: aiormq.Channel | None = None
        self._lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    async def _underlay(self) -> aiormq.Channel:
        """The underlay channel, consuming the answers (again, after a reconnection)."""
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(publisher_confirms=False)
            # the concrete channel: ``basic_consume`` is not on aiormq's abstract one
            channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            if channel is not self._listening or channel.is_closed:
                await channel.basic_consume(REPLY_TO, self._on_answer, no_ack=True)
                self._listening = channel
            return channel

    async def _on_answer(self, message: DeliveredMessage) -> None:
        waiting = self._waiting.pop(message.header.properties.correlation_id or "", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(message.body)

    async def call(self, body: bytes, *, type: str, timeout: float) -> bytes:
        """The answer's body; ``TimeoutError`` if none came within ``timeout`` seconds (the
        request itself expires in its queue after as long: nobody answers it late)."""
        correlation = uuid.uuid4().hex
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = answer
        try:
            async with asyncio.timeout(timeout):
                channel = await self._underlay()
                await channel.basic_publish(
                    body, exchange=self._exchange, routing_key=self._routing_key,
                    properties=aiormq.spec.Basic.Properties(
                        content_type="application/json", message_type=type,
                        reply_to=REPLY_TO, correlation_id=correlation,
                        expiration=str(max(int(timeout * 1000), 1))))
                return await answer
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
                ConnectionError) as exc:  # the channel gone, or being restored
            raise TimeoutError(f"request not sent: {exc.__class__.__name__}") from exc
        finally:
            self._waiting.pop(correlation, None)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
