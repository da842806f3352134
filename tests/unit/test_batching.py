"""shared.batching.Batcher and audit's submit_retrying: size/time flushing, one batch at a time,
failures reach every waiter, draining, per-item results."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.audit.batcher import submit_retrying
from shared import outages
from shared.batching import Batcher, BatcherClosedError, WriteInterruptedError


class Recorder:
    """A fake store: records batches, can fail or block on demand, checks no overlap."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.active = 0
        self.fail: Exception | None = None
        self.poison: set[int] = set()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def write(self, items: Sequence[int]) -> None:
        self.active += 1
        assert self.active == 1, "two batches written at once"
        try:
            self.entered.set()
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            if self.poison & set(items):
                raise ValueError("poison")
            self.batches.append(list(items))
        finally:
            self.active -= 1


async def test_full_batches_flush_without_waiting() -> None:
    rec = Recorder()
    batcher = Batcher(rec.write, size=10, wait=60.0)  # the wait would time the test out
    batcher.start()
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(30))), 5)
    assert [len(b) for b in rec.batches] == [10, 10, 10]
    assert sorted(i for batch in rec.batches for i in batch) == list(range(30))
    await batcher.stop()


async def test_partial_batch_flushes_after_the_wait() -> None:
    rec = Recorder()
    batcher = Batcher(rec.write, size=100, wait=0.02)
    batcher.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3))), 5)
    assert loop.time() - started >= 0.02
    assert rec.batches == [[0, 1, 2]]
    await batcher.stop()


async def test_submit_resolves_only_after_the_write() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    batcher = Batcher(rec.write, size=2, wait=0.0)
    batcher.start()
    waiter = asyncio.ensure_future(batcher.submit(1))
    await rec.entered.wait()
    assert not waiter.done()
    rec.gate.set()
    await asyncio.wait_for(waiter, 5)
    assert rec.batches == [[1]]
    await batcher.stop()


async def test_items_arriving_during_a_write_form_the_next_batch() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    batcher = Batcher(rec.write, size=50, wait=0.0)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(0))
    await rec.entered.wait()
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert batcher.pending == 5
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert rec.batches == [[0], [1, 2, 3, 4, 5]]
    await batcher.stop()


async def test_a_failed_write_fails_every_waiter_of_the_batch() -> None:
    rec = Recorder()
    rec.fail = ConnectionError("db gone")
    batcher = Batcher(rec.write, size=5, wait=0.01)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    rec.fail = None
    await asyncio.wait_for(batcher.submit(9), 5)  # the writer survives a failed batch
    assert rec.batches == [[9]]
    await batcher.stop()


async def test_data_errors_are_isolated_to_the_poison_item() -> None:
    rec = Recorder()
    rec.poison = {3}
    batcher = Batcher(rec.write, size=5, wait=0.01,
                      isolate=lambda exc: isinstance(exc, ValueError))
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)),
                                   return_exceptions=True)
    assert [isinstance(r, ValueError) for r in results] == [False, False, False, True, False]
    assert rec.batches == [[0], [1], [2], [4]]
    await batcher.stop()


async def test_cancelled_waiters_are_not_written() -> None:
    rec = Recorder()
    batcher = Batcher(rec.write, size=10, wait=0.05)
    batcher.start()
    gone = asyncio.ensure_future(batcher.submit(1))
    kept = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.wait_for(kept, 5)
    assert rec.batches == [[2]]
    await batcher.stop()


async def test_stop_flushes_pending_items_then_refuses_new_ones() -> None:
    rec = Recorder()
    batcher = Batcher(rec.write, size=100, wait=60.0)
    batcher.start()
    waiters = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.stop(), 5)
    await asyncio.gather(*waiters)
    assert rec.batches == [[0, 1, 2]]
    with pytest.raises(BatcherClosedError):
        await batcher.submit(4)


async def test_stop_abandons_a_hung_write_after_the_grace() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()  # never set: the database hangs
    batcher = Batcher(rec.write, size=1, wait=0.0)
    batcher.start()
    waiter = asyncio.ensure_future(batcher.submit(1))
    await rec.entered.wait()
    await asyncio.wait_for(batcher.stop(grace=0.05), 5)
    with pytest.raises(BatcherClosedError):
        await waiter
    assert rec.batches == []


async def test_submit_retrying_waits_out_transient_failures() -> None:
    rec = Recorder()
    failures = [ConnectionError("db down"), ConnectionError("still down")]
    real_write = rec.write

    async def flaky(items: Sequence[int]) -> None:
        if failures:
            raise failures.pop(0)
        await real_write(items)

    batcher = Batcher(flaky, size=10, wait=0.0)
    batcher.start()
    await asyncio.wait_for(submit_retrying(
        batcher, 7, transient=lambda e: isinstance(e, ConnectionError),
        first_delay=0.001, max_delay=0.002), 5)
    assert rec.batches == [[7]] and not failures
    await batcher.stop()


async def test_submit_retrying_raises_other_failures() -> None:
    rec = Recorder()
    rec.fail = ValueError("bad row")
    batcher = Batcher(rec.write, size=10, wait=0.0)
    batcher.start()
    with pytest.raises(ValueError, match="bad row"):
        await submit_retrying(batcher, 7, transient=lambda e: isinstance(e, ConnectionError),
                              first_delay=0.001)
    await batcher.stop()


def test_only_connectivity_failures_count_as_transient() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    from services.audit.store import is_transient

    assert is_transient(OperationalError("INSERT", {}, Exception("database is locked")))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bad value"))


async def test_each_caller_gets_its_own_result_in_order() -> None:
    async def double(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        return [2 * i for i in items]

    batcher: Batcher[int, int] = Batcher(double, size=4)
    batcher.start()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(10))), 5)
    assert results == [2 * i for i in range(10)]
    await batcher.stop()


async def test_items_arriving_during_a_write_go_together_in_the_next() -> None:
    """wait=0: the first item leaves at once, the ones behind it are grouped (group commit)."""
    rec = Recorder()
    rec.gate = asyncio.Event()
    batcher = Batcher(rec.write, size=100)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(0))
    await rec.entered.wait()
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 8)]
    await asyncio.sleep(0)
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert rec.batches == [[0], [1, 2, 3, 4, 5, 6, 7]]
    await batcher.stop()


async def test_a_write_returning_the_wrong_number_of_results_fails_its_callers() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[:-1]

    batcher: Batcher[int, int] = Batcher(short, size=3, wait=0.01)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.stop()


async def test_a_write_cancelled_from_below_fails_its_batch_and_the_batcher_goes_on() -> None:
    """aiormq cancels a publish's confirmation when the channel closes: that is a failed
    batch (an outage, retried by the callers), not the batcher's own end."""
    written: list[list[int]] = []
    calls = 0

    async def write(items: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            confirmation: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            confirmation.cancel()  # what aiormq does to a pending confirm on close
            await confirmation
        written.append(list(items))

    batcher: Batcher[int, None] = Batcher(write, size=10)
    batcher.start()
    with pytest.raises(WriteInterruptedError) as failed:
        await batcher.submit(1)
    assert outages.is_infrastructure(failed.value)
    await asyncio.wait_for(batcher.submit(2), timeout=5)  # still running
    assert written == [[2]]
    await batcher.stop()


async def test_cancelling_the_batcher_mid_write_still_ends_it() -> None:
    started = asyncio.Event()

    async def write(items: Sequence[int]) -> None:
        started.set()
        await asyncio.sleep(3600)

    batcher: Batcher[int, None] = Batcher(write, size=10)
    batcher.start()
    waiting = asyncio.ensure_future(batcher.submit(1))
    await started.wait()
    await batcher.stop(grace=0.1)  # cancels the task mid-write
    with pytest.raises(BatcherClosedError):
        await waiting
