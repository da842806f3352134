"""The adaptive per-endpoint limit (pure): bounds, growth, decrease, convergence."""

from __future__ import annotations

import heapq
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from services.deliverer.concurrency import (
    MINIMUM,
    STALL_FLOOR,
    AdaptiveLimit,
    congested,
)

maxima = st.integers(min_value=1, max_value=200)
initials = st.integers(min_value=1, max_value=50)


def test_what_counts_as_congestion() -> None:
    assert congested(503) and congested(500) and congested(429)
    assert congested(None, "timeout") and congested(None, "connection_error")
    assert not congested(200) and not congested(404) and not congested(410)
    assert not congested(None, "ssrf_blocked") and not congested(None, "headers_key")


event = st.one_of(
    st.tuples(st.just("answer"), st.floats(0, 30), st.booleans(), st.integers(1, 500)),
    st.tuples(st.just("stall"), st.floats(0, 60), st.booleans(), st.integers(1, 1)),
)


@given(maxima, initials, st.lists(event, max_size=300))
def test_the_limit_stays_between_one_and_the_maximum(
        maximum: int, initial: int, events: list[tuple[str, float, bool, int]]) -> None:
    limiter = AdaptiveLimit(maximum, initial)
    now = 0.0
    assert MINIMUM <= limiter.limit <= maximum
    for kind, seconds, failed, demand in events:
        now += 0.01
        if kind == "answer":
            limiter.record(started=now, finished=now + seconds, failed=failed, demand=demand)
            now += seconds
        else:
            limiter.stalled(seconds, now)
        assert MINIMUM <= limiter.limit <= maximum


@given(maxima, initials, st.floats(0.001, 0.5), st.integers(1, 300))
def test_it_grows_by_one_per_good_answer_while_the_endpoint_is_busy(
        maximum: int, initial: int, latency: float, answers: int) -> None:
    limiter = AdaptiveLimit(maximum, initial)
    start = limiter.limit
    now = 0.0
    for _ in range(answers):
        before = limiter.limit
        limiter.record(started=now, finished=now + latency, failed=False, demand=before + 5)
        now += latency
        assert limiter.limit >= before
    assert limiter.limit == min(maximum, start + answers)


@given(maxima, st.integers(1, 200), st.floats(0.001, 15))
def test_an_error_halves_it_once_per_round_trip(
        maximum: int, initial: int, latency: float) -> None:
    limiter = AdaptiveLimit(maximum, initial)
    before = limiter.limit
    # a burst of errors from POSTs sent under the same limit: one halving
    for _ in range(before):
        limiter.record(started=0.0, finished=latency, failed=True, demand=before)
    assert limiter.limit == max(MINIMUM, int(before * 0.5))
    # errors of POSTs sent after it: halving again, down to one
    now = latency
    for _ in range(12):
        limiter.record(started=now, finished=now + latency, failed=True, demand=before)
        now += latency
    assert limiter.limit == MINIMUM


@given(st.integers(2, 200), st.floats(0.01, 2))
def test_a_latency_growth_shrinks_it(maximum: int, latency: float) -> None:
    limiter = AdaptiveLimit(maximum, maximum)
    now = 0.0
    for _ in range(50):  # learn the endpoint's usual latency
        limiter.record(started=now, finished=now + latency, failed=False, demand=1)
        now += latency
    before = limiter.limit
    slow = 3 * latency + 0.1
    seen = []
    for _ in range(10):
        limiter.record(started=now, finished=now + slow, failed=False, demand=before)
        now += slow
        seen.append(limiter.limit)
    # cut (10 % a round trip) while the latency is above the endpoint's usual; a lasting
    # change becomes the new usual later (the long average follows it), as in Gradient2
    assert min(seen) < before


@given(st.integers(2, 200), st.floats(0.001, 2), st.floats(0, 60))
def test_a_hanging_post_halves_it_each_while_and_its_late_end_says_nothing(
        maximum: int, latency: float, extra: float) -> None:
    limiter = AdaptiveLimit(maximum, maximum)
    limiter.record(started=0.0, finished=latency, failed=False, demand=1)
    threshold = max(STALL_FLOOR, 4 * latency)
    assert not limiter.stalled(threshold, now=1.0)
    hang = threshold + 0.001 + extra
    now = 1.0 + hang
    assert limiter.stalled(hang, now)
    assert limiter.limit == max(MINIMUM, maximum // 2)
    assert not limiter.stalled(hang + 0.001, now + 0.001)  # not again at once
    while limiter.limit > MINIMUM:  # it keeps hanging: halved each threshold
        now += threshold + 0.001
        hang += threshold + 0.001
        assert limiter.stalled(hang, now)
    # the POSTs that hung time out later: already counted, no further change
    limiter.record(started=0.5, finished=now, failed=True, demand=maximum)
    assert limiter.limit == MINIMUM


@given(st.integers(1, 50), st.integers(1, 500))
def test_with_no_work_it_never_falls_below_the_initial_limit(initial: int, answers: int) -> None:
    limiter = AdaptiveLimit(100, initial)
    for n in range(answers):  # one job at a time
        limiter.record(started=n, finished=n + 0.01, failed=False, demand=1)
        assert initial <= limiter.limit <= max(initial, 2)  # (one, filled, grows to two)


def simulate(limiter: AdaptiveLimit, latency: float, rate: float, seconds: float) -> list[int]:
    """A steady receiver (every POST takes ``latency``) offered ``rate`` jobs/s, evenly; jobs
    over the limit wait in order. Returns the limit after each answer in the second half of
    the offer (not the drain after it)."""
    arrivals = [n / rate for n in range(int(seconds * rate))]
    finishing: list[tuple[float, float]] = []  # (finished, started)
    waiting: list[float] = []
    limits: list[int] = []
    next_arrival = 0
    while next_arrival < len(arrivals) or finishing:
        arrival = arrivals[next_arrival] if next_arrival < len(arrivals) else math.inf
        if finishing and finishing[0][0] <= arrival:
            finished, started = heapq.heappop(finishing)
            demand = len(finishing) + 1 + len(waiting)
            limiter.record(started=started, finished=finished, failed=False, demand=demand)
            while waiting and len(finishing) < limiter.limit:
                waiting.pop(0)
                heapq.heappush(finishing, (finished + latency, finished))
            if seconds / 2 < finished <= arrivals[-1]:
                limits.append(limiter.limit)
        else:
            next_arrival += 1
            if len(finishing) < limiter.limit and not waiting:
                heapq.heappush(finishing, (arrival + latency, arrival))
            else:
                waiting.append(arrival)
    return limits


@settings(deadline=None, max_examples=40)
@given(st.floats(0.005, 0.5), st.floats(10, 400), st.integers(1, 30))
def test_a_steady_receiver_settles_near_latency_times_rate(
        latency: float, rate: float, initial: int) -> None:
    needed = latency * rate  # Little's law
    maximum = 200
    limiter = AdaptiveLimit(maximum, initial)
    limits = simulate(limiter, latency, rate, seconds=max(20.0, 400 / rate))
    assert limits
    low, high = math.floor(needed), max(initial, math.ceil(1.5 * needed) + 2)
    assert all(low <= limit <= high for limit in limits), (needed, min(limits), max(limits))
