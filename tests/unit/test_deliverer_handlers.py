"""Deliverer's pure decisions: schedule parsing, outcome classes, retry steps, records."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue, ValidationError

from services.deliverer.decisions import (
    EXCERPT_CHARS,
    MAX_RETRY_AFTER_MS,
    DeadLetter,
    Done,
    Outcome,
    Retry,
    Step,
    attempt_record,
    attempted_fact,
    classify,
    dead_lettered_fact,
    deferred,
    fact_id,
    needs_resign,
    next_job,
    next_step,
    outcome_fact,
    parse_retry_after,
    parse_signed,
    redact_url,
    schedule_for,
    shown_request_headers,
    shown_response_headers,
    started_fact,
)
from services.deliverer.settings import Settings
from shared.contracts import AuditFact, DeliveryJob, Event, SignedDelivery, encode
from shared.schedules import parse_schedule
from shared.topology import DEFAULT_DEFER_DELAYS_MS, TIER_HEADROOM, defer_tiers, tier_ttl

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT = parse_schedule("5s,5m,30m,2h,5h,10h,10h")


def make_job(attempt: int = 1) -> DeliveryJob:
    return DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1",
                       url="https://user:pw@r.example/hook?x=1",
                       event=Event(id="evt_1", event="a.b", timestamp=NOW, data={}),
                       attempt=attempt)


def test_settings_reject_a_bad_schedule_and_expose_delays() -> None:
    assert len(Settings().retry_delays_ms) == 7  # default: 8 attempts
    assert Settings(retry_schedule="200ms,400ms").retry_delays_ms == (200, 400)
    with pytest.raises(ValidationError):
        Settings(retry_schedule="soon")
    with pytest.raises(ValidationError):
        Settings(allowed_networks="10.0.0.0/33")


@pytest.mark.parametrize(("status", "delivered", "retryable", "reason"), [
    (200, True, False, "ok"),
    (204, True, False, "ok"),
    (299, True, False, "ok"),
    (301, False, True, "redirect"),
    (302, False, True, "redirect"),
    (308, False, True, "redirect"),
    (400, False, True, "http_error"),
    (404, False, True, "http_error"),
    (410, False, False, "gone"),
    (429, False, True, "rate_limited"),
    (500, False, True, "http_error"),
    (502, False, True, "http_error"),
    (503, False, True, "unavailable"),
    (101, False, True, "http_error"),
])
def test_classify_status(status: int, delivered: bool, retryable: bool, reason: str) -> None:
    out = classify(status, now=NOW)
    assert (out.delivered, out.retryable, out.reason, out.status_code) == (
        delivered, retryable, reason, status)
    assert out.outcome == ("delivered" if delivered else "failed")
    assert (out.error is None) == delivered


@pytest.mark.parametrize(("kind", "retryable"), [
    ("timeout", True), ("connection_error", True), ("tls_error", True),
    ("ssrf_blocked", False), ("invalid_url", False),
])
def test_classify_errors(kind: str, retryable: bool) -> None:
    out = classify(None, error=kind, error_text=f"{kind}: detail", now=NOW)  # type: ignore[arg-type]
    assert not out.delivered and out.retryable is retryable and out.reason == kind
    assert out.status_code is None and out.error == f"{kind}: detail"


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120_000
    later = format_datetime(NOW + timedelta(minutes=10), usegmt=True)
    assert parse_retry_after(later, NOW) == 600_000
    assert parse_retry_after(format_datetime(NOW - timedelta(minutes=1), usegmt=True), NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    assert classify(429, retry_after="7", now=NOW).retry_after_ms == 7000
    assert classify(500, retry_after="7", now=NOW).retry_after_ms is None


def test_next_step_basic() -> None:
    rng = random.Random(1)
    assert next_step(classify(200, now=NOW), 1, DEFAULT, rng) == Done()
    assert next_step(classify(410, now=NOW), 1, DEFAULT, rng) == DeadLetter("gone")
    assert next_step(classify(None, error="ssrf_blocked", now=NOW), 1, DEFAULT, rng) == DeadLetter(
        "ssrf_blocked")
    assert next_step(classify(500, now=NOW), 8, DEFAULT, rng) == DeadLetter("exhausted")
    assert isinstance(next_step(classify(500, now=NOW), 7, DEFAULT, rng), Retry)
    assert next_step(classify(500, now=NOW), 1, (), rng) == DeadLetter("exhausted")


@settings(max_examples=300)
@given(attempt=st.integers(1, 7), seed=st.integers(), jitter=st.floats(0, TIER_HEADROOM))
def test_retry_delay_stays_in_its_tier_jitter_band(attempt: int, seed: int, jitter: float
                                                   ) -> None:
    step = next_step(classify(500, now=NOW), attempt, DEFAULT, random.Random(seed), jitter)
    assert isinstance(step, Retry)
    tier = DEFAULT[attempt - 1]
    assert step.tier_ms == tier
    assert tier * (1 - jitter) - 1 <= step.delay_ms <= tier * (1 + jitter) + 1
    assert step.delay_ms <= tier_ttl(tier)  # never above the wait queue's TTL


@settings(max_examples=300)
@given(attempt=st.integers(1, 7), seed=st.integers(),
       retry_after_s=st.integers(0, 20 * 3600),
       schedule=st.sampled_from([DEFAULT, (200, 400), (1000, 60_000, 600_000)]))
def test_retry_after_is_honoured_within_tier_and_one_hour(
        attempt: int, seed: int, retry_after_s: int, schedule: tuple[int, ...]) -> None:
    if attempt > len(schedule):
        return
    out = classify(503, retry_after=str(retry_after_s), now=NOW)
    step = next_step(out, attempt, schedule, random.Random(seed))
    assert isinstance(step, Retry)
    assert step.tier_ms in schedule
    assert step.delay_ms <= tier_ttl(step.tier_ms)  # never above the wait queue's TTL
    tier = schedule[attempt - 1]
    wanted = min(max(retry_after_s * 1000, 0), MAX_RETRY_AFTER_MS)
    if wanted <= max(schedule):
        assert step.delay_ms >= min(wanted, MAX_RETRY_AFTER_MS)  # never earlier than asked
    else:
        assert step.delay_ms == max(schedule)  # the longest tier is the cap
    if retry_after_s * 1000 <= tier:
        assert step.tier_ms == tier
    assert step.delay_ms <= max(tier_ttl(tier), MAX_RETRY_AFTER_MS * 1.2)


def test_retry_after_picks_the_smallest_long_enough_tier() -> None:
    step = next_step(classify(429, retry_after="600", now=NOW), 1, DEFAULT, random.Random(3))
    assert step == Retry(1_800_000, step.delay_ms)  # type: ignore[union-attr]
    assert isinstance(step, Retry) and 600_000 <= step.delay_ms <= 720_000
    capped = next_step(classify(429, retry_after="86400", now=NOW), 1, DEFAULT,
                       random.Random(3))
    assert isinstance(capped, Retry) and capped.tier_ms == 7_200_000
    assert MAX_RETRY_AFTER_MS <= capped.delay_ms <= MAX_RETRY_AFTER_MS * 1.2


def test_next_job_extends_history() -> None:
    job = make_job(attempt=2)
    first = attempt_record(1, classify(500, now=NOW), at=NOW, duration_ms=12.3456)
    job = job.model_copy(update={"history": (first,)})
    record = attempt_record(2, classify(None, error="timeout", error_text="timeout after 15s",
                                        now=NOW), at=NOW, duration_ms=15000.0)
    following = next_job(job.model_copy(update={"deferrals": 4}), record)
    assert following.attempt == 3 and following.deferrals == 0  # a new attempt starts afresh
    assert following.history == (first, record)
    assert following.delivery_id == job.delivery_id and following.event == job.event
    assert first.duration_ms == 12.346 and first.status_code == 500
    assert record.outcome == "failed" and record.error == "timeout after 15s"


def test_defer_tiers_double_up_to_the_longest() -> None:
    assert DEFAULT_DEFER_DELAYS_MS == (1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000)
    assert defer_tiers(200, 200) == (200,) and defer_tiers(500, 100) == (500,)
    with pytest.raises(ValueError, match="at least 1 ms"):
        defer_tiers(0, 1000)  # would never reach the longest


@given(st.integers(1, 10**6), st.integers(1, 10**7), st.integers(0, 50))
def test_each_deferral_of_an_attempt_waits_at_least_as_long_as_the_last(
        first: int, longest: int, deferrals: int) -> None:
    tiers = defer_tiers(first, longest)
    job = make_job().model_copy(update={"deferrals": deferrals})
    signed = SignedDelivery(job=job, body='{"id":"evt_1"}', headers={"webhook-id": "evt_1"},
                            signed_at=NOW)
    again, delay = deferred(signed, tiers)
    _, next_delay = deferred(again, tiers)
    later = again.job
    assert later.deferrals == deferrals + 1 and later.attempt == job.attempt
    assert later.history == job.history and later.delivery_id == job.delivery_id
    assert delay in tiers and next_delay >= delay
    assert delay == min(first * 2 ** deferrals, max(longest, first))
    # never sent, so it goes back as signed: body, signatures and signing time unchanged
    assert (again.body, again.headers, again.signed_at) == (signed.body, signed.headers, NOW)


def test_attempted_fact() -> None:
    job = make_job()
    out = classify(500, now=NOW)
    record = attempt_record(1, out, at=NOW, duration_ms=3.0)
    fact = attempted_fact(job, out, record, Retry(5000, 4500), b"x" * 2000, NOW, post="p1")
    assert fact.kind == "delivery.attempted" and fact.service == "deliverer"
    assert (fact.event_id, fact.event_type, fact.endpoint_id, fact.delivery_id, fact.attempt) == (
        "evt_1", "a.b", "ep_1", "dlv_1", 1)
    assert fact.url == "https://r.example/hook?x=1"  # credentials dropped
    assert (fact.outcome, fact.status_code, fact.duration_ms, fact.error) == (
        "failed", 500, 3.0, "HTTP 500")
    assert fact.details["response_excerpt"] == "x" * EXCERPT_CHARS
    assert fact.details["next"] == "retry" and fact.details["retry_in_ms"] == 4500
    assert fact.id == fact_id("dlv_1", 1, "delivery.attempted", "p1")
    assert fact.id != fact_id("dlv_1", 2, "delivery.attempted", "p1")
    assert fact.id.startswith("fct_")
    # the same POST's fact again (a redelivered fact): the same id, which audit keeps once;
    # another POST of the same attempt (a redelivered job): an id, and a record, of its own
    again = attempted_fact(job, out, record, Retry(5000, 4500), b"x" * 2000, NOW, post="p1")
    repeat = attempted_fact(job, out, record, Retry(5000, 4500), b"x" * 2000, NOW, post="p2")
    assert again.id == fact.id and repeat.id != fact.id


def test_attempted_fact_shows_headers_without_whole_signatures_or_cookies() -> None:
    job = make_job()
    out = classify(200, now=NOW)
    record = attempt_record(1, out, at=NOW, duration_ms=1.0)
    signature = "v1," + "A" * 43 + "= v1," + "B" * 43 + "="
    request = shown_request_headers({"webhook-id": "dlv_1", "webhook-signature": signature,
                                     "X-Dihya-Signature": "f" * 64, "X-Long": "y" * 500})
    assert request["webhook-signature"] == "v1,AAAAAAAA… v1,BBBBBBBB…"
    assert request["X-Dihya-Signature"] == "ffffffff…"
    assert request["webhook-id"] == "dlv_1" and len(request["X-Long"]) == 200
    response = shown_response_headers([("Content-Type", "text/plain"), ("Set-Cookie", "s=1"),
                                       ("Via", "a"), ("Via", "b"),
                                       *((f"X-{i}", "v") for i in range(50))])
    assert "Set-Cookie" not in response and response["Via"] == "a, b"
    assert len(response) == 30
    fact = attempted_fact(job, out, record, Done(), b"ok", NOW, post="p1", request_headers=request,
                          response_headers=response)
    assert fact.details["request_headers"] == request
    assert fact.details["response_headers"] == response
    assert "A" * 20 not in fact.model_dump_json() and "f" * 20 not in fact.model_dump_json()


def test_dead_lettered_fact() -> None:
    out = classify(410, now=NOW)
    parked = next_job(make_job(), attempt_record(1, out, at=NOW, duration_ms=1.0))
    fact = dead_lettered_fact(parked, "gone", NOW)
    assert fact.kind == "delivery.dead_lettered"
    assert (fact.attempt, fact.reason, fact.status_code) == (1, "gone", 410)
    assert fact.details == {"attempts": 1}


def test_redact_url() -> None:
    assert redact_url("https://a:b@h.example/p?q=1") == "https://h.example/p?q=1"
    assert redact_url("https://h.example/p") == "https://h.example/p"


def test_needs_resign() -> None:
    assert needs_resign(NOW - timedelta(seconds=241), NOW, 240)
    assert not needs_resign(NOW - timedelta(seconds=10), NOW, 240)
    assert not needs_resign(NOW - timedelta(days=1), NOW, 0)


def test_parse_signed_rejects_garbage_readably() -> None:
    with pytest.raises(ValueError, match="JSON"):
        parse_signed(b"nope")
    with pytest.raises(ValueError, match="job"):
        parse_signed(b'{"type": "dihya.signed_delivery.v1"}')


def test_outcome_is_frozen() -> None:
    out = Outcome(True, False, "ok", 200)
    with pytest.raises(AttributeError):
        out.reason = "x"  # type: ignore[misc]


# -- an endpoint's own retry schedule (DeliveryJob.retry_schedule_ms) ---------------------


def test_the_schedule_in_use_is_the_endpoints_own_when_its_job_has_one() -> None:
    job = make_job()
    assert schedule_for(job, DEFAULT) == DEFAULT
    own = job.model_copy(update={"retry_schedule_ms": (250, 1000)})
    assert schedule_for(own, DEFAULT) == (250, 1000)
    single = job.model_copy(update={"retry_schedule_ms": ()})
    assert schedule_for(single, DEFAULT) == ()  # empty is a schedule: one attempt, not default


@settings(max_examples=200)
@given(own=st.lists(st.integers(1000, 172_800_000), max_size=20).map(tuple),
       attempt=st.integers(1, 22), seed=st.integers())
def test_next_step_follows_an_endpoints_own_schedule(own: tuple[int, ...], attempt: int,
                                                     seed: int) -> None:
    job = make_job(attempt).model_copy(update={"retry_schedule_ms": own})
    step = next_step(classify(500, now=NOW), attempt, schedule_for(job, DEFAULT),
                     random.Random(seed))
    if attempt > len(own):
        assert step == DeadLetter("exhausted")
    else:
        assert isinstance(step, Retry) and step.tier_ms == own[attempt - 1]
        assert step.delay_ms <= tier_ttl(step.tier_ms)


def test_an_empty_own_schedule_dead_letters_the_first_failure() -> None:
    job = make_job().model_copy(update={"retry_schedule_ms": ()})
    step = next_step(classify(500, now=NOW), 1, schedule_for(job, DEFAULT), random.Random(1))
    assert step == DeadLetter("exhausted")
    # while the deployment's schedule would have retried it
    assert isinstance(next_step(classify(500, now=NOW), 1, DEFAULT, random.Random(1)), Retry)


def test_retry_after_picks_tiers_from_the_endpoints_own_schedule() -> None:
    own = (2_000, 90_000, 900_000)
    asked = next_step(classify(429, retry_after="60", now=NOW), 1, own, random.Random(2))
    assert isinstance(asked, Retry) and asked.tier_ms == 90_000  # not DEFAULT's 5 min tier
    assert 60_000 <= asked.delay_ms <= tier_ttl(90_000)
    capped = next_step(classify(503, retry_after="7200", now=NOW), 1, own, random.Random(2))
    assert capped == Retry(900_000, 900_000)  # its longest tier is the cap


def test_next_job_keeps_the_endpoints_schedule() -> None:
    job = make_job().model_copy(update={"retry_schedule_ms": (250,)})
    record = attempt_record(1, classify(500, now=NOW), at=NOW, duration_ms=1.0)
    following = next_job(job, record)
    assert following.retry_schedule_ms == (250,) and following.attempt == 2
    assert next_job(make_job(), record).retry_schedule_ms is None


def test_started_fact_carries_the_id_of_its_posts_outcome() -> None:
    job = make_job()
    out = classify(200, now=NOW)
    record = attempt_record(1, out, at=NOW, duration_ms=3.0)
    ahead = started_fact(job, NOW, post="p1")
    outcome = attempted_fact(job, out, record, Done(), b"ok", NOW, post="p1")
    assert ahead.kind == "delivery.started" and ahead.outcome is None
    assert ahead.id == outcome.id != started_fact(job, NOW, post="p2").id
    assert (ahead.event_id, ahead.endpoint_id, ahead.delivery_id, ahead.attempt) == (
        outcome.event_id, outcome.endpoint_id, outcome.delivery_id, outcome.attempt)
    assert ahead.url == "https://r.example/hook?x=1"  # credentials dropped here too


@given(status=st.sampled_from([200, 204, 301, 410, 429, 500, 503]),
       step=st.sampled_from([(Done(), {"next": "done"}),
                             (Retry(5000, 4500), {"next": "retry", "retry_in_ms": 4500}),
                             (DeadLetter("gone"), {"next": "dead_letter",
                                                   "dead_letter_reason": "gone"})]),
       tenant=st.none() | st.just("ten_1"), excerpt=st.binary(max_size=300),
       later=st.integers(min_value=0, max_value=600_000))
def test_the_outcome_made_from_its_write_ahead_is_the_attempted_fact(
        status: int, step: tuple[Step, dict[str, JsonValue]], tenant: str | None,
        excerpt: bytes, later: int) -> None:
    """The deliverer copies a POST's outcome fact from its write-ahead instead of building
    it again: the fact every field of which the attempt's fact has (built here field by field),
    byte for byte; only its time is the end's, and the write-ahead is left as it was."""
    job = make_job().model_copy(update={"tenant": tenant})
    start, end = NOW, NOW + timedelta(milliseconds=later)
    out = classify(status, now=end)
    record = attempt_record(1, out, at=start, duration_ms=later)
    request, response = {"webhook-id": "evt_1"}, {"Via": "a"}
    ahead = started_fact(job, start, post="p1")
    copied = outcome_fact(ahead, out, record, step[0], excerpt, end, request_headers=request,
                          response_headers=response)
    expected = AuditFact(
        id=fact_id("dlv_1", 1, "delivery.attempted", "p1"), kind="delivery.attempted",
        occurred_at=end, service="deliverer", event_id="evt_1", event_type="a.b",
        endpoint_id="ep_1", delivery_id="dlv_1", attempt=1, url="https://r.example/hook?x=1",
        outcome=out.outcome, status_code=status, duration_ms=float(later), error=out.error,
        reason=out.reason, tenant=tenant,
        details={"response_excerpt": excerpt.decode("utf-8", "replace")[:EXCERPT_CHARS],
                 **step[1], "request_headers": request, "response_headers": response})
    assert copied == expected and encode(copied) == encode(expected)
    assert attempted_fact(job, out, record, step[0], excerpt, end, post="p1",
                          request_headers=request, response_headers=response) == expected
    assert ahead.kind == "delivery.started" and ahead.occurred_at == start
    assert ahead.details == {} and ahead.outcome is None
