"""The broker fast path's gain, measured alone: client CPU per publish and per consumed message.

``python -m bench.fastpath`` publishes ``--messages`` messages (confirmed, 200 in flight, as a
handler fanning out) to a fresh quorum queue through :class:`shared.broker.Publisher`, then
consumes and acks them through :class:`shared.broker.Consumer` with a handler that does
nothing, once on the fast path and once on the plain one (``DIHYA_AMQP_FAST_PATH``), alternating
for ``--rounds`` rounds; it prints this process's CPU time per message (``time.process_time``:
the client side, which is what the bypasses in shared/broker/fastpath.py save) and the
machine's load average. RabbitMQ at ``--amqp-url`` (default: the local guest account).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from shared import topology
from shared.broker import Consumer, Delivery, Publisher, connect

BATCH = 200


async def one_round(url: str, fast: bool, messages: int) -> tuple[float, float]:
    """µs of CPU per publish and per consumed message, on one path."""
    connection = await connect(url, service="bench-fastpath", fast_path=fast)
    try:
        channel = await connection.channel()
        name = f"bench.fastpath.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, durable=True,
                                            arguments=dict(topology.WORK_QUEUES[0].arguments))
        publisher = await Publisher.open(connection)
        body = os.urandom(512).hex().encode()  # 1 KiB, as the bench's events
        started = time.process_time()
        for first in range(0, messages, BATCH):
            await asyncio.gather(*(publisher.publish("", name, body, headers={"n": n})
                                   for n in range(first, min(first + BATCH, messages))))
        published = time.process_time() - started

        done = asyncio.Event()
        count = 0

        async def handler(_: Delivery) -> None:
            nonlocal count
            count += 1
            if count == messages:
                done.set()

        consumer = Consumer(connection, name, handler, prefetch=BATCH)
        started = time.process_time()
        await consumer.start()
        await asyncio.wait_for(done.wait(), timeout=300)
        consumed = time.process_time() - started
        await consumer.stop(grace=5)
        await queue.delete(if_unused=False, if_empty=False)
        await publisher.close()
        return published / messages * 1e6, consumed / messages * 1e6
    finally:
        await connection.close()


async def run(url: str, messages: int, rounds: int) -> None:
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    print(f"load average before: {os.getloadavg()}")
    for _ in range(rounds):
        for fast in (True, False):
            results[fast].append(await one_round(url, fast, messages))
    print(f"load average after: {os.getloadavg()}")
    print(f"{messages} messages x {rounds} rounds; client CPU, µs per message (median, all)")
    for fast in (True, False):
        publish = [p for p, _ in results[fast]]
        consume = [c for _, c in results[fast]]
        print(f"  {'fast ' if fast else 'plain'}  publish {statistics.median(publish):6.1f} "
              f"{[round(p) for p in publish]}  consume+ack {statistics.median(consume):6.1f} "
              f"{[round(c) for c in consume]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default=os.environ.get(
        "DIHYA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(run(args.amqp_url, args.messages, args.rounds))
    else:
        uvloop.run(run(args.amqp_url, args.messages, args.rounds))


if __name__ == "__main__":
    main()
