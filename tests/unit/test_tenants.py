"""Tenants' pure decisions: whose endpoints an event reaches (no cross-tenant delivery, by
construction), which tenant an event asks for, what a tenant-scoped token may see, and the
per-tenant event rate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.console import security_headers
from services.ingest.decisions import Endpoint, complete
from services.ingest.decisions.tenants import (
    ALL_TENANTS,
    Gcra,
    LocalSpell,
    QuotaNote,
    TenantRate,
    TenantRefusal,
    fan_out,
    judged_locally,
    requested,
    retry_after,
    scope_of,
    shared_again,
    visible,
)
from services.ingest.settings import Settings
from shared.contracts import Event
from shared.subscriptions import selects

NOW = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)

tenant_ids = st.sampled_from(["ten_a", "ten_b", "ten_c", "ten_default"])
words = st.sampled_from(["template", "incident", "created", "security", "high"])
event_types = st.lists(words, min_size=1, max_size=3).map(".".join)
patterns = st.lists(st.one_of(words, st.just("*"), st.just("#")), min_size=1,
                    max_size=3).map(".".join)


@st.composite
def endpoint_lists(draw: st.DrawFn) -> list[Endpoint]:
    count = draw(st.integers(min_value=0, max_value=12))
    return [Endpoint(id=f"ep_{i}", url=f"https://r{i}.example/hook",
                     events=tuple(draw(st.lists(patterns, min_size=1, max_size=3))),
                     status=draw(st.sampled_from(["enabled", "disabled"])),
                     tenant_id=draw(tenant_ids))
            for i in range(count)]


@settings(max_examples=300)
@given(endpoints=endpoint_lists(), tenant=tenant_ids, event_type=event_types,
       everyone=st.booleans())
def test_an_event_reaches_exactly_its_tenants_subscribed_endpoints(
        endpoints: list[Endpoint], tenant: str, event_type: str, everyone: bool) -> None:
    event = complete(Event(event=event_type, data={}, tenant=None if everyone else tenant,
                           all_tenants=everyone), message_id="m-1", now=NOW)
    scope = ALL_TENANTS if everyone else tenant
    jobs, held = fan_out(event, scope, endpoints)
    by_id = {ep.id: ep for ep in endpoints}
    # nothing crosses tenants: every job and held delivery is for an endpoint of the scope
    for job in jobs:
        owner = by_id[job.endpoint_id]
        assert everyone or owner.tenant_id == tenant
        assert job.tenant == owner.tenant_id
    for item in held:
        assert everyone or by_id[item.job.endpoint_id].tenant_id == tenant
    # and nothing owed is missing: each subscribed endpoint of the scope gets exactly one
    expected_jobs = {ep.id for ep in endpoints
                     if (everyone or ep.tenant_id == tenant) and ep.status == "enabled"
                     and selects(ep.events, event_type)}
    expected_held = {ep.id for ep in endpoints
                     if (everyone or ep.tenant_id == tenant) and ep.status != "enabled"
                     and selects(ep.events, event_type)}
    assert sorted(j.endpoint_id for j in jobs) == sorted(expected_jobs)
    assert sorted(h.job.endpoint_id for h in held) == sorted(expected_held)


def test_an_event_asks_for_its_tenant_all_tenants_or_the_default() -> None:
    named = Event(event="a.b", data={}, tenant="customer-42")
    assert requested(named, None) == "customer-42"
    assert requested(named, "default") == "customer-42"
    assert requested(Event(event="a.b", data={}), "default") == "default"
    assert requested(Event(event="a.b", data={}, all_tenants=True), None) is ALL_TENANTS
    missing = requested(Event(event="a.b", data={}), None)
    assert isinstance(missing, TenantRefusal) and missing.reason == "tenant_missing"
    both = requested(Event(event="a.b", data={}, tenant="x", all_tenants=True), "default")
    assert isinstance(both, TenantRefusal) and both.reason == "tenant_conflict"


def test_tenant_roles_are_confined_platform_roles_are_not() -> None:
    assert scope_of("admin", None) is None
    assert scope_of("viewer", None) is None
    assert scope_of("tenant_admin", "ten_a") == "ten_a"
    assert scope_of("tenant_viewer", "ten_b") == "ten_b"
    # a tenant role without a tenant sees no tenant at all, never every tenant
    assert scope_of("tenant_admin", None) not in (None, "ten_a")
    assert visible(None, "ten_a") and visible("ten_a", "ten_a")
    assert not visible("ten_a", "ten_b")


def test_the_rate_allows_a_seconds_worth_then_says_how_long_to_wait() -> None:
    rate = TenantRate(5)
    assert [rate.take("ten_a", 100.0) for _ in range(5)] == [0.0] * 5
    wait = rate.take("ten_a", 100.0)
    assert wait == pytest.approx(0.2)
    assert retry_after(wait) == "1"
    assert rate.take("ten_b", 100.0) == 0.0  # another tenant has its own bucket
    assert rate.take("ten_a", 100.2) == 0.0  # refilled at 5/s


def test_the_rate_keeps_a_bounded_number_of_buckets() -> None:
    rate = TenantRate(1, max_tenants=3)
    for i in range(10):
        assert rate.take(f"ten_{i}", 0.0) == 0.0
    assert rate.take("ten_9", 0.0) > 0  # remembered: its bucket is empty
    assert rate.take("ten_0", 0.0) == 0.0  # forgotten (only 3 kept): starts full again
    assert TenantRate(0).take("ten_a", 0.0) == 0.0  # 0: no limit


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=60),
       st.floats(min_value=0.5, max_value=50))
def test_the_rate_never_admits_more_than_burst_plus_refill(gaps: list[float],
                                                          per_second: float) -> None:
    rate = TenantRate(per_second)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += rate.take("ten_a", now) == 0.0
    assert admitted <= max(per_second, 1.0) + now * per_second + 1e-9


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=60),
       st.floats(min_value=0.5, max_value=50))
def test_the_shared_gcra_admits_what_the_bucket_admits(gaps: list[float],
                                                       per_second: float) -> None:
    """The GCRA the database runs for replicas sharing a quota (services/ingest/tenant_rate)
    is the in-memory bucket's quota: same decisions (up to rounding at the very boundary),
    and the same bound."""
    gcra, rate = Gcra.of(per_second), TenantRate(per_second)
    tat: float | None = None
    now = 0.0
    admitted = disagreements = 0
    for gap in gaps:
        now += gap
        wait, tat = gcra.take(tat, now)
        bucket_wait = rate.take("ten_a", now)
        admitted += wait == 0.0
        if (wait == 0.0) != (bucket_wait == 0.0):
            disagreements += 1
            assert abs(wait - bucket_wait) < 1e-5  # only where both sit on the boundary
        else:
            assert wait == pytest.approx(bucket_wait, abs=1e-5)
    assert disagreements <= 1
    assert admitted <= max(per_second, 1.0) + now * per_second + 1e-9


def test_the_gcra_allows_a_seconds_worth_then_says_how_long_to_wait() -> None:
    gcra = Gcra.of(5)
    tat = None
    for _ in range(5):
        wait, tat = gcra.take(tat, 100.0)
        assert wait == 0.0
    wait, same = gcra.take(tat, 100.0)
    assert wait == pytest.approx(0.2, abs=1e-5) and same == tat  # refused: nothing taken
    assert gcra.take(tat, 100.2)[0] == 0.0
    assert Gcra.of(0.5).tolerance < 1e-5  # under 1/s: a burst of one


def test_the_console_may_be_framed_only_by_the_configured_origins() -> None:
    closed = security_headers("")
    assert "frame-ancestors 'none'" in closed["Content-Security-Policy"]
    assert closed["X-Frame-Options"] == "DENY"
    opened = security_headers("", "https://app.example.com https://b.example:8443")
    assert ("frame-ancestors https://app.example.com https://b.example:8443"
            in opened["Content-Security-Policy"])
    assert "X-Frame-Options" not in opened  # it cannot name origins: CSP decides
    settings = Settings(portal_frame_ancestors="  https://app.example.com  ")
    assert settings.portal_frame_ancestors == "https://app.example.com"
    for bad in ("app.example.com", "https://app.example.com/path", "'self' https://x"):
        with pytest.raises(ValidationError):
            Settings(portal_frame_ancestors=bad)
    with pytest.raises(ValidationError):
        Settings(portal_accent="red")
    assert Settings(default_tenant="").default_tenant is None  # empty: no default


def test_an_outage_of_the_shared_quota_is_logged_once_then_summarised_every_30_s() -> None:
    spell, note = judged_locally(None, 100.0)  # the first event judged locally: said at once
    assert note == QuotaNote("tenant_quota_local", "warning", {})
    notes: list[QuotaNote] = []
    for i in range(1, 3000):  # then 100 events a second for 30 s: silence until 30 s passed
        spell, note = judged_locally(spell, 100.0 + i / 100)
        if note is not None:
            notes.append(note)
    assert notes == []
    assert spell == LocalSpell(began=100.0, said_at=100.0, unsaid=2999, judged=3000)
    spell, note = judged_locally(spell, 130.0)
    assert note == QuotaNote("tenant_quota_still_local", "warning", {
        "judged_locally": 3000, "judged_locally_total": 3001, "for_seconds": 30.0})
    spell, note = judged_locally(spell, 159.9)  # the next summary 30 s after this one
    assert note is None
    spell, note = judged_locally(spell, 160.0)
    assert note is not None and note.fields == {
        "judged_locally": 2, "judged_locally_total": 3003, "for_seconds": 60.0}
    spell, _ = judged_locally(spell, 170.0)
    assert shared_again(spell, 175.5) == QuotaNote("tenant_quota_shared_again", "info", {
        "judged_locally": 1, "judged_locally_total": 3004, "for_seconds": 75.5})
    assert shared_again(None, 175.5) is None  # no outage: nothing to say
    _, note = judged_locally(None, 200.0)  # the next outage is said at once again
    assert note is not None and note.event == "tenant_quota_local"
