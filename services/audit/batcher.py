"""How audit waits for its batched writes: hold the message while the database is away.

The batching itself is :class:`shared.batching.Batcher`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from shared.batching import Batcher

T = TypeVar("T")

log = structlog.get_logger("dihya.audit.batcher")


async def submit_retrying(
    batcher: Batcher[T, Any],
    item: T,
    *,
    transient: Callable[[BaseException], bool],
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> None:
    """Submit ``item`` until its batch commits, backing off while failures are ``transient``.

    Why not raise and let the broker redeliver: with a lost database every requeue would count
    against the queue's delivery limit, and an outage of a few seconds would park every
    in-flight fact. Holding the unacked message and retrying keeps it safe (a crash still means
    redelivery) without that. A non-transient failure (a data error) is raised: the message is
    requeued and, if it keeps failing, parked by the delivery limit. Cancellation (the consumer
    stopping) ends the wait and the message goes back to the broker.
    """
    delay = first_delay
    while True:
        try:
            await batcher.submit(item)
        except Exception as exc:
            if not transient(exc):
                raise
            log.debug("write_retry", retry_in=delay, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
        else:
            return
