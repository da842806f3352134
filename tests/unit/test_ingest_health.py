"""Endpoint health decisions (``assess``) and the facts/event a disable produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.ingest.decisions import (
    Attempt,
    Health,
    assess,
    attempt_of,
    disabled_event,
    disabled_fact,
    enabled_fact,
)
from shared.contracts import AuditFact

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
FIVE_DAYS = timedelta(days=5)
ENABLED = Health("enabled")


def failed(at: datetime, status: int | None = 500) -> Attempt:
    return Attempt(delivered=False, status_code=status, at=at)


def delivered(at: datetime) -> Attempt:
    return Attempt(delivered=True, status_code=200, at=at)


def test_a_failure_starts_the_failing_run_and_a_success_clears_it() -> None:
    first = assess(ENABLED, failed(T0), FIVE_DAYS)
    assert first.health == Health("enabled", failing_since=T0, failures=1) and first.disable is None
    later = assess(first.health, failed(T0 + timedelta(days=1)), FIVE_DAYS)
    assert later.health.failing_since == T0  # the run started at the first failure
    ok = assess(later.health, delivered(T0 + timedelta(days=2)), FIVE_DAYS)
    assert ok.health == Health("enabled", None, T0 + timedelta(days=2)) and ok.disable is None


def test_410_disables_at_once_as_gone() -> None:
    verdict = assess(ENABLED, failed(T0, 410), FIVE_DAYS)
    assert verdict.disable == "gone" and verdict.health.status == "disabled"
    assert verdict.health.failing_since == T0


def test_failing_for_the_whole_period_disables_as_failing() -> None:
    run = Health("enabled", failing_since=T0)
    almost = assess(run, failed(T0 + FIVE_DAYS - timedelta(seconds=1)), FIVE_DAYS)
    assert almost.disable is None and almost.health.status == "enabled"
    over = assess(run, failed(T0 + FIVE_DAYS), FIVE_DAYS)
    assert over.disable == "failing" and over.health.status == "disabled"
    assert over.health.failing_since == T0


def test_a_disabled_endpoint_is_left_alone() -> None:
    off = Health("disabled", failing_since=T0)
    assert assess(off, failed(T0 + FIVE_DAYS * 2, 410), FIVE_DAYS).health == off
    assert assess(off, delivered(T0 + FIVE_DAYS * 2), FIVE_DAYS).health == off
    assert assess(off, failed(T0, 410), FIVE_DAYS).disable is None


def test_late_facts_out_of_order_do_not_mislead() -> None:
    # a failure older than the last success is stale
    healthy = Health("enabled", None, T0 + timedelta(hours=1))
    assert assess(healthy, failed(T0, 410), FIVE_DAYS).health == healthy
    # a success older than the start of the failing run does not clear it
    failing = Health("enabled", T0 + timedelta(hours=2), T0)
    late_ok = assess(failing, delivered(T0 + timedelta(hours=1)), FIVE_DAYS)
    assert late_ok.health.failing_since == T0 + timedelta(hours=2)
    assert late_ok.health.last_delivered_at == T0 + timedelta(hours=1)
    # an earlier failure (after the last success) moves the run's start back
    earlier = assess(failing, failed(T0 + timedelta(minutes=30)), FIVE_DAYS)
    assert earlier.health.failing_since == T0 + timedelta(minutes=30)


def test_a_healthy_endpoint_has_nothing_to_write_per_success() -> None:
    healthy = Health("enabled", None, T0)
    assert assess(healthy, delivered(T0 + timedelta(seconds=59)), FIVE_DAYS).health == healthy
    moved = assess(healthy, delivered(T0 + timedelta(seconds=61)), FIVE_DAYS).health
    assert moved.last_delivered_at == T0 + timedelta(seconds=61)
    failing = Health("enabled", T0 + timedelta(seconds=10), T0)
    cleared = assess(failing, delivered(T0 + timedelta(seconds=20)), FIVE_DAYS).health
    assert cleared.failing_since is None  # a success always ends a failing run at once


def test_attempts_before_a_re_enable_do_not_count() -> None:
    fresh = Health("enabled", reset_at=T0 + timedelta(hours=1))
    assert assess(fresh, failed(T0, 410), FIVE_DAYS).health == fresh
    after = assess(fresh, failed(T0 + timedelta(hours=2), 410), FIVE_DAYS)
    assert after.disable == "gone" and after.health.reset_at == fresh.reset_at


OFFSETS = st.integers(min_value=0, max_value=10 * 86400).map(lambda s: T0 + timedelta(seconds=s))
ATTEMPTS = st.builds(Attempt, delivered=st.booleans(),
                     status_code=st.sampled_from([None, 200, 410, 429, 500, 503]), at=OFFSETS)


@given(st.lists(ATTEMPTS, max_size=30), st.integers(min_value=1, max_value=6 * 86400))
def test_invariants_over_any_sequence_of_attempts(attempts: list[Attempt], after_s: int) -> None:
    after = timedelta(seconds=after_s)
    health = ENABLED
    disables = 0
    for attempt in attempts:
        before = health
        verdict = assess(health, attempt, after)
        health = verdict.health
        if verdict.disable is not None:
            disables += 1
            assert before.status == "enabled" and health.status == "disabled"
            assert not attempt.delivered
            assert attempt.status_code == 410 or (
                health.failing_since is not None and attempt.at - health.failing_since >= after)
        else:
            assert health.status == before.status
        if health.failing_since is not None and health.last_delivered_at is not None:
            assert health.failing_since > health.last_delivered_at
        if before.status == "disabled":
            assert health == before
    assert disables <= 1  # once per disable: nothing re-enables here


def _fact(**over: object) -> AuditFact:
    base: dict[str, object] = {"id": "fct_1", "kind": "delivery.attempted", "occurred_at": T0,
                               "service": "deliverer", "endpoint_id": "ep_1",
                               "outcome": "failed", "status_code": 410}
    return AuditFact.model_validate({**base, **over})


def test_attempt_of_reads_delivery_attempted_facts_only() -> None:
    assert attempt_of(_fact()) == Attempt(False, 410, T0)
    assert attempt_of(_fact(outcome="delivered", status_code=204)) == Attempt(True, 204, T0)
    assert attempt_of(_fact(status_code=None)) == Attempt(False, None, T0)
    assert attempt_of(_fact(kind="delivery.dead_lettered")) is None
    assert attempt_of(_fact(endpoint_id=None)) is None
    assert attempt_of(_fact(outcome="dead_lettered")) is None


def test_disable_announcements_derive_their_ids_from_the_trigger() -> None:
    one = disabled_fact("ep_1", "https://x.example/", "gone", trigger="fct_a", actor=None,
                        failing_since=T0, now=T0)
    again = disabled_fact("ep_1", "https://x.example/", "gone", trigger="fct_a", actor=None,
                          failing_since=T0, now=T0 + timedelta(seconds=5))
    other = disabled_fact("ep_1", "https://x.example/", "gone", trigger="fct_b", actor=None,
                          failing_since=T0, now=T0)
    assert one.id == again.id != other.id
    assert one.kind == "endpoint.disabled" and one.reason == "gone" and one.actor is None
    manual = disabled_fact("ep_1", "u", "manual", trigger=None, actor="tok_1",
                           failing_since=None, now=T0)
    assert manual.actor == "tok_1" and manual.id != one.id

    event = disabled_event("ep_1", "https://x.example/", "failing", trigger="fct_a", now=T0)
    assert event.event == "endpoint.disabled" and event.timestamp == T0
    assert event.data == {"endpoint_id": "ep_1", "url": "https://x.example/",
                          "reason": "failing"}
    assert event.id == disabled_event("ep_1", "u", "failing", trigger="fct_a", now=T0).id
    assert event.id != disabled_event("ep_1", "u", "failing", trigger="fct_b", now=T0).id

    enabled = enabled_fact("ep_1", "u", actor="tok_1", held=3, now=T0)
    assert enabled.kind == "endpoint.enabled" and enabled.details == {"held_deliveries": 3}


def test_failing_is_announced_once_at_the_threshold_and_recovered_after_it() -> None:
    health, announced = ENABLED, []
    for i in range(5):
        verdict = assess(health, failed(T0 + timedelta(seconds=i)), FIVE_DAYS, 3)
        health = verdict.health
        announced.append(verdict.announce)
    assert announced == [None, None, "failing", None, None] and health.failures == 5
    ok = assess(health, delivered(T0 + timedelta(seconds=9)), FIVE_DAYS, 3)
    assert ok.announce == "recovered" and ok.health.failures == 0
    again = assess(ok.health, delivered(T0 + timedelta(seconds=99)), FIVE_DAYS, 3)
    assert again.announce is None


def test_no_announcement_below_the_threshold_or_when_off() -> None:
    two = assess(assess(ENABLED, failed(T0), FIVE_DAYS, 3).health,
                 failed(T0 + timedelta(seconds=1)), FIVE_DAYS, 3)
    assert two.announce is None
    assert assess(two.health, delivered(T0 + timedelta(seconds=2)), FIVE_DAYS, 3
                  ).announce is None
    off = ENABLED
    for i in range(10):
        verdict = assess(off, failed(T0 + timedelta(seconds=i)), FIVE_DAYS, 0)
        assert verdict.announce is None
        off = verdict.health


def test_a_stale_failure_neither_counts_nor_announces() -> None:
    ok = assess(ENABLED, delivered(T0), FIVE_DAYS, 1)
    stale = assess(ok.health, failed(T0 - timedelta(seconds=1)), FIVE_DAYS, 1)
    assert stale.health == ok.health and stale.announce is None


def test_a_410_at_the_threshold_disables_and_announces_failing() -> None:
    verdict = assess(ENABLED, failed(T0, status=410), FIVE_DAYS, 1)
    assert verdict.disable == "gone" and verdict.announce == "failing"
