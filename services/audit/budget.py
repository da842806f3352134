"""A bound on the fact bytes audit holds in process at once.

Why: the consumer's prefetch counts *messages*, and a message is a batch of up to
:data:`shared.contracts.MAX_FACTS_PER_BATCH` facts. Behind a deep queue (a burst, an outage of
audit's database) a prefetch of 1,000 batches of ~100 facts each put ~100,000 decoded facts in
memory at once, with a task each: audit's RSS grew past 680 MiB in the overload phases of the
benchmark. Each fact message now takes its body's size from a budget before it is decoded and
gives it back once its facts are committed (or parked); a message that finds the budget spent
waits, unacked, as the rest of the prefetch does.

Two budgets (:func:`services.audit.decisions.budget_of`): delivery facts wait for their
event's acceptance (:mod:`services.audit.ordering`) while holding their share, so the
acceptances must never queue behind them for the same budget — else they would all run out
their deadline and be stored unlinked. Delivery facts have one budget, everything else the
other, and a commit frees the latter whatever the former is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    """At most ``limit`` bytes held at once; a larger single hold is cut to ``limit`` (it then
    goes alone). Waiters are served in arrival order."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the budget must be at least one byte")
        self._limit = limit
        self._held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> int:
        """Bytes held now."""
        return self._held

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most the limit) for the block's duration."""
        size = max(0, min(size, self._limit))
        if self._waiters or self._held + size > self._limit:
            future = asyncio.get_running_loop().create_future()
            entry = (size, future)
            self._waiters.append(entry)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(size)  # granted as it was cancelled: give it back
                else:
                    with contextlib.suppress(ValueError):  # _grant may have dropped it
                        self._waiters.remove(entry)
                    self._grant()  # it may have been the one holding the others back
                raise
        else:
            self._held += size
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self._held -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():  # cancelled, its task not yet told
                self._waiters.popleft()
                continue
            if self._held + size > self._limit:
                return
            self._waiters.popleft()
            self._held += size
            future.set_result(None)
