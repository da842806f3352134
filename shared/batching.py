"""Group commit: concurrent calls go to storage or the broker as one batch, each caller
awaiting its own result.

Why: every message handler runs as its own task, and one round trip per message (a database
transaction, a confirmed publish, a lookup) costs far more than its payload — a commit is an
fsync, a call through SQLAlchemy and aiosqlite costs a fraction of a millisecond even for
``SELECT 1``. A handler hands its item over with :meth:`Batcher.submit` and awaits the batch
holding it, so it still acts only once *its* item is durable (or looked up): batching changes
throughput, never the at-least-once guarantee.

With ``wait=0`` a batch leaves as soon as the writer is free: an idle system adds no latency,
and items that arrive while a batch is in flight go together in the next (the batch size
follows the load). With ``wait > 0`` a batch is flushed when ``size`` items wait or ``wait``
seconds after its first item arrived. A single writer task flushes batches in order, one at a
time: that is what keeps the audit hash chain linear within a process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import structlog

T = TypeVar("T")
R = TypeVar("R")

log = structlog.get_logger("dihya.batching")


class BatcherClosedError(RuntimeError):
    """Raised by :meth:`Batcher.submit` once the batcher is stopping."""


class WriteInterruptedError(ConnectionError):
    """A batch's write was cancelled from below — not this batcher stopping: aiormq cancels a
    publish's confirmation when its channel or connection closes. A ``ConnectionError``, so
    callers (and :func:`shared.outages.is_infrastructure`) take it for the outage it is and
    try again; the batcher itself goes on."""


class Batcher(Generic[T, R]):
    """Batches items for ``write``; :meth:`submit` resolves once the item's batch committed.

    ``write`` returns one result per item, in order (what :meth:`submit` returns), or ``None``
    when there is nothing to return (every caller then gets ``None``).

    If ``write`` raises, every item of that batch gets the exception — unless ``isolate(exc)``
    says the failure may come from one bad item (a data error rather than a lost database):
    then each item is retried alone, so one poison item cannot fail its innocent neighbours.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R] | None]],
        *,
        size: int,
        wait: float = 0.0,
        isolate: Callable[[BaseException], bool] = lambda _exc: False,
        name: str = "batcher",
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._write = write
        self._size = size
        self._wait = wait
        self._isolate = isolate
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R], float]] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait until the batch holding it is written (or raise)."""
        if self._closing:
            raise BatcherClosedError(f"{self._name} is stopping")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future, loop.time()))
        self._arrived.set()
        if len(self._pending) >= self._size:
            self._full.set()
        return await future

    async def stop(self, grace: float = 10.0) -> None:
        """Flush what is pending, then stop; after ``grace`` seconds, abandon the write.

        An abandoned write fails its callers, whose messages go back to the broker: at worst a
        record is stored *and* redelivered, and the duplicate is skipped.
        """
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._task is None:
            self._fail_pending(BatcherClosedError(f"{self._name} never started"))
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except TimeoutError:
            log.warning("batcher_stop_timeout", pending=len(self._pending))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_pending(BatcherClosedError(f"{self._name} stopped"))

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

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        # A caller that was cancelled (consumer stopping) had its message handed back already:
        # writing its item would only create a duplicate.
        live = [(item, fut) for item, fut in batch if not fut.done()]
        if not live:
            return
        try:
            results = await self._write([item for item, _ in live])
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # this batcher is being cancelled
                _settle(live, BatcherClosedError(f"{self._name} was cancelled mid-batch"))
                raise
            # Something the write awaited was cancelled, not this task (a publish whose
            # channel closed under it): a failed batch. Re-raising would end this task and
            # leave every later submit waiting for ever (measured: a deliverer whose
            # connection dropped mid-batch stopped delivering).
            log.warning("batch_interrupted", batcher=self._name, size=len(live))
            _settle(live, WriteInterruptedError(f"{self._name}: the write was interrupted"))
            return
        except Exception as exc:
            if len(live) > 1 and self._isolate(exc):
                log.warning("batch_failed_isolating", batcher=self._name, size=len(live),
                            error=str(exc))
                for one in live:
                    await self._flush([one])
                return
            log.error("batch_failed", batcher=self._name, size=len(live), error=str(exc))
            _settle(live, exc)
        else:
            if results is not None and len(results) != len(live):
                _settle(live, RuntimeError(f"{self._name}: {len(results)} results for "
                                           f"{len(live)} items"))
                return
            for index, (_, fut) in enumerate(live):
                if not fut.done():
                    fut.set_result(cast(R, None if results is None else results[index]))

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, []
        _settle([(item, fut) for item, fut, _ in pending], exc)


def _settle(batch: Sequence[tuple[object, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
