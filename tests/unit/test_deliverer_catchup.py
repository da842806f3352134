"""Catch-up's pure decisions: the trigger, the tiers swept, the sides, where each retry goes —
and, modelled, that a sweep never makes another endpoint's retry leave early or later than it
would have (a wait queue releases a message at its due time or when the one ahead of it
left, whichever is later)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.deliverer.decisions.catchup import (
    BROKER_HEADERS,
    Debounce,
    Move,
    SendNow,
    carried_headers,
    collapsed,
    endpoint_of,
    on_schedule,
    place,
    retry_headers,
    sides,
    tiers_to_sweep,
    wants_catch_up,
)
from services.deliverer.settings import Settings
from shared import topology
from shared.contracts import AttemptRecord, DeliveryJob, Event, RateLimit

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
SCHEDULE = (5_000, 300_000, 1_800_000)
TIER = 60_000


def job(attempt: int, failed_ago_s: float, **update: object) -> DeliveryJob:
    history = tuple(
        AttemptRecord(attempt=n, at=NOW - timedelta(seconds=failed_ago_s), outcome="failed",
                      status_code=503, duration_ms=3.0)
        for n in range(1, attempt))
    base = DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url="https://r.example/h",
                       event=Event(id="evt_1", event="a.b", timestamp=NOW, data={}),
                       attempt=attempt, history=history)
    return base.model_copy(update=update)


# -- the trigger ---------------------------------------------------------------------------

def test_a_retry_delivered_after_its_full_wait_asks_for_a_catch_up() -> None:
    # attempt 3 followed the 5 min delay (jitter 0.2: at least 4 min after attempt 2)
    assert wants_catch_up(job(3, 240), True, SCHEDULE, 0.2, NOW)
    assert wants_catch_up(job(2, 4.0), True, SCHEDULE, 0.2, NOW)


def test_a_retry_sent_early_by_a_sweep_does_not_ask_again() -> None:
    assert not on_schedule(job(3, 30), SCHEDULE, 0.2, NOW)  # 30 s after, its delay was 5 min
    assert not wants_catch_up(job(3, 30), True, SCHEDULE, 0.2, NOW)


def test_first_attempts_failures_and_paced_or_ordered_endpoints_never_ask() -> None:
    assert not wants_catch_up(job(1, 0), True, SCHEDULE, 0.2, NOW)  # nothing was failing
    assert not wants_catch_up(job(3, 600), False, SCHEDULE, 0.2, NOW)  # still failing
    limited = job(3, 600, rate_limit=RateLimit(per_second=5))
    assert not wants_catch_up(limited, True, SCHEDULE, 0.2, NOW)
    assert not wants_catch_up(job(3, 600, fifo_key="k"), True, SCHEDULE, 0.2, NOW)
    # an attempt beyond the schedule (a manual retry of a parked delivery): no delay to judge
    assert not on_schedule(job(5, 99_999), SCHEDULE, 0.2, NOW)


@given(attempt=st.integers(2, 4), jitter=st.floats(0, topology.TIER_HEADROOM),
       share=st.floats(0, 2))
def test_on_schedule_is_exactly_waiting_at_least_the_shortest_jittered_delay(
        attempt: int, jitter: float, share: float) -> None:
    delay_ms = SCHEDULE[attempt - 2]
    waited_s = delay_ms * share / 1000
    assume(abs(waited_s * 1000 - delay_ms * (1 - jitter)) > 0.01)  # times are in µs
    assert on_schedule(job(attempt, waited_s), SCHEDULE, jitter, NOW) == (
        waited_s * 1000 >= delay_ms * (1 - jitter))


def test_debounce_allows_one_request_per_endpoint_per_interval_and_forgets_old_ones() -> None:
    debounce = Debounce(60.0, size=2)
    assert debounce.allow("ep_1", 0.0)
    assert not debounce.allow("ep_1", 59.9)
    assert debounce.allow("ep_2", 1.0)
    assert debounce.allow("ep_1", 60.0)  # the interval is over
    assert debounce.allow("ep_3", 61.0)  # ep_2 is the oldest now: forgotten
    assert debounce.allow("ep_2", 62.0)
    assert not debounce.allow("ep_3", 62.0)


def test_tiers_and_collapsing() -> None:
    assert tiers_to_sweep((5_000, 300_000, 30_000, 300_000, 29_999), 30_000) == (30_000, 300_000)
    assert tiers_to_sweep((), 30_000) == ()
    assert not collapsed(NOW, None)
    assert collapsed(NOW, NOW + timedelta(milliseconds=1))  # asked before the sweep began
    assert not collapsed(NOW, NOW)


def test_settings_catch_up_defaults() -> None:
    defaults = Settings()
    assert defaults.catch_up is False
    assert defaults.catch_up_min_tier_ms == 30_000
    assert defaults.catch_up_max_queued == 2000
    with pytest.raises(ValueError, match="give one delay"):
        Settings(catch_up_min_tier="30s,1m")


# -- reading a retry ------------------------------------------------------------------------

def test_the_endpoint_comes_from_the_header_else_from_the_body() -> None:
    body = orjson.dumps({"endpoint_id": "ep_body", "delivery_id": "dlv_1"})
    assert endpoint_of({topology.ENDPOINT_HEADER: "ep_head"}, body) == "ep_head"
    assert endpoint_of({topology.ENDPOINT_HEADER: b"ep_bytes"}, body) == "ep_bytes"
    assert endpoint_of({}, body) == "ep_body"  # published before the header existed
    assert endpoint_of({}, b"not json") is None
    assert endpoint_of({}, b"[1, 2]") is None


def test_retry_headers_say_endpoint_queued_and_due() -> None:
    assert retry_headers("ep_1", 1_000, 60_000) == {
        topology.ENDPOINT_HEADER: "ep_1", topology.QUEUED_HEADER: 1_000,
        topology.DUE_HEADER: 61_000}


def test_a_caught_up_endpoints_retry_is_sent_and_the_others_keep_their_due_time() -> None:
    headers = retry_headers("ep_1", 1_000, 60_000)
    assert place(headers, b"", 60_000, {"ep_1"}, TIER, 31_000) == SendNow(early_ms=30_000)
    assert place(headers, b"", 60_000, {"ep_2"}, TIER, 31_000) == Move(
        due_ms=61_000, expiration_ms=30_000, queued_ms=1_000)
    # due already (held behind a later-due head): sent, on time
    assert place(headers, b"", 60_000, {"ep_2"}, TIER, 61_000) == SendNow(early_ms=0)


def test_a_retry_from_before_the_headers_waits_its_whole_expiration_again() -> None:
    body = orjson.dumps({"endpoint_id": "ep_old"})
    assert place({}, body, 55_000, {"ep_old"}, TIER, 10_000) == SendNow(early_ms=0)
    moved = place({}, body, 55_000, {"ep_1"}, TIER, 10_000)
    assert moved == Move(due_ms=65_000, expiration_ms=55_000, queued_ms=5_000)
    # no expiration either: the tier's delay; an unreadable message is moved, never sent
    assert place({}, b"??", None, {"ep_1"}, TIER, 0) == Move(60_000, 60_000, 0)


def test_carried_headers_drop_the_brokers_and_write_the_kept_times() -> None:
    headers = {**retry_headers("ep_1", 1_000, 60_000), "traceparent": "00-ab-cd-01",
               **{h: "x" for h in BROKER_HEADERS}}
    moved = carried_headers(headers, Move(due_ms=61_000, expiration_ms=5, queued_ms=1_000))
    assert not set(moved) & BROKER_HEADERS
    assert moved == {**retry_headers("ep_1", 1_000, 60_000), "traceparent": "00-ab-cd-01"}
    sent = carried_headers({}, SendNow(early_ms=3))
    assert sent == {}


# -- the sides ------------------------------------------------------------------------------

def test_the_side_holding_retries_is_read_first_into_the_empty_one() -> None:
    assert sides(0, 0) == sides(5, 0) == sides(5, 5, None, None)
    assert (sides(0, 0).source, sides(0, 0).dest) == ("a", "b")
    assert (sides(0, 7).source, sides(0, 7).dest) == ("b", "a")
    # both hold retries (a sweep stopped half-way): the one queued later is the source
    assert (sides(3, 4, head_a=100, head_b=200).source) == "b"
    assert (sides(3, 4, head_a=200, head_b=100).source) == "a"


# -- modelled: what a sweep does to the others' schedule --------------------------------------

@dataclass
class Msg:
    id: int
    endpoint: str
    queued: int
    due: int


def leave_times(queue: list[tuple[Msg, int]]) -> dict[int, int]:
    """When each message leaves a wait queue: each entry is (message, the time it may leave
    at the earliest); a message leaves once that time is past and the one ahead has left."""
    out: dict[int, int] = {}
    last = 0
    for msg, earliest in queue:
        last = max(last, earliest)
        out[msg.id] = last
    return out


retries = st.lists(st.tuples(st.sampled_from(["ep_e", "ep_x", "ep_y"]),
                             st.integers(1, 100), st.floats(-0.2, 0.2)),
                   min_size=1, max_size=40)


def tier_of(spec: list[tuple[str, int, float]]) -> list[Msg]:
    """A tier's messages in queue order: published at increasing times (a millisecond apart at
    least), jittered delays."""
    queued = 0
    out = []
    for n, (endpoint, gap, jitter) in enumerate(spec):
        queued += gap
        out.append(Msg(n, endpoint, queued, queued + round(TIER * (1 + jitter))))
    return out


def sweep(messages: list[Msg], at: int, endpoints: set[str], stop_after: int | None = None
          ) -> tuple[list[tuple[Msg, int]], list[Msg], list[Msg]]:
    """One sweep at ``at`` over ``messages`` (in the order read): what lands in the side queue
    (with its earliest leave), what is sent now, and what was not read (stopped early)."""
    moved: list[tuple[Msg, int]] = []
    sent: list[Msg] = []
    read = messages if stop_after is None else messages[:stop_after]
    for msg in read:
        headers = {topology.ENDPOINT_HEADER: msg.endpoint, topology.DUE_HEADER: msg.due,
                   topology.QUEUED_HEADER: msg.queued}
        placed = place(headers, b"", None, endpoints, TIER, at)
        if isinstance(placed, Move):
            assert placed.due_ms == msg.due and placed.queued_ms == msg.queued
            moved.append((msg, at + placed.expiration_ms))
        else:
            assert msg.endpoint in endpoints or msg.due <= at
            sent.append(msg)
    return moved, sent, list(messages[len(read):])


@settings(max_examples=300)
@given(spec=retries, at=st.integers(0, 60_000))
def test_a_sweep_sends_only_the_caught_up_and_never_moves_another_earlier_or_later(
        spec: list[tuple[str, int, float]], at: int) -> None:
    tier = tier_of(spec)
    before = leave_times([(m, m.due) for m in tier])
    # what is in the tier at ``at``: published, not gone yet
    waiting = [m for m in tier if m.queued <= at < before[m.id]]
    moved, sent, _ = sweep(waiting, at, {"ep_e"})
    after = leave_times(moved)
    for msg in waiting:
        if msg.endpoint == "ep_e":
            assert msg in sent
        elif msg.id in after:
            # never before its due time, never after it would have left the tier
            assert msg.due <= after[msg.id] <= before[msg.id]
        else:  # sent: it was due already, held behind a later one
            assert msg.due <= at


@settings(max_examples=300)
@given(first=retries, second=retries, stop=st.integers(0, 40), gap=st.integers(1, 30_000))
def test_sweeps_stopped_half_way_and_finished_keep_the_order(
        first: list[tuple[str, int, float]], second: list[tuple[str, int, float]], stop: int,
        gap: int) -> None:
    """Sweep 1 moves the tier into side b. Then new retries reach the tier. Sweep 2 (for
    another endpoint) starts moving b into a and stops after ``stop`` messages (killed);
    sweep 3 picks its sides by the counts and heads, and moves the rest: every message of
    another endpoint still leaves at or after its due time and no later than it would have
    without any sweep, in the tier."""
    old = tier_of(first)
    t1 = old[-1].queued  # once every one of them is in the tier (4 s at most: none left yet)
    side_b, _, _ = sweep(old, t1, {"ep_e"})
    new = [Msg(1000 + m.id, m.endpoint, t1 + m.queued, t1 + m.due) for m in tier_of(second)]
    t2 = new[-1].queued + gap  # still before anything moved in sweep 1 is due (48 s at least)
    side_a, _, rest_b = sweep([m for m, _ in side_b], t2, {"ep_y"}, stop_after=stop)
    rest = [m for m, _ in side_b if m in rest_b]
    t3 = t2 + 1
    chosen = sides(len(side_a), len(rest),
                   side_a[0][0].queued if side_a else None, rest[0].queued if rest else None)
    queues = {"a": [m for m, _ in side_a], "b": rest}
    dest_from_before = side_a if chosen.dest == "a" else [(m, m.due) for m in rest]
    moved_src, _, _ = sweep(queues[chosen.source], t3, {"ep_y"})
    moved_tier, _, _ = sweep(new, t3, {"ep_y"})
    final = leave_times(dest_from_before + moved_src + moved_tier)
    without = leave_times([(m, m.due) for m in old + new])
    for msg in old + new:
        if msg.id in final:
            assert msg.due <= final[msg.id] <= without[msg.id], msg
