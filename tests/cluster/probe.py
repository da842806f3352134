"""A probe of the quorum-queue trap behind issue #17's stalls, for a node-kill scenario.

RabbitMQ 3.10 answers the first publish of a channel to a quorum queue by asking the node it
believes leads the queue; right after that node was killed (where a reconnecting service lands)
the answer is "node down", the publish is nacked, and so is every later publish of that
channel to that queue, until the node is back. :class:`LeaderLossProbe` declares a queue led by
the node about to be killed and, right after the kill, publishes to it once on a bare confirming
channel (the trap, when the publish lands before the new leader is known) and once through
:class:`shared.broker.Publisher` (which renews a nacked channel), both opened before the kill
on another node and not yet used for that queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import aio_pika
import aiormq

from shared import topology
from shared.broker import Publisher
from tests.cluster.rabbit import Cluster, Node


@dataclass
class ProbeResult:
    bare: str
    """What the bare channel's publish got: ``confirmed``, ``nacked`` or an error's name."""
    bare_again: str
    """The same channel's second publish, a second later (still ``nacked``: the trap)."""
    publisher: str
    publisher_seconds: float


async def _outcome(publish: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(publish, 12)
    except aiormq.exceptions.DeliveryError:
        return "nacked"
    except Exception as exc:
        return type(exc).__name__
    return "confirmed"


class LeaderLossProbe:
    """Publishes to a queue led by ``node`` right after ``node`` was killed (see the module)."""

    def __init__(self, queue: str, bare: aio_pika.abc.AbstractChannel,
                 publisher: Publisher) -> None:
        self._queue = queue
        self._bare = bare
        self._publisher = publisher

    async def after_kill(self) -> ProbeResult:
        """Call at once after the kill: the trap is open until the new leader is known."""
        bare = await _outcome(self._bare.default_exchange.publish(
            aio_pika.Message(b"bare", delivery_mode=2), self._queue))
        loop = asyncio.get_running_loop()
        started = loop.time()
        publisher = await _outcome(self._publisher.publish("", self._queue, b"publisher"))
        spent = loop.time() - started
        await asyncio.sleep(1)
        bare_again = await _outcome(self._bare.default_exchange.publish(
            aio_pika.Message(b"bare", delivery_mode=2), self._queue))
        return ProbeResult(bare, bare_again, publisher, spent)


@contextlib.asynccontextmanager
async def leader_loss_probe(cluster: Cluster, node: Node) -> AsyncIterator[LeaderLossProbe]:
    """A probe queue led by ``node`` (declared through it: queues that Dihya's leader policy
    does not match get their leader on the declaring node), and the probe's channels on
    another node; the queue is deleted at the end."""
    queue = f"probe.leader-loss.{uuid.uuid4().hex[:8]}"
    arguments = next(q.arguments for q in topology.WORK_QUEUES)  # a work queue's arguments
    async with await aio_pika.connect(node.url) as through_leader:
        channel = await through_leader.channel()
        await channel.declare_queue(queue, durable=True, arguments=arguments)
    other = next(n for n in cluster.nodes if n is not node)
    connection = await aio_pika.connect_robust(other.url, reconnect_interval=0.5)
    try:
        bare = await connection.channel(publisher_confirms=True)
        yield LeaderLossProbe(queue, bare, await Publisher.open(connection, timeout=10))
        with contextlib.suppress(Exception):
            async with connection.channel() as channel:
                await channel.queue_delete(queue)
    finally:
        await connection.close()
