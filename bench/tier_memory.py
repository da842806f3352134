"""``python -m bench.tier_memory``: what a message waiting in a retry tier costs RabbitMQ's memory.

The backlog phase (:mod:`bench.backlog`) piles deliveries up through Dihya, as fast as Dihya
fails them; this measures the broker alone, faster: ``N`` persistent messages of ``--bytes``
each, every one with its own expiration as the deliverer sets it, published with confirms into a
fresh quorum queue declared with a retry tier's arguments (:func:`shared.topology.retry_queues`),
the node's memory (:class:`~bench.monitor.BrokerWatch`) read before, after, and after a pause
(the WAL flushing to segment files). The queue is deleted afterwards.

Run it against a node of your own (``--amqp-url``, ``--rabbitmqctl``): a memory alarm stops
every publisher of the node.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

import aio_pika
import orjson

from bench.monitor import MIB, BrokerSample, BrokerWatch
from shared import topology

WINDOW = 500
"""Publishes awaiting their confirm at once."""


def _growth(before: BrokerSample | None, after: BrokerSample | None, n: int) -> dict[str, Any]:
    if before is None or after is None:
        return {"error": "no memory sample"}
    return {"mem_used_mib": round(after.mem_used / MIB, 1),
            "growth_mib": round((after.mem_used - before.mem_used) / MIB, 1),
            "bytes_per_message": round((after.mem_used - before.mem_used) / n),
            "quorum_ets_growth_mib": round((after.quorum_ets - before.quorum_ets) / MIB, 1),
            "growth_by_category_mib": {
                k: round((v - before.breakdown.get(k, 0)) / MIB, 1)
                for k, v in after.breakdown.items()
                if abs(v - before.breakdown.get(k, 0)) >= MIB},
            "share_of_limit": round(after.mem_used / after.mem_limit, 3)
            if after.mem_limit else None,
            "alarms": after.alarms}


async def measure(url: str, ctl: str, n: int, size: int, delay_ms: int, pause: float
                  ) -> dict[str, Any]:
    """Fill a tier-like queue with ``n`` messages and read the node's memory around it."""
    watch = BrokerWatch(ctl)
    name = f"bench.tier-memory.{uuid.uuid4().hex[:6]}"
    arguments = topology.retry_queues((delay_ms,))[0].arguments
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        try:
            before = await watch.sample()
            body = b"x" * size
            for start in range(0, n, WINDOW):
                await asyncio.gather(*(
                    channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                         expiration=delay_ms / 1000,
                                         message_id=f"m{i}", headers={"x-dihya-attempt": 2}),
                        name)
                    for i in range(start, min(n, start + WINDOW))))
            filled = await watch.sample()
            await asyncio.sleep(pause)
            settled = await watch.sample()
            declared = await channel.declare_queue(name, passive=True)
            count = declared.declaration_result.message_count
        finally:
            await queue.delete(if_unused=False, if_empty=False)
        after_delete = await watch.sample()
    return {"messages": n, "body_bytes": size, "queue_arguments": arguments,
            "in_queue": count,
            "before_mib": round(before.mem_used / MIB, 1) if before else None,
            "after_publish": _growth(before, filled, n),
            f"after_{pause:g}_s": _growth(before, settled, n),
            "after_delete": _growth(before, after_delete, n),
            "rabbitmqctl_error": watch.error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--rabbitmqctl", default="rabbitmqctl")
    parser.add_argument("-n", type=int, default=100_000, help="messages (100,000)")
    parser.add_argument("--bytes", type=int, default=2048,
                        help="body size (2,048: a signed delivery with its headers is ~1.5-2 KB)")
    parser.add_argument("--delay", type=int, default=3_600_000,
                        help="the tier's delay, ms (1 h: nothing expires while measured)")
    parser.add_argument("--pause", type=float, default=30.0,
                        help="seconds to wait before the last reading")
    args = parser.parse_args()
    result = asyncio.run(measure(args.amqp_url, args.rabbitmqctl, args.n, args.bytes,
                                 args.delay, args.pause))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
