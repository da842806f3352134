"""The benchmark's sustained rate: a paced rate with every queue bounded, found by bisection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.monitor import QueueSampler
from bench.report import growing_queues, sustained_phase, sustains
from bench.run import Bench, Options, Target


def _sampler(depths: list[int], every: float = 0.5) -> QueueSampler:
    sampler = QueueSampler("amqp://unused/", ["q"])
    sampler.samples = [(i * every, {"q": depth}) for i, depth in enumerate(depths)]
    return sampler


def test_a_queue_that_fills_and_holds_is_not_growing_once_settled() -> None:
    # fills to 300 in the first second of a 10-second load, then holds
    depths = [0, 150, 300] + [300] * 18
    figures = _sampler(depths).window(0.0, 10.0, load_end=10.0, settled_from=5.0)["q"]
    assert figures["slope_per_s"] > 10  # the fill, over the whole load
    assert figures["settled_slope_per_s"] == 0.0
    assert figures["at_load_end"] == 300


def test_a_queue_that_keeps_growing_shows_its_rate_once_settled() -> None:
    depths = [round(40 * i * 0.5) for i in range(21)]  # 40 messages/s throughout
    figures = _sampler(depths).window(0.0, 10.0, load_end=10.0, settled_from=5.0)["q"]
    assert figures["settled_slope_per_s"] == 40.0


def _paced(rate: float, *, slope: float = 0.0, at_end: int = 0, got: float | None = None,
           drain: float = 0.1, duration: float = 16.0) -> dict[str, Any]:
    return {"target": "dihya-amqp", "mode": "paced", "offered_dps": rate,
            "throughput_dps": rate if got is None else got, "duration_s": duration,
            "expected": 100, "delivered": 100, "drain_s": drain,
            "queues": {"q": {"slope_per_s": slope, "settled_slope_per_s": slope,
                             "at_load_end": at_end, "max": at_end, "end": 0}}}


def test_growth_counts_only_when_the_queue_holds_what_it_grew() -> None:
    # 2 % of 500/s is 10/s; over the second half of 16 s that is at least 80 messages
    assert growing_queues(_paced(500, slope=30, at_end=400)) == ["q"]
    assert growing_queues(_paced(500, slope=30, at_end=0)) == []  # a swing back to empty
    assert growing_queues(_paced(500, slope=5, at_end=400)) == []  # a standing queue


def test_a_rate_is_sustained_only_if_kept_up_with_every_queue_bounded() -> None:
    assert sustains(_paced(500))
    assert not sustains(_paced(500, got=400))  # fell behind while loaded
    assert not sustains(_paced(500, drain=5.0))  # a backlog left when load stopped
    assert not sustains(_paced(500, slope=30, at_end=400))


def test_the_sustained_phase_is_the_highest_rate_sustained() -> None:
    results = {"phases": [_paced(300), _paced(450), _paced(600, got=480), _paced(525)]}
    found = sustained_phase(results, "dihya-amqp")
    assert found is not None and found["offered_dps"] == 525
    assert sustained_phase({"phases": [_paced(600, got=300)]}, "dihya-amqp") is None


class _Capacity(Bench):
    """A bench whose target sustains any rate up to ``capacity`` (no processes)."""

    def __init__(self, capacity: float, steps: int) -> None:
        super().__init__(Options(out=Path("unused"), search_steps=steps), None,  # type: ignore[arg-type]
                         None, None, None)  # type: ignore[arg-type]
        self.capacity = capacity
        self.tried: list[float] = []

    async def phase(self, target: Target, mode: str, *, rate: float | None = None,
                    **_: Any) -> dict[str, Any]:
        assert rate is not None
        self.tried.append(round(rate, 3))
        over = max(0.0, rate - self.capacity)  # what piles up in a queue each second
        result = _paced(rate, slope=over, at_end=round(over * 16))
        self.phases.append(result)
        return result


def _search(capacity: float, held: dict[float, bool], steps: int = 2) -> _Capacity:
    bench = _Capacity(capacity, steps)
    target = Target("dihya-amqp", None, 1, "main", True)  # type: ignore[arg-type]
    asyncio.run(bench.search(target, 1000.0, held))
    return bench


def test_the_search_bisects_between_the_best_fraction_held_and_the_next() -> None:
    swept = {0.25: True, 0.5: True, 0.75: True, 1.0: False, 1.2: False}
    assert _search(900.0, swept).tried == [875.0, 937.5]
    assert _search(780.0, swept).tried == [875.0, 812.5]
    found = sustained_phase({"phases": _search(780.0, swept).phases}, "dihya-amqp")
    assert found is None  # the search's own phases only: 0.75 x S was the sweep's
    found = sustained_phase({"phases": _search(900.0, swept).phases}, "dihya-amqp")
    assert found is not None and found["offered_dps"] == 875.0


def test_when_every_fraction_was_held_the_search_looks_above_first() -> None:
    # held at 1.2 S: 1.4 S held too, 1.6 S not; then bisect between them
    assert _search(1450.0, {0.5: True, 1.2: True}).tried == [1400.0, 1600.0, 1500.0, 1450.0]
    # held as far as it looks: the highest tried is the sustained rate
    assert _search(5000.0, {0.5: True, 1.0: True}).tried == [1200.0, 1400.0, 1600.0]


def test_nothing_held_bisects_down_from_the_lowest_fraction() -> None:
    assert _search(100.0, {0.5: False, 1.0: False}).tried == [250.0, 125.0]
