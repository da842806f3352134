"""The raw ceiling: the same work as Dihya, written as simply as possible.

    load generator --AMQP--> bench.raw.in --> relay (HMAC) --> bench.raw.out --> poster
                                                                     --HTTP--> sink

Same rules as Dihya where they cost something: durable quorum queues, persistent messages,
publisher confirms awaited before the ack, prefetch 200, uvloop, one process per stage. Nothing
more: no fan-out, no second signature scheme, no audit, no validation, no logs, per-message
acks and confirms. It measures what this machine can do for "consume, sign, publish, POST" —
Dihya's throughput is reported as a share of it.

Run by the harness as ``python -m bench.raw_chain relay|poster`` with ``BENCH_AMQP_URL``,
``BENCH_RAW_SECRET`` (relay) and ``BENCH_SINK_URL`` (poster) in the environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import sys
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage

IN_QUEUE = "bench.raw.in"
OUT_QUEUE = "bench.raw.out"
PREFETCH = 200
QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


async def declare(url: str) -> None:
    """Declare both queues (durable, quorum) on the vhost of ``url``."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in (IN_QUEUE, OUT_QUEUE):
            await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)


async def _until_stopped() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()


async def relay(url: str, secret: bytes) -> None:
    """Consume, HMAC, publish (confirm awaited), ack."""
    connection = await aio_pika.connect(url)
    consume = await connection.channel()
    await consume.set_qos(prefetch_count=PREFETCH)
    publish = await connection.channel(publisher_confirms=True)
    queue = await consume.declare_queue(IN_QUEUE, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        signature = hmac.new(secret, message.body, hashlib.sha256).hexdigest()
        await publish.default_exchange.publish(
            aio_pika.Message(message.body, headers={"x-signature": signature},
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            OUT_QUEUE, timeout=10)
        await message.ack()

    await queue.consume(on_message)
    await _until_stopped()
    await connection.close()


async def poster(url: str, sink_url: str) -> None:
    """Consume, POST to the sink, ack on 2xx (requeue otherwise)."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(OUT_QUEUE, passive=True)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PREFETCH))

    async def on_message(message: AbstractIncomingMessage) -> None:
        headers = {"Content-Type": "application/json",
                   "X-Dihya-Signature": str((message.headers or {}).get("x-signature", ""))}
        try:
            async with session.post(sink_url, data=message.body, headers=headers) as resp:
                await resp.read()
                ok = resp.status < 300
        except aiohttp.ClientError:
            ok = False
        await (message.ack() if ok else message.nack(requeue=True))

    await queue.consume(on_message)
    await _until_stopped()
    await session.close()
    await connection.close()


def main() -> None:
    import uvloop

    stage = sys.argv[1] if len(sys.argv) > 1 else ""
    url = os.environ["BENCH_AMQP_URL"]
    if stage == "relay":
        uvloop.run(relay(url, os.environ["BENCH_RAW_SECRET"].encode()))
    elif stage == "poster":
        uvloop.run(poster(url, os.environ["BENCH_SINK_URL"]))
    else:
        sys.exit("usage: python -m bench.raw_chain relay|poster")


if __name__ == "__main__":
    main()
