"""The overload and backlog phases' verdicts, on made-up arrivals (pure logic, no broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench.backlog import _delivered, busy_rate, schedule_check
from bench.overload import PROBE_STEP_S, per_second, recovery_s, window_means


def test_per_second_counts_arrivals_by_whole_second_of_the_phase() -> None:
    bins = [[100, 3], [105, 2], [119, 1], [125, 4], [90, 7]]  # 0.1 s bins: 10.0 s … 12.5 s
    assert per_second(bins, 0.1, 10.0, 13.0) == [5, 1, 4]


@given(st.lists(st.integers(0, 1000), min_size=0, max_size=40), st.integers(0, 10),
       st.integers(1, 6))
def test_window_means_cover_whole_windows_after_the_fill(series: list[int], skip: int,
                                                         width: int) -> None:
    means = window_means(series, skip, width)
    assert len(means) == max(0, (len(series) - skip) // width)
    for i, mean in enumerate(means):
        assert mean == sum(series[skip + i * width:skip + (i + 1) * width]) / width


def test_recovery_is_the_first_batch_after_which_every_batch_is_under_the_limit() -> None:
    drained = 100.0
    batches = [(98.0, 900.0), (100.0, 50.0), (102.0, 700.0), (104.0, 40.0), (106.0, 30.0)]
    assert recovery_s(batches, drained, 100.0) == 104.0 + PROBE_STEP_S - drained
    assert recovery_s([(96.0, 20.0), (98.0, 30.0)], drained, 100.0) == 0.0  # before the drain
    assert recovery_s([*batches, (108.0, None)], drained, 100.0) is None  # last one undelivered
    assert recovery_s([*batches, (108.0, 500.0)], drained, 100.0) is None


def test_busy_rate_is_the_pace_of_the_middle_of_the_arrivals() -> None:
    steady = [[k, 1] for k in range(1000, 1100)]  # 10/s for 10 s, 0.1 s bins
    assert busy_rate(steady, 0.1) == 9.9
    waited = [[0, 1], *steady]  # one early arrival, 100 s of wait: not the drain's pace
    rate = busy_rate(waited, 0.1)
    assert rate is not None and 9.5 <= rate <= 10.5
    assert busy_rate([[0, 3]], 0.1) is None


def test_schedule_check_tells_early_from_late_attempts() -> None:
    delays = (5.0, 60.0)
    on_time = {"a": [0.0, 5.0, 65.0], "b": [0.0, 4.2, 64.0]}
    result = schedule_check(on_time, delays, 0.2)
    assert (result["waits"], result["early"], result["late"], result["respected"]) == (
        4, 0, 0, True)
    early = schedule_check({"c": [0.0, 3.0]}, delays, 0.2)  # 3 s < 5 s - 20 % - slack
    assert early["early"] == 1 and not early["respected"]
    late = schedule_check({"d": [0.0, 5.0, 125.0]}, delays, 0.2)  # waited 120 s for 60 ± 12
    assert late["late"] == 1 and late["late_by_s"]["max"] == 48.0 and late["respected"]
    beyond = schedule_check({"e": [0.0, 5.0, 65.0, 70.0]}, delays, 0.2)  # no third delay
    assert beyond["waits"] == 2


def test_schedule_check_counts_catch_up_attempts_apart_and_still_judges_the_rest() -> None:
    delays = (5.0, 60.0)
    # recovered at 20 s: "a" was sent early after it (caught up), "b" was early before it
    sampled = {"a": [0.0, 5.0, 22.0], "b": [0.0, 2.0], "c": [30.0, 35.0, 95.0]}
    result = schedule_check(sampled, delays, 0.2, caught_up_from=20.0)
    assert (result["caught_up"], result["early"], result["waits"]) == (1, 1, 4)
    assert not result["respected"]  # "b" broke the schedule before the recovery
    caught = schedule_check({"a": [0.0, 5.0, 22.0]}, delays, 0.2, caught_up_from=20.0)
    assert (caught["caught_up"], caught["early"], caught["respected"]) == (1, 0, True)
    # without the mode, the same attempt is early
    assert schedule_check({"a": [0.0, 5.0, 22.0]}, delays, 0.2)["early"] == 1


class _Counts:
    """The two counters the backlog's drain wait reads: the sink's deliveries, the
    deliverers' dead letters."""

    def __init__(self, delivered: int, dead: float) -> None:
        self.delivered, self.dead = delivered, dead

    async def count(self, _phase: str, _group: str) -> int:
        return self.delivered

    async def dead_lettered(self) -> float:
        return self.dead


def _bench(counts: _Counts) -> Any:
    return SimpleNamespace(sink=counts, dead_lettered=counts.dead_lettered)


def test_the_drain_wait_stops_once_the_missing_deliveries_are_dead_letters() -> None:
    """A schedule shorter than the pile-up runs the first deliveries out of attempts: the wait
    for the backlog to drain ends (not delivered) instead of lasting its whole timeout."""
    counts = _Counts(delivered=19_998, dead=7.0)  # 5 dead letters before the phase
    done = asyncio.run(asyncio.wait_for(_delivered(_bench(counts), "p", 20_000, 3600.0, 5.0),
                                        timeout=5.0))
    assert done is False


def test_the_drain_wait_keeps_waiting_for_deliveries_not_dead_lettered() -> None:
    counts = _Counts(delivered=19_998, dead=6.0)  # one dead letter: one delivery still to come
    done = asyncio.run(_delivered(_bench(counts), "p", 20_000, 1.5, 5.0))
    assert done is False  # the timeout, after polling
    counts.delivered = 20_000
    assert asyncio.run(_delivered(_bench(counts), "p", 20_000, 1.5, 5.0)) is True
