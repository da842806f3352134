"""The rate-limit pacer (GCRA) and the paced-queue shard: pure, any arrival pattern."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.deliverer.decisions.pacing import Pacer, defer_tier, interval, shard_of
from services.deliverer.paced import PaceGate
from shared.contracts import RateLimit

limits = st.builds(RateLimit,
                   per_second=st.floats(min_value=0.05, max_value=500, allow_nan=False),
                   burst=st.integers(min_value=1, max_value=20))
gaps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=120)
margins = st.sampled_from([0.0, 0.05, 0.2])


def simulate(pacer: Pacer, limit: RateLimit, arrivals: list[float], endpoint: str = "ep"
             ) -> list[float]:
    """Jobs arriving at ``arrivals`` (sorted), each POSTed as soon as the pacer allows, in
    order (as :class:`PaceGate` does): the POST times."""
    posts: list[float] = []
    clock = 0.0
    for at in arrivals:
        clock = max(clock, at)
        clock += pacer.wait(endpoint, limit, clock)
        assert pacer.wait(endpoint, limit, clock) == pytest.approx(0, abs=1e-9)
        pacer.sent(endpoint, limit, clock)
        posts.append(clock)
    return posts


def most_in_window(posts: list[float], width: float) -> int:
    """The most POSTs in any closed window ``[t, t + width]``."""
    best = 0
    j = 0
    for i, start in enumerate(posts):
        j = max(j, i)
        while j + 1 < len(posts) and posts[j + 1] <= start + width + 1e-9:
            j += 1
        best = max(best, j - i + 1)
    return best


def arrivals_of(gap_list: list[float]) -> list[float]:
    times, t = [], 100.0
    for g in gap_list:
        t += g
        times.append(t)
    return times


@given(limits, gaps, margins, st.floats(min_value=0.01, max_value=30))
@settings(max_examples=300, deadline=None)
def test_no_window_holds_more_than_burst_plus_its_share(
        limit: RateLimit, gap_list: list[float], margin: float, width: float) -> None:
    posts = simulate(Pacer(started=0.0, margin=margin), limit, arrivals_of(gap_list))
    step = interval(limit, margin)
    assert most_in_window(posts, width) <= limit.burst + int(width / step + 1e-9)
    assert posts == sorted(posts)


@given(limits, gaps, margins)
@settings(max_examples=200, deadline=None)
def test_a_job_waits_only_for_the_ones_ahead_of_it(
        limit: RateLimit, gap_list: list[float], margin: float) -> None:
    """Work-conserving: a POST is late only if the pacer's schedule is full — it waits at most
    one interval past its arrival or past the POST before it (no needless delay)."""
    arrivals = arrivals_of(gap_list)
    posts = simulate(Pacer(started=0.0, margin=margin), limit, arrivals)
    step = interval(limit, margin)
    for i, (at, post) in enumerate(zip(arrivals, posts, strict=True)):
        assert post >= at
        before = posts[i - 1] if i else at
        assert post <= max(at, before + step) + 1e-9


@given(limits, margins)
@settings(deadline=None)  # timing varies on a loaded machine
def test_a_burst_goes_back_to_back_after_a_quiet_spell(limit: RateLimit, margin: float
                                                       ) -> None:
    pacer = Pacer(started=0.0, margin=margin)
    quiet = 1_000 + limit.burst * interval(limit, margin)
    posts = simulate(pacer, limit, [quiet] * (limit.burst + 1))
    assert posts[:limit.burst] == pytest.approx([quiet] * limit.burst)
    assert posts[-1] == pytest.approx(quiet + interval(limit, margin))


@given(limits, margins, st.floats(min_value=0, max_value=10))
@settings(deadline=None)  # timing varies on a loaded machine
def test_a_takeover_never_exceeds_what_the_previous_pacer_left(
        limit: RateLimit, margin: float, previous_ran: float) -> None:
    """The previous active consumer POSTed at full pace until ``start``; a new pacer started
    then: the two together still keep every window within the limit."""
    old = Pacer(started=0.0, margin=margin)
    start = 50.0 + previous_ran
    old_posts = simulate(old, limit, [50.0 + i * previous_ran / 40 for i in range(40)])
    old_posts = [p for p in old_posts if p <= start]
    new_posts = simulate(Pacer(started=start, margin=margin), limit, [start] * 30)
    posts = sorted(old_posts + new_posts)
    step = interval(limit, margin)
    for width in (step / 2, step, 1.0, 3 * step + 0.01):
        assert most_in_window(posts, width) <= limit.burst + int(width / step + 1e-9)


def test_hold_keeps_the_endpoint_quiet_until_then() -> None:
    limit = RateLimit(per_second=10, burst=3)
    pacer = Pacer(started=0.0, margin=0.0)
    pacer.hold("ep", limit, until=30.0)
    assert pacer.wait("ep", limit, 10.0) == pytest.approx(20.0)
    assert pacer.wait("other", limit, 10.0) == 0.0  # other endpoints are not held
    posts = simulate(pacer, limit, [10.0] * 4)
    # after the hold it resumes evenly paced, not with a burst at the receiver that asked
    assert posts == pytest.approx([30.0, 30.1, 30.2, 30.3])


def test_expected_wait_counts_the_queue() -> None:
    limit = RateLimit(per_second=5)
    pacer = Pacer(started=0.0, margin=0.0)
    pacer.sent("ep", limit, 10.0)
    assert pacer.expected_wait("ep", limit, 10.0, queued=0) == pytest.approx(0.2)
    assert pacer.expected_wait("ep", limit, 10.0, queued=4) == pytest.approx(1.0)


def test_the_margin_spaces_posts_wider() -> None:
    assert interval(RateLimit(per_second=5), 0.05) == pytest.approx(0.21)
    with pytest.raises(ValueError, match="margin"):
        Pacer(started=0.0, margin=-0.1)


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
@settings(deadline=None)  # timing varies on a loaded machine
def test_shard_is_stable_and_in_range(endpoint: str, shards: int) -> None:
    assert 0 <= shard_of(endpoint, shards) < shards
    assert shard_of(endpoint, shards) == shard_of(str(endpoint), shards)


def test_shard_is_pinned() -> None:
    """CRC-32, not the salted ``hash()``: the same in every process, and a change of it would
    move endpoints to other paced queues during a rolling upgrade (two pacers at once)."""
    assert [shard_of(f"ep_{n}", 8) for n in range(8)] == [2, 4, 6, 0, 3, 5, 7, 1]


async def test_the_gate_lets_jobs_through_in_order_and_gives_up_past_max_wait() -> None:
    loop = asyncio.get_running_loop()
    gate = PaceGate(Pacer(started=0.0, margin=0.0), max_wait=0.5, clock=loop.time)
    limit = RateLimit(per_second=200)  # one every 5 ms
    posted: list[tuple[int, float]] = []

    async def job(n: int) -> None:
        turn = await gate.turn("ep", limit)
        assert turn is not None
        posted.append((n, loop.time()))
        turn.written()

    await asyncio.gather(*(job(n) for n in range(6)))
    assert [n for n, _ in posted] == list(range(6))  # arrival order
    times = [t for _, t in posted]
    assert all(b - a >= 0.005 - 0.001 for a, b in itertools.pairwise(times))

    assert not gate.too_long("ep", limit)
    gate.hold("ep", limit, 10.0)  # a Retry-After of 10 s
    assert gate.too_long("ep", limit)
    assert await gate.turn("ep", limit) is None  # given up at once, not slept on
    assert await gate.turn("other", limit) is not None  # another endpoint is not held


async def test_a_closed_gate_gives_no_more_turns_and_wakes_the_waiting() -> None:
    """A stopping replica closes its gate before its paced consumers stop: the job waiting
    for its turn gets ``None`` at once (it is deferred), and so does every later one."""
    loop = asyncio.get_running_loop()
    gate = PaceGate(Pacer(started=-10.0, margin=0.0), max_wait=5.0, clock=loop.time)
    limit = RateLimit(per_second=1)  # one a second: the second job waits ~1 s
    first = await gate.turn("ep", limit)
    assert first is not None
    first.written()
    waiting = asyncio.ensure_future(gate.turn("ep", limit))
    await asyncio.sleep(0)  # it takes the lock and sleeps towards its turn
    closed_at = loop.time()
    gate.close()
    assert await waiting is None
    assert loop.time() - closed_at < 0.5  # woken, not left to sleep out its second
    assert await gate.turn("other", limit) is None


def test_a_late_request_moves_the_schedule_by_its_delay() -> None:
    pacer = Pacer(started=-10.0, margin=0.0)
    limit = RateLimit(per_second=5)  # one every 200 ms
    pacer.sent("ep", limit, 0.0)
    assert pacer.wait("ep", limit, 0.2) == 0.0
    pacer.late("ep", granted=0.0, written=0.15)  # it left 150 ms after its grant
    assert pacer.wait("ep", limit, 0.2) == pytest.approx(0.15)
    pacer.late("ep", granted=0.5, written=0.4)  # never moved back
    assert pacer.wait("ep", limit, 0.2) == pytest.approx(0.15)


async def test_the_next_turn_keeps_its_distance_from_the_request_that_really_left() -> None:
    """Granted, then written 100 ms later (a busy loop): the next turn comes one interval
    after the write, not after the grant; and it is not given before the write."""
    loop = asyncio.get_running_loop()
    gate = PaceGate(Pacer(started=-10.0, margin=0.0), max_wait=5.0, clock=loop.time)
    limit = RateLimit(per_second=20)  # one every 50 ms
    first = await gate.turn("ep", limit)
    assert first is not None
    second_task = asyncio.ensure_future(gate.turn("ep", limit))
    await asyncio.sleep(0.1)  # the request is slow to leave: nothing else can be awaited here
    assert not second_task.done()  # held until the first is written
    written_at = loop.time()
    first.written()
    second = await second_task
    assert second is not None
    assert loop.time() - written_at >= 0.05 - 0.002
    second.close()


@given(limits, st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=200))
@settings(deadline=None)  # timing varies on a loaded machine
def test_deferred_jobs_are_promised_turns_one_interval_apart(
        limit: RateLimit, queued: int, deferred: int) -> None:
    """A backlog deferred at once comes back spread at the endpoint's pace, after the jobs
    waiting here: not all together (most would be deferred again)."""
    pacer = Pacer(started=0.0, margin=0.05)
    pacer.sent("ep", limit, 100.0)
    step = interval(limit, 0.05)
    promised = [pacer.promise("ep", limit, 100.0, queued) for _ in range(deferred)]
    assert promised[0] == pytest.approx(pacer.expected_wait("ep", limit, 100.0, queued))
    assert all(b - a == pytest.approx(step) for a, b in itertools.pairwise(promised))
    assert pacer.promise("other", limit, 100.0, 0) == 0.0


def test_promises_start_again_from_the_schedule_once_they_are_past() -> None:
    limit = RateLimit(per_second=2)
    pacer = Pacer(started=0.0, margin=0.0)
    assert [pacer.promise("ep", limit, 10.0, 4) for _ in range(2)] == [2.0, 2.5]
    assert pacer.promise("ep", limit, 20.0, 0) == 0.0  # long after: nothing ahead of it


@given(st.floats(min_value=0, max_value=500, allow_nan=False))
@settings(deadline=None)  # timing varies on a loaded machine
def test_defer_tier_is_the_smallest_tier_long_enough(wait: float) -> None:
    tiers = (1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000)
    tier, delay = defer_tier(wait, tiers)
    assert tier in tiers and 1 <= delay <= tier
    if wait * 1000 <= 60_000:
        assert delay >= wait * 1000 and delay - max(wait * 1000, 1) < 1
        assert tier == min(t for t in tiers if t >= delay)
    else:
        assert (tier, delay) == (60_000, 60_000)  # back early; promised a turn again then


@given(limits, margins, st.floats(min_value=0, max_value=10), st.booleans())
@settings(deadline=None)  # timing varies on a loaded machine
def test_an_activation_keeps_a_takeover_within_the_limit(
        limit: RateLimit, margin: float, previous_ran: float, seen_before: bool) -> None:
    """The new active consumer started long before (it was a standby, or it was active once
    and knew the endpoint): activated at the takeover, it still keeps every window."""
    endpoint = "ep_takeover"
    shard = shard_of(endpoint, 8)
    old = Pacer(started=0.0, margin=margin)
    start = 50.0 + previous_ran
    old_posts = [p for p in simulate(old, limit, [50.0 + i * previous_ran / 40
                                                  for i in range(40)], endpoint) if p <= start]
    new = Pacer(started=0.0, margin=margin)
    if seen_before:  # a stale schedule from when it was active before
        new.sent(endpoint, limit, 10.0)
    new.activate(shard, start)
    posts = sorted(old_posts + simulate(new, limit, [start] * 30, endpoint))
    step = interval(limit, margin)
    for width in (step / 2, step, 1.0, 3 * step + 0.01):
        assert most_in_window(posts, width) <= limit.burst + int(width / step + 1e-9)


def test_an_activation_keeps_a_hold_and_spares_other_queues() -> None:
    limit = RateLimit(per_second=10)
    pacer = Pacer(started=0.0, margin=0.0)
    pacer.hold("ep_a", limit, until=100.0)
    pacer.activate(shard_of("ep_a", 8), 50.0)
    assert pacer.wait("ep_a", limit, 50.0) == pytest.approx(50.0)  # the Retry-After stands
    other = next(f"ep_{n}" for n in range(100) if shard_of(f"ep_{n}", 8)
                 != shard_of("ep_a", 8))
    assert pacer.wait(other, limit, 50.0) == 0.0


async def test_the_gate_activates_a_queue_at_its_first_and_redelivered_messages() -> None:
    now = [1000.0]
    gate = PaceGate(Pacer(started=0.0, margin=0.0), max_wait=5.0, clock=lambda: now[0])
    limit = RateLimit(per_second=2)
    shard = shard_of("ep_g", 8)
    gate.arrived(shard, redelivered=False)  # its first message: as after a takeover
    assert gate.too_long("ep_g", limit) is False
    assert gate.promise("ep_g", limit) == pytest.approx(0.5)
    now[0] = 1002.0
    gate.arrived(shard, redelivered=False)  # seen: nothing changes, long past the promise
    assert gate.promise("ep_g", limit) == 0.0
    now[0] = 1004.0
    gate.arrived(shard, redelivered=True)  # a takeover's hand-over: one interval again
    assert gate.promise("ep_g", limit) == pytest.approx(0.5)
