"""Ordered (FIFO) endpoints' pure parts: the key of a delivery, its lane, the hold limit, the
key turns and the ingest turnstile."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.deliverer import decisions
from services.deliverer.decisions import DeadLetter, Retry
from services.deliverer.ordered import parse_answer
from services.ingest.decisions import Endpoint, plan
from services.ingest.models import check_ordering
from services.ingest.turnstile import Turnstile
from shared import topology
from shared.contracts import DeliveryJob, Event, RateLimit, SignRefusal, encode
from shared.ordering import MAX_KEY_CHARS, key_of, lane_of, valid_path
from shared.turns import KeyTurns

AT = datetime(2026, 12, 7, tzinfo=UTC)


def _event(data: dict[str, object]) -> Event:
    return Event.model_validate({"id": "evt_1", "event": "user.updated", "timestamp": AT,
                                 "data": data})


def test_the_key_is_the_value_at_the_path() -> None:
    event = _event({"user_id": "u-7", "n": 42, "who": {"org": 3}, "none": None})
    assert key_of(event, "data.user_id") == "u-7"
    assert key_of(event, "data.n") == "42"
    assert key_of(event, "data.who.org") == "3"
    assert key_of(event, "data.who") == '{"org":3}'
    assert key_of(event, "event") == "user.updated"


def test_a_missing_value_or_no_path_is_the_empty_key() -> None:
    event = _event({"user_id": "u-7", "none": None})
    assert key_of(event, "data.nope") == ""
    assert key_of(event, "data.user_id.deeper") == ""
    assert key_of(event, "data.none") == ""
    assert key_of(event, None) == ""


def test_a_long_key_is_cut() -> None:
    assert len(key_of(_event({"k": "x" * 1000}), "data.k")) == MAX_KEY_CHARS


def test_paths() -> None:
    assert valid_path("data.user_id") and valid_path("id") and valid_path("data.a-b.c_d")
    for bad in ("", "data.", ".data", "data..x", "data.a b", "a.b.c.d.e.f.g.h.i", "data[0]"):
        assert not valid_path(bad), bad


@given(st.text(max_size=40), st.text(max_size=300), st.integers(1, 64))
def test_a_lane_is_stable_and_in_range(endpoint: str, key: str, lanes: int) -> None:
    lane = lane_of(endpoint, key, lanes)
    assert 0 <= lane < lanes
    assert lane == lane_of(endpoint, key, lanes)


def test_keys_spread_over_the_lanes() -> None:
    lanes = {lane_of("ep_1", f"user-{n}", topology.FIFO_LANES) for n in range(200)}
    assert lanes == set(range(topology.FIFO_LANES))


def test_fan_out_gives_an_ordered_endpoint_s_jobs_their_key() -> None:
    event = _event({"user_id": "u-7"})
    jobs = plan(event, [Endpoint("ep_a", "https://a.example", ("user.*",)),
                        Endpoint("ep_b", "https://b.example", ("user.*",), ordering="fifo",
                                 ordering_key="data.user_id"),
                        Endpoint("ep_c", "https://c.example", ("user.*",), ordering="fifo")])
    assert [j.fifo_key for j in jobs] == [None, "u-7", ""]


def test_ordering_is_refused_with_a_rate_limit_or_a_key_without_order() -> None:
    check_ordering("fifo", "data.x", None)
    check_ordering(None, None, RateLimit(per_second=5))
    with pytest.raises(ValueError, match="rate_limit"):
        check_ordering("fifo", None, RateLimit(per_second=5))
    with pytest.raises(ValueError, match="needs ordering fifo"):
        check_ordering(None, "data.x", None)


@given(st.floats(0, 3000), st.integers(1, 3_600_000), st.floats(1, 3000))
def test_a_retry_past_the_hold_limit_gives_up(held: float, delay_ms: int, limit: float
                                               ) -> None:
    step = decisions.held_step(Retry(tier_ms=delay_ms, delay_ms=delay_ms), held, limit)
    if held + delay_ms / 1000 > limit:
        assert step == DeadLetter("hold_limit")
    else:
        assert step == Retry(tier_ms=delay_ms, delay_ms=delay_ms)
    assert decisions.held_step(DeadLetter("exhausted"), held, limit) == DeadLetter("exhausted")


def test_a_lane_job_needs_a_key() -> None:
    job = DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url="https://a.example",
                      event=_event({}), fifo_key="k")
    assert decisions.parse_job(encode(job)) == job
    with pytest.raises(ValueError, match="fifo_key"):
        decisions.parse_job(encode(job.model_copy(update={"fifo_key": None})))


def test_the_held_up_count_is_in_the_dead_letter_fact() -> None:
    job = DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url="https://a.example",
                      event=_event({}), fifo_key="k", attempt=2)
    assert decisions.dead_lettered_fact(job, "exhausted", AT, held_up=7).details == {
        "attempts": 0, "held_up": 7}
    assert "held_up" not in decisions.dead_lettered_fact(job, "exhausted", AT).details


def test_answers_are_read_and_an_unreadable_one_is_a_refusal() -> None:
    refusal = SignRefusal(reason="no_secret", error="none")
    assert parse_answer(encode(refusal)) == refusal
    assert isinstance(parse_answer(b"{}"), SignRefusal)


async def test_a_key_s_turns_go_in_arrival_order_and_other_keys_do_not_wait() -> None:
    turns = KeyTurns()
    rng = random.Random(7)
    done: list[tuple[str, int]] = []
    running: dict[str, int] = {}
    most: dict[str, int] = {}

    async def work(key: str, n: int) -> None:
        async with turns.turn(("ep", key)) as behind:
            running[key] = running.get(key, 0) + 1
            most[key] = max(most.get(key, 0), running[key])
            assert behind() >= 0
            await asyncio.sleep(rng.random() / 500)
            running[key] -= 1
            done.append((key, n))

    await asyncio.gather(*(work(key, n) for n in range(20) for key in "abc"))
    for key in "abc":
        assert [n for k, n in done if k == key] == list(range(20))
    assert most == {"a": 1, "b": 1, "c": 1}
    assert turns.waiting() == 0


async def test_the_turnstile_holds_a_key_behind_earlier_events_of_that_key_only() -> None:
    gate = Turnstile()
    first, second, third, fourth = (gate.enter() for _ in range(4))
    gate.declare(third, frozenset({"a"}))
    gate.declare(fourth, frozenset({"b"}))
    third_turn = asyncio.ensure_future(gate.wait_turn(third, frozenset({"a"})))
    fourth_turn = asyncio.ensure_future(gate.wait_turn(fourth, frozenset({"b"})))
    await asyncio.sleep(0)
    assert not third_turn.done() and not fourth_turn.done()  # keys of 1 and 2 not known yet
    gate.declare(first, frozenset({"a"}))
    gate.declare(second, frozenset())  # no ordered jobs: leaves at once
    await asyncio.sleep(0)
    await asyncio.wait_for(fourth_turn, 1)  # "b" waits for no one
    assert not third_turn.done()  # "a" waits for the first event's confirms
    gate.leave(first)
    await asyncio.wait_for(third_turn, 1)
    gate.leave(third)
    gate.leave(fourth)
    assert len(gate) == 0
