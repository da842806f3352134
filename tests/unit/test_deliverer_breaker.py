"""The deliverer's circuit breaker: when an endpoint's breaker opens and closes
(``decisions/breaker.py``, checked against a plain model with hypothesis), and what its floor
does to ``next_step``: only waits grow, in a tier of the delivery's schedule, a receiver's
longer ``Retry-After`` still wins, and the last attempt stays the schedule's. Also: the
retries it sends to a longer tier are among those a catch-up sweeps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.deliverer.decisions import (
    MAX_RETRY_AFTER_MS,
    DeadLetter,
    Done,
    Retry,
    classify,
    next_step,
)
from services.deliverer.decisions.breaker import (
    Breaker,
    Transition,
    applied_floor,
    deferral,
    lengthens,
)
from services.deliverer.decisions.catchup import tiers_to_sweep, wants_catch_up
from services.deliverer.settings import Settings
from shared.contracts import AttemptRecord, DeliveryJob, Event
from shared.schedules import parse_schedule
from shared.topology import DEFAULT_DEFER_DELAYS_MS, TIER_HEADROOM, defer_tiers, tier_ttl

NOW = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)
DEFAULT = parse_schedule("5s,5m,30m,2h,5h,10h,10h")
BENCH = parse_schedule("5s,30s,2m")
OK = classify(200, now=NOW)
DOWN = classify(503, now=NOW)
TIMEOUT = classify(None, error="timeout", error_text="timeout after 15s", now=NOW)
GONE = classify(410, now=NOW)  # not retried
BLOCKED = classify(None, error="ssrf_blocked", now=NOW)  # not retried
OUTCOMES = {"ok": OK, "503": DOWN, "timeout": TIMEOUT, "404": classify(404, now=NOW),
            "429": classify(429, now=NOW), "410": GONE, "ssrf": BLOCKED}


# -- opening and closing ---------------------------------------------------------------------

def test_it_opens_at_exactly_the_after_th_failure_in_a_row_and_a_delivery_closes_it() -> None:
    breaker = Breaker(after=3, wait_ms=60_000)
    assert breaker.observe("ep", DOWN) is None
    assert breaker.observe("ep", TIMEOUT) is None
    assert not breaker.is_open("ep") and breaker.floor_ms("ep") is None
    assert breaker.observe("ep", DOWN) == Transition("open", 3)
    assert breaker.is_open("ep") and breaker.floor_ms("ep") == 60_000
    assert breaker.open_count() == 1
    assert breaker.observe("ep", DOWN) is None  # open already: no second transition
    assert breaker.failures("ep") == 4
    assert breaker.observe("ep", OK) == Transition("closed", 4)
    assert not breaker.is_open("ep") and breaker.failures("ep") == 0
    assert breaker.open_count() == 0 and len(breaker) == 0  # a delivering endpoint: forgotten
    # the count starts again from zero
    assert [breaker.observe("ep", DOWN) for _ in range(3)] == [None, None, Transition("open", 3)]


def test_a_delivery_before_the_after_th_failure_resets_the_count() -> None:
    breaker = Breaker(after=3, wait_ms=60_000)
    breaker.observe("ep", DOWN)
    breaker.observe("ep", DOWN)
    assert breaker.observe("ep", OK) is None  # was not open: no transition
    assert breaker.observe("ep", DOWN) is None
    assert breaker.observe("ep", DOWN) is None
    assert not breaker.is_open("ep")


def test_failures_that_are_not_retried_neither_count_nor_reset() -> None:
    breaker = Breaker(after=2, wait_ms=1_000)
    breaker.observe("ep", DOWN)
    assert breaker.observe("ep", GONE) is None and breaker.observe("ep", BLOCKED) is None
    assert breaker.failures("ep") == 1
    assert breaker.observe("ep", DOWN) == Transition("open", 2)
    assert breaker.observe("ep", GONE) is None and breaker.is_open("ep")


def test_endpoints_are_independent() -> None:
    breaker = Breaker(after=2, wait_ms=1_000)
    breaker.observe("a", DOWN)
    breaker.observe("b", DOWN)
    breaker.observe("b", OK)
    assert breaker.observe("a", DOWN) == Transition("open", 2)
    assert not breaker.is_open("b") and breaker.floor_ms("b") is None
    assert breaker.observe("b", DOWN) is None  # b's count restarted at its delivery
    assert breaker.is_open("a") and breaker.open_count() == 1


def test_after_zero_never_opens_and_remembers_nothing() -> None:
    breaker = Breaker(after=0, wait_ms=60_000)
    assert not breaker.enabled
    for _ in range(1000):
        assert breaker.observe("ep", DOWN) is None
    assert not breaker.is_open("ep") and breaker.floor_ms("ep") is None
    assert len(breaker) == 0 and breaker.open_count() == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Breaker(after=-1, wait_ms=1)
    with pytest.raises(ValueError, match="remembered >= 1"):
        Breaker(after=1, wait_ms=1, remembered=0)


@settings(max_examples=300)
@given(after=st.integers(0, 6),
       steps=st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from(sorted(OUTCOMES))),
                      max_size=120))
def test_it_follows_the_plain_model(after: int, steps: list[tuple[str, str]]) -> None:
    """Against a model that counts failures in a row per endpoint without a bound: the same
    states, the same transitions, and the gauge is the number of open endpoints."""
    breaker = Breaker(after=after, wait_ms=30_000)
    run: dict[str, int] = {}
    for endpoint, name in steps:
        outcome = OUTCOMES[name]
        before = run.get(endpoint, 0)
        if outcome.delivered:
            run[endpoint] = 0
        elif outcome.retryable:
            run[endpoint] = before + 1
        change = breaker.observe(endpoint, outcome)
        if after == 0:
            assert change is None
        elif outcome.delivered and before >= after:
            assert change == Transition("closed", before)
        elif outcome.retryable and not outcome.delivered and run[endpoint] == after:
            assert change == Transition("open", after)
        else:
            assert change is None
        for e in "abcde":
            assert breaker.is_open(e) == (after > 0 and run.get(e, 0) >= after)
            assert breaker.floor_ms(e) == (30_000 if breaker.is_open(e) else None)
        assert breaker.open_count() == sum(
            1 for n in run.values() if after > 0 and n >= after)


@settings(max_examples=200)
@given(remembered=st.integers(1, 8), after=st.integers(1, 3),
       steps=st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=200))
def test_memory_is_bounded_and_the_gauge_stays_true(
        remembered: int, after: int, steps: list[tuple[int, bool]]) -> None:
    breaker = Breaker(after=after, wait_ms=1_000, remembered=remembered)
    for n, failed in steps:
        breaker.observe(f"ep{n}", DOWN if failed else OK)
        assert len(breaker) <= remembered
        assert breaker.open_count() == sum(
            1 for e in range(21) if breaker.is_open(f"ep{e}"))


def test_the_least_recently_seen_failing_endpoint_is_forgotten_first() -> None:
    breaker = Breaker(after=1, wait_ms=1_000, remembered=2)
    breaker.observe("old", DOWN)
    breaker.observe("kept", DOWN)
    breaker.observe("old", DOWN)  # seen again: now the most recent
    breaker.observe("new", DOWN)  # over the bound: "kept" goes
    assert breaker.is_open("old") and breaker.is_open("new") and not breaker.is_open("kept")
    assert breaker.open_count() == 2
    # forgotten means closed: it needs `after` failures again to open (1 here)
    assert breaker.observe("kept", DOWN) == Transition("open", 1)


def test_settings_defaults_and_bounds() -> None:
    settings_ = Settings()
    assert (settings_.breaker_after, settings_.breaker_wait, settings_.breaker_wait_ms) == (
        20, 60.0, 60_000)
    assert Settings(breaker_after=0).breaker_after == 0
    assert Settings(breaker_wait=0.25).breaker_wait_ms == 250
    with pytest.raises(ValidationError, match="breaker_after"):
        Settings(breaker_after=-1)
    with pytest.raises(ValidationError, match="breaker_wait"):
        Settings(breaker_wait=0)
    with pytest.raises(ValidationError, match="breaker_wait"):
        Settings(breaker_wait=3601)  # longer than a Retry-After is honoured


# -- the floor in next_step ------------------------------------------------------------------

SCHEDULES = st.sampled_from([DEFAULT, BENCH, (200, 400), (200, 200, 200, 5_000),
                             (1_000, 60_000, 600_000), (5_000,)])


@settings(max_examples=500)
@given(schedule=SCHEDULES, attempt=st.integers(1, 8), seed=st.integers(),
       jitter=st.floats(0, TIER_HEADROOM), floor_ms=st.integers(1, MAX_RETRY_AFTER_MS),
       retry_after_s=st.none() | st.integers(0, 2 * 3600),
       status=st.sampled_from([429, 500, 503]))
def test_a_floor_only_lengthens_the_wait_in_a_tier_of_the_schedule(
        schedule: tuple[int, ...], attempt: int, seed: int, jitter: float, floor_ms: int,
        retry_after_s: int | None, status: int) -> None:
    outcome = classify(status, retry_after=None if retry_after_s is None else str(retry_after_s),
                       now=NOW)
    plain = next_step(outcome, attempt, schedule, random.Random(seed), jitter)
    floored = next_step(outcome, attempt, schedule, random.Random(seed), jitter,
                        floor_ms=floor_ms)
    if attempt > len(schedule):  # exhausted schedules dead-letter at the same attempt
        assert plain == floored == DeadLetter("exhausted")
        assert not lengthens(floor_ms, outcome, attempt, schedule)
        return
    assert isinstance(plain, Retry) and isinstance(floored, Retry)
    due = schedule[attempt - 1]
    assert floored.tier_ms in schedule  # no new wait queue
    assert floored.tier_ms >= plain.tier_ms
    assert floored.delay_ms <= tier_ttl(floored.tier_ms)  # never above the queue's TTL
    assert floored.delay_ms >= due * (1 - jitter) - 1  # never shorter than its own delay
    said = outcome.retry_after_ms  # a 500's Retry-After is not read
    asked = max(floor_ms, said or 0)
    if asked > due:  # the floor or the Retry-After decides: never earlier than asked...
        wanted = min(asked, MAX_RETRY_AFTER_MS)
        if wanted <= max(schedule):
            assert floored.delay_ms >= wanted
            assert floored.tier_ms == min(t for t in schedule if t >= wanted)
        else:  # ... or the longest tier, when the schedule has none that long
            assert floored == Retry(max(schedule), max(schedule))
        assert floored.delay_ms >= due
    else:  # a floor within the attempt's own delay: its tier, at least the floor
        assert floored.tier_ms == due
        assert floored.delay_ms == max(plain.delay_ms, min(floor_ms, tier_ttl(due)))
    if said is not None and said >= floor_ms:
        assert floored == plain  # the receiver's longer Retry-After wins
    # the counter's test: counted when the wait asked for grew, and then only
    if lengthens(floor_ms, outcome, attempt, schedule):
        assert floor_ms > max(due, said or 0)
        assert floored.tier_ms > due
        assert floored.delay_ms >= min(floor_ms, max(schedule))
    else:
        assert floored.tier_ms == plain.tier_ms


@settings(max_examples=500)
@given(schedule=SCHEDULES, attempt=st.integers(1, 7), seed=st.integers(),
       jitter=st.floats(0, TIER_HEADROOM), floor_ms=st.integers(1, MAX_RETRY_AFTER_MS),
       retry_after_s=st.none() | st.integers(0, 2 * 3600))
def test_the_deliverer_applies_a_floor_only_where_it_lengthens_the_wait(
        schedule: tuple[int, ...], attempt: int, seed: int, jitter: float, floor_ms: int,
        retry_after_s: int | None) -> None:
    """What the deliverer does (``applied_floor``, then ``next_step``): a retry whose wait the
    floor would not lengthen keeps its schedule's own step, jitter included (a retry already
    in the longest tier is not pinned to exactly that tier); one it lengthens waits at least
    the floor, or the longest tier."""
    if attempt > len(schedule):
        return
    outcome = classify(503, retry_after=None if retry_after_s is None else str(retry_after_s),
                       now=NOW)
    plain = next_step(outcome, attempt, schedule, random.Random(seed), jitter)
    floor = applied_floor(floor_ms, outcome, attempt, schedule)
    used = next_step(outcome, attempt, schedule, random.Random(seed), jitter, floor_ms=floor)
    assert isinstance(plain, Retry) and isinstance(used, Retry)
    if floor is None:
        assert used == plain
        assert not lengthens(floor_ms, outcome, attempt, schedule)
    else:
        assert floor == floor_ms
        assert used.tier_ms > plain.tier_ms or used.delay_ms >= min(floor_ms, max(schedule))
        assert used.delay_ms >= min(floor_ms, max(schedule)) > (outcome.retry_after_ms or 0)


def test_a_retry_already_in_the_longest_tier_keeps_its_jitter() -> None:
    """The catch-up e2e's schedule (1s,20s): the 20 s retry of an open endpoint is not pinned
    to exactly 20 s by a 60 s wait; the 1 s one rides the 20 s tier, in full."""
    schedule = (1_000, 20_000)
    assert applied_floor(60_000, DOWN, 2, schedule) is None
    assert applied_floor(60_000, DOWN, 1, schedule) == 60_000
    assert next_step(DOWN, 1, schedule, random.Random(1), floor_ms=60_000) == Retry(
        20_000, 20_000)


@settings(max_examples=200)
@given(schedule=SCHEDULES, seed=st.integers(), floor_ms=st.integers(1, MAX_RETRY_AFTER_MS))
def test_the_last_attempt_stays_the_schedules(schedule: tuple[int, ...], seed: int,
                                              floor_ms: int) -> None:
    """Attempt by attempt, a delivery failing for good: as many retries with the floor as
    without, the same dead letter after the last."""
    rng = random.Random(seed)
    steps = [next_step(DOWN, n, schedule, rng, floor_ms=floor_ms)
             for n in range(1, len(schedule) + 2)]
    assert all(isinstance(s, Retry) for s in steps[:-1])
    assert steps[-1] == DeadLetter("exhausted")


def test_the_floor_leaves_deliveries_and_permanent_failures_alone() -> None:
    rng = random.Random(1)
    assert next_step(OK, 1, DEFAULT, rng, floor_ms=60_000) == Done()
    assert next_step(GONE, 1, DEFAULT, rng, floor_ms=60_000) == DeadLetter("gone")
    assert not lengthens(60_000, OK, 1, DEFAULT) and not lengthens(60_000, GONE, 1, DEFAULT)
    assert not lengthens(None, DOWN, 1, DEFAULT)


def test_the_default_and_bench_schedules_with_the_default_wait() -> None:
    """60 s: attempt 1 (5 s) rides the 5 min tier with a 60-72 s expiration; attempt 2 of the
    default schedule (5 min) is left as it was. In the bench's schedule (5s,30s,2m), attempts
    1 and 2 ride the 2 min tier."""
    first = next_step(DOWN, 1, DEFAULT, random.Random(4), 0.2, floor_ms=60_000)
    assert isinstance(first, Retry) and first.tier_ms == 300_000
    assert 60_000 <= first.delay_ms <= 72_000
    second = next_step(DOWN, 2, DEFAULT, random.Random(4), 0.2, floor_ms=60_000)
    assert second == next_step(DOWN, 2, DEFAULT, random.Random(4), 0.2)
    assert lengthens(60_000, DOWN, 1, DEFAULT) and not lengthens(60_000, DOWN, 2, DEFAULT)
    for attempt in (1, 2):
        step = next_step(DOWN, attempt, BENCH, random.Random(attempt), 0.2, floor_ms=60_000)
        assert isinstance(step, Retry) and step.tier_ms == 120_000
        assert step.delay_ms >= 60_000
    # a schedule with no tier as long as the wait: its longest, in full
    short = next_step(DOWN, 1, (200, 400), random.Random(1), 0.2, floor_ms=60_000)
    assert short == Retry(400, 400)


# -- catch-up --------------------------------------------------------------------------------

def _retried(attempt: int, waited: timedelta) -> DeliveryJob:
    history = tuple(AttemptRecord(attempt=n, at=NOW - waited, outcome="failed", status_code=503,
                                  duration_ms=2.0) for n in range(1, attempt))
    return DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url="https://r.example/h",
                       event=Event(id="evt_1", event="a.b", timestamp=NOW, data={}),
                       attempt=attempt, history=history)


@pytest.mark.parametrize("schedule", [DEFAULT, BENCH])
def test_retries_the_breaker_lengthened_are_swept_and_their_delivery_asks_for_a_sweep(
        schedule: tuple[int, ...]) -> None:
    """With the default 60 s wait, every tier the breaker sends a retry to is one a catch-up
    sweeps (30 s and longer, the delivery's schedule among them), and a retry delivered after
    its lengthened wait is on its schedule: it asks for the catch-up."""
    minimum = Settings().catch_up_min_tier_ms
    for attempt in range(1, len(schedule) + 1):
        step = next_step(DOWN, attempt, schedule, random.Random(attempt), 0.2, floor_ms=60_000)
        assert isinstance(step, Retry)
        assert step.tier_ms in tiers_to_sweep(schedule, minimum)
        back = _retried(attempt + 1, timedelta(milliseconds=step.delay_ms))
        assert wants_catch_up(back, True, schedule, 0.2, NOW)


# -- deferrals of an open endpoint -----------------------------------------------------------

DEFER_TIERS = st.sampled_from([DEFAULT_DEFER_DELAYS_MS, defer_tiers(100, 2_000), (1_000,),
                               defer_tiers(250, 600_000)])


@given(tiers=DEFER_TIERS, deferrals=st.integers(0, 12),
       floor_ms=st.none() | st.integers(1, 2 * 3600 * 1000))
def test_an_open_endpoints_deferral_waits_at_least_the_breaker_wait(
        tiers: tuple[int, ...], deferrals: int, floor_ms: int | None) -> None:
    """A job put back for want of a slot waits its own deferral (doubling) while its
    endpoint's breaker is closed; while it is open, at least the breaker's wait, in a defer
    tier of the topology (no new queue), never past that tier's length."""
    due = tiers[min(deferrals, len(tiers) - 1)]
    tier, delay = deferral(floor_ms, due, tiers)
    assert tier in tiers and 0 < delay <= tier
    if floor_ms is None or floor_ms <= due:
        assert (tier, delay) == (due, due)  # the breaker changes nothing
    elif floor_ms <= max(tiers):
        assert (tier, delay) == (min(t for t in tiers if t >= floor_ms), floor_ms)
    else:  # no tier that long: the longest one, in full
        assert (tier, delay) == (max(tiers), max(tiers))
    assert delay >= due


def test_with_the_defaults_an_open_endpoints_deferral_waits_a_minute_at_once() -> None:
    """The defaults: deferrals double from 1 s to 60 s; the breaker waits 60 s."""
    wait = Settings().breaker_wait_ms
    assert deferral(wait, DEFAULT_DEFER_DELAYS_MS[0], DEFAULT_DEFER_DELAYS_MS) == (60_000,
                                                                                  60_000)
    assert deferral(None, 1_000, DEFAULT_DEFER_DELAYS_MS) == (1_000, 1_000)
