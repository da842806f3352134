"""Group concurrent writes into batches committed one at a time, each caller awaiting its own.

Why: one transaction per fact caps the store at a few hundred commits per second (every commit
is an fsync), while the broker delivers thousands of facts per second. Each message handler
hands its fact over with :meth:`Batcher.submit` and awaits the commit of the batch holding it,
so the message is acked only once its record is durable — batching changes throughput, never
the at-least-once guarantee.

A batch is flushed when ``size`` items wait or ``wait`` seconds after its first item arrived.
A single writer task flushes batches in order, one at a time: that is what keeps the hash chain
linear within a process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger("dihya.audit.batcher")


class BatcherClosedError(RuntimeError):
    """Raised by :meth:`Batcher.submit` once the batcher is stopping."""


class Batcher(Generic[T]):
    """Batches items for ``write``; :meth:`submit` resolves once the item's batch committed.

    If ``write`` raises, every item of that batch gets the exception — unless ``isolate(exc)``
    says the failure may come from one bad item (a data error rather than a lost database):
    then each item is retried alone, so one poison item cannot fail its innocent neighbours.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        *,
        size: int,
        wait: float,
        isolate: Callable[[BaseException], bool] = lambda _exc: False,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._write = write
        self._size = size
        self._wait = wait
        self._isolate = isolate
        self._pending: list[tuple[T, asyncio.Future[None], float]] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-batcher")

    async def submit(self, item: T) -> None:
        """Queue ``item`` and wait until the batch holding it is committed (or raise)."""
        if self._closing:
            raise BatcherClosedError("the audit writer is stopping")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, future, loop.time()))
        self._arrived.set()
        if len(self._pending) >= self._size:
            self._full.set()
        await future

    async def stop(self, grace: float = 10.0) -> None:
        """Flush what is pending, then stop; after ``grace`` seconds, abandon the write.

        An abandoned write fails its callers, whose messages go back to the broker: at worst a
        record is stored *and* redelivered, and the duplicate is skipped.
        """
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._task is None:
            self._fail_pending(BatcherClosedError("the audit writer never started"))
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except TimeoutError:
            log.warning("batcher_stop_timeout", pending=len(self._pending))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_pending(BatcherClosedError("the audit writer stopped"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if not self._closing and len(self._pending) < self._size:
                remaining = self._pending[0][2] + self._wait - loop.time()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), timeout=remaining)
            batch = [(item, fut) for item, fut, _ in self._pending[: self._size]]
            del self._pending[: self._size]
            if len(self._pending) < self._size and not self._closing:
                self._full.clear()
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        # A caller that was cancelled (consumer stopping) had its message handed back already:
        # writing its item would only create a duplicate.
        live = [(item, fut) for item, fut in batch if not fut.done()]
        if not live:
            return
        try:
            await self._write([item for item, _ in live])
        except asyncio.CancelledError:
            _settle(live, BatcherClosedError("the audit writer was cancelled mid-batch"))
            raise
        except Exception as exc:
            if len(live) > 1 and self._isolate(exc):
                log.warning("batch_failed_isolating", size=len(live), error=str(exc))
                for one in live:
                    await self._flush([one])
                return
            log.error("batch_failed", size=len(live), error=str(exc))
            _settle(live, exc)
        else:
            _settle(live, None)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, []
        _settle([(item, fut) for item, fut, _ in pending], exc)


async def submit_retrying(
    batcher: Batcher[T],
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


def _settle(batch: Sequence[tuple[object, asyncio.Future[None]]], exc: BaseException | None
            ) -> None:
    for _, fut in batch:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
