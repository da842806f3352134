"""The message log's pure decisions: attempts read from facts, status moves, cursors, health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.decisions.messages import (
    CursorError,
    DeliveryState,
    LogAttempt,
    LogStatus,
    attempt_from_fact,
    decode_cursor,
    encode_cursor,
    endpoint_state,
    hours_ending,
    log_event,
    plan_attempts,
    status_after,
    subject_of,
    summarize,
    unique_attempts,
)
from shared.contracts import AuditFact, Event

NOW = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)


def fact(**fields: object) -> AuditFact:
    base: dict[str, object] = {
        "id": "fct_1", "kind": "delivery.attempted", "occurred_at": NOW, "service": "deliverer",
        "event_id": "evt_1", "endpoint_id": "ep_1", "delivery_id": "dlv_1", "attempt": 2,
        "url": "https://r.example/h", "outcome": "failed", "status_code": 503,
        "duration_ms": 250.0, "details": {"next": "retry", "retry_in_ms": 30000,
                                          "response_excerpt": "busy",
                                          "request_headers": {"webhook-id": "x"},
                                          "response_headers": {"Retry-After": "30"}}}
    base.update(fields)
    return AuditFact.model_validate(base)


def attempt(n: int, outcome: str, *, retry: bool) -> LogAttempt:
    return LogAttempt(delivery_id="dlv_1", endpoint_id="ep_1", event_id="evt_1", url="u",
                      attempt=n, at=NOW, outcome=outcome,  # type: ignore[arg-type]  # literal
                      status_code=None, latency_ms=None,
                      next_retry_at=NOW + timedelta(seconds=5) if retry else None)


def test_an_attempt_is_read_from_its_fact() -> None:
    got = attempt_from_fact(fact())
    assert got is not None
    assert (got.delivery_id, got.endpoint_id, got.event_id, got.attempt) == (
        "dlv_1", "ep_1", "evt_1", 2)
    assert got.outcome == "failed" and got.status_code == 503 and got.latency_ms == 250.0
    assert got.at == NOW - timedelta(milliseconds=250)  # when the request started
    assert got.next_retry_at == NOW + timedelta(seconds=30)
    assert got.request_headers == {"webhook-id": "x"}
    assert got.response_headers == {"Retry-After": "30"} and got.response_excerpt == "busy"
    # an older deliverer's fact (no headers) still reads
    old = attempt_from_fact(fact(details={"next": "dead_letter"}))
    assert old is not None and old.request_headers == {} and old.next_retry_at is None
    assert attempt_from_fact(fact(kind="delivery.held")) is None
    assert attempt_from_fact(fact(delivery_id=None)) is None


@pytest.mark.parametrize(("current", "last", "seen", "expected"), [
    ("pending", 0, attempt(1, "delivered", retry=False), "delivered"),
    ("pending", 0, attempt(1, "failed", retry=True), "pending"),
    ("pending", 1, attempt(2, "failed", retry=False), "failed"),  # given up
    ("failed", 3, attempt(3, "failed", retry=False), "failed"),  # the dead letter came first
    ("failed", 2, attempt(2, "failed", retry=True), "failed"),
    ("held", 0, attempt(1, "failed", retry=True), "held"),
    ("retried", 3, attempt(4, "failed", retry=True), "pending"),  # a resend failing again
    ("retried", 3, attempt(4, "delivered", retry=False), "delivered"),
    ("delivered", 2, attempt(1, "failed", retry=True), "delivered"),  # a late, older fact
])
def test_status_after_an_attempt(current: LogStatus, last: int, seen: LogAttempt,
                                 expected: LogStatus) -> None:
    assert status_after(current, last, seen) == expected


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC)),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80))
def test_a_cursor_gives_back_what_it_holds(at: datetime, ident: str) -> None:
    assert decode_cursor(encode_cursor(at, ident)) == (at, ident)


@pytest.mark.parametrize("bad", ["", "!!!", "bm9wZQ", "MjAyNi0wMS0wMXw", "eHx5"])
def test_a_foreign_cursor_is_refused(bad: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(bad)


def test_health_counts_the_last_24_hours_by_hour() -> None:
    hours = hours_ending(NOW)
    assert len(hours) == 24 and hours[-1] == datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert hours[0] == datetime(2026, 12, 5, 13, tzinfo=UTC)
    rows = [(hours[-1], "delivered", 3), (hours[-1], "failed", 1), (hours[0], "failed", 2),
            (hours[0] - timedelta(hours=1), "delivered", 50)]  # older than the window
    summary = summarize(rows, NOW, status="enabled", failing_since=None,
                        last_delivery_at=NOW)
    assert (summary.attempts, summary.delivered, summary.failed) == (6, 3, 3)
    assert summary.success_rate == 0.5 and summary.state == "enabled"
    assert summary.hours[-1].delivered == 3 and summary.hours[0].failed == 2
    empty = summarize([], NOW, status="enabled", failing_since=NOW, last_delivery_at=None)
    assert empty.success_rate is None and empty.attempts == 0 and empty.state == "failing"
    assert endpoint_state("disabled", None) == "disabled"


def test_the_payload_is_kept_only_while_retained_and_names_its_subject() -> None:
    event = Event(id="evt_1", event="a.b", timestamp=NOW, lang="fr",
                  data={"user_id": "u42", "x": 1})
    kept = log_event(event, NOW, keep_payload=True, tenant="ten_a")
    assert kept.payload is not None and kept.payload["data"] == {"user_id": "u42", "x": 1}
    assert kept.subject == "u42" and kept.lang == "fr" and kept.tenant == "ten_a"
    bare = log_event(event, NOW, keep_payload=False, tenant=None)
    assert bare.payload is None and bare.subject is None  # no payload, no link to a person
    assert bare.tenant is None  # platform-wide
    assert subject_of(Event(event="a.b", data={"user_id": 42})) is None


def _attempt(delivery: str, n: int, outcome: str, retry: bool = False) -> LogAttempt:
    at = datetime(2026, 12, 7, 5, tzinfo=UTC)
    return LogAttempt(delivery_id=delivery, endpoint_id="ep_1", event_id="evt_1", url="u",
                      attempt=n, at=at + timedelta(seconds=n),
                      outcome=outcome,  # type: ignore[arg-type]  # a literal
                      status_code=None, latency_ms=None,
                      next_retry_at=at + timedelta(minutes=n) if retry else None)


def test_plan_attempts_moves_counts_and_creates_rows() -> None:
    """One batch: a known delivery's attempts applied oldest first (it ends delivered), one
    the log never saw gets a pending row with its retry, one only counts a late older
    attempt."""
    now = datetime(2026, 12, 7, 6, tzinfo=UTC)
    new = [_attempt("dlv_a", 2, "delivered"), _attempt("dlv_a", 1, "failed", True),
           _attempt("dlv_new", 1, "failed", True), _attempt("dlv_late", 1, "failed", True)]
    plan = plan_attempts(new, {"dlv_a": DeliveryState("pending", 0, 0),
                               "dlv_late": DeliveryState("delivered", 3, 3)}, now)
    assert plan.attempts == new
    assert [(r["key"], r["status"], r["last_attempt"], r["attempts_count"])
            for r in plan.moved] == [("dlv_a", "delivered", 2, 2)]
    assert plan.counted == [{"key": "dlv_late", "attempts_count": 4}]
    assert [(r["id"], r["status"], r["attempts_count"], r["next_retry_at"], r["updated_at"])
            for r in plan.missing] == [("dlv_new", "pending", 1, new[2].next_retry_at, now)]
    assert "moved" not in plan.missing[0] and "moved" not in plan.moved[0]


def test_unique_attempts_keeps_one_per_delivery_and_number() -> None:
    first, again = _attempt("dlv_a", 1, "failed", True), _attempt("dlv_a", 1, "delivered")
    assert unique_attempts([first, _attempt("dlv_b", 1, "failed"), again]) == [
        again, _attempt("dlv_b", 1, "failed")]
