"""The broker fast path's gain, measured alone: client CPU per publish and per consumed message.

``python -m bench.fastpath`` publishes ``--messages`` messages (confirmed, 200 in flight, as a
handler fanning out) to a fresh quorum queue through :class:`shared.broker.Publisher`, then
consumes and acks them through :class:`shared.broker.Consumer` with a handler that does
nothing, once on the fast path and once on the plain one (``DIHYA_AMQP_FAST_PATH``), alternating
for ``--rounds`` rounds; it prints this process's CPU time per message (``time.process_time``:
the client side, which is what the bypasses in shared/broker/fastpath.py save) and the
machine's load average. RabbitMQ at ``--amqp-url`` (default: the local guest account).

``--write-queue-frames N`` adds a third variant to each round: the fast path with aiormq's
write queue at N frames instead of :data:`shared.broker.fastpath.WRITE_QUEUE_FRAMES` (``10``,
aiormq's default, measures bypass 4 on its own). Bypass 3 has no variant: it is the carrier of
1 and 2, which cannot be applied without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from shared import topology
from shared.broker import Consumer, Delivery, Publisher, connect, fastpath

BATCH = 200


async def one_round(url: str, fast: bool, messages: int,
                    write_queue_frames: int | None = None) -> tuple[float, float]:
    """µs of CPU per publish and per consumed message, on one path (on the fast one with
    aiormq's write queue at ``write_queue_frames`` frames, when given)."""
    tuned = fastpath.WRITE_QUEUE_FRAMES
    if write_queue_frames is not None:  # read by tune_aiormq when the connection opens
        fastpath.WRITE_QUEUE_FRAMES = write_queue_frames
    try:
        connection = await connect(url, service="bench-fastpath", fast_path=fast)
    finally:
        fastpath.WRITE_QUEUE_FRAMES = tuned
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


async def run(url: str, messages: int, rounds: int, write_queue_frames: int | None) -> None:
    variants: dict[str, tuple[bool, int | None]] = {"fast": (True, None), "plain": (False, None)}
    if write_queue_frames is not None:
        variants[f"fast, write queue {write_queue_frames}"] = (True, write_queue_frames)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    print(f"load average before: {os.getloadavg()}")
    for _ in range(rounds):
        for name, (fast, frames) in variants.items():
            results[name].append(await one_round(url, fast, messages, frames))
    print(f"load average after: {os.getloadavg()}")
    print(f"{messages} messages x {rounds} rounds; client CPU, µs per message (median, all)")
    for name, found in results.items():
        publish = [p for p, _ in found]
        consume = [c for _, c in found]
        print(f"  {name:<22}  publish {statistics.median(publish):6.1f} "
              f"{[round(p) for p in publish]}  consume+ack {statistics.median(consume):6.1f} "
              f"{[round(c) for c in consume]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default=os.environ.get(
        "DIHYA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-queue-frames", type=int, default=None, metavar="N",
                        help="also run the fast path with aiormq's write queue at N frames "
                             "(10: aiormq's default, i.e. without bypass 4)")
    args = parser.parse_args()
    work = run(args.amqp_url, args.messages, args.rounds, args.write_queue_frames)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(work)
    else:
        uvloop.run(work)


if __name__ == "__main__":
    main()
