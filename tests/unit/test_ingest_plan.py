"""Fan-out planning, stable ids and decoding of consumed messages (ingest's pure logic)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.decisions import (
    ROUTED_AS_HEADER,
    Endpoint,
    Rejection,
    accepted_fact,
    accepted_fact_id,
    complete,
    decode,
    delivery_id,
    event_id_for,
    hold,
    key_is_fresh,
    plan,
    rejected_fact,
    route_refusal,
)
from shared import topology
from shared.contracts import DeliveryJob, Event, encode

NOW = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
MAX = 262_144  # DIHYA_INGEST_MAX_BODY_BYTES's default
TEMPLATE = {"event": "template.created", "timestamp": "2025-05-20T12:00:00Z", "lang": "fr",
            "data": {"template_id": "abc123", "user_id": "user42",
                     "details": {"fr": "Modèle créé", "en": "Template created"}}}

ENDPOINTS = [
    Endpoint("ep_exact", "https://a.example/hook", ("template.created",)),
    Endpoint("ep_wild", "https://b.example/hook", ("incident.*", "template.#")),
    Endpoint("ep_other", "https://c.example/hook", ("incident.*",)),
    Endpoint("ep_off", "https://d.example/hook", ("#",), status="disabled"),
]


def event(**over: object) -> Event:
    return complete(Event.model_validate({**TEMPLATE, **over}), message_id=None, now=NOW)


def test_plan_one_job_per_subscribed_enabled_endpoint() -> None:
    ev = event(id="evt_1")
    jobs = plan(ev, ENDPOINTS)
    assert [j.endpoint_id for j in jobs] == ["ep_exact", "ep_wild"]
    assert [j.url for j in jobs] == ["https://a.example/hook", "https://b.example/hook"]
    for job in jobs:
        assert job.event == ev and job.attempt == 1 and job.history == ()
        digest = hashlib.sha256(f"evt_1:{job.endpoint_id}".encode()).hexdigest()[:26]
        assert job.delivery_id == "dlv_" + digest


def test_an_endpoint_with_several_matching_patterns_gets_one_job() -> None:
    ep = Endpoint("ep_twice", "https://x.example/", ("template.*", "#", "template.created"))
    assert len(plan(event(id="evt_2"), [ep])) == 1


def test_no_subscriber_no_job() -> None:
    assert plan(event(id="evt_3", event="nobody.cares"), ENDPOINTS[2:]) == []


def test_delivery_ids_are_deterministic_across_replans() -> None:
    ev = event(id="evt_same")
    first = [j.delivery_id for j in plan(ev, ENDPOINTS)]
    again = [j.delivery_id for j in plan(ev, list(reversed(ENDPOINTS)))]
    assert sorted(first) == sorted(again)
    other = [j.delivery_id for j in plan(event(id="evt_other"), ENDPOINTS)]
    assert not set(first) & set(other)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)),
                unique=True, max_size=30))
def test_delivery_id_is_a_function_of_the_pair(pairs: list[tuple[str, str]]) -> None:
    ids = [delivery_id(e, p) for e, p in pairs]
    assert ids == [delivery_id(e, p) for e, p in pairs]
    assert all(i.startswith("dlv_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == len({f"{e}:{p}" for e, p in pairs})


def test_plan_refuses_an_event_without_id() -> None:
    with pytest.raises(ValueError, match="id and timestamp"):
        plan(Event.model_validate(TEMPLATE), ENDPOINTS)


def test_event_id_body_first_then_message_id_then_random() -> None:
    assert event_id_for("evt_given", "m1") == "evt_given"
    derived = event_id_for(None, "m1")
    assert derived == "evt_" + hashlib.sha256(b"m1").hexdigest()[:26]
    assert event_id_for(None, "m1") == derived != event_id_for(None, "m2")
    a, b = event_id_for(None, None), event_id_for(None, None)
    assert a.startswith("evt_") and a != b


def test_complete_fills_id_and_timestamp_only_when_missing() -> None:
    bare = Event.model_validate({"event": "a.b", "data": {}})
    done = complete(bare, message_id="m", now=NOW)
    assert done.id == event_id_for(None, "m") and done.timestamp == NOW
    given_ts = Event.model_validate(TEMPLATE)
    assert complete(given_ts, message_id="m", now=NOW + timedelta(days=1)).timestamp == (
        datetime(2025, 5, 20, 12, 0, tzinfo=UTC))


def test_decode_accepts_the_guide_template_with_or_without_type_property() -> None:
    body = orjson.dumps(TEMPLATE)
    assert isinstance(decode(body, None, max_bytes=MAX), Event)
    assert isinstance(decode(body, Event.TYPE, max_bytes=MAX), Event)


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe{}", b'{"event": "a.b",'])
def test_decode_bad_json(body: bytes) -> None:
    result = decode(body, None, max_bytes=MAX)
    assert isinstance(result, Rejection) and result.reason == "invalid_json"
    assert result.event_type is None


def test_decode_schema_error_names_fields_not_values() -> None:
    body = orjson.dumps({"event": "order.paid", "lang": "de-SECRET", "data": "SECRET-VALUE",
                         "password": "hunter2-SECRET"})
    result = decode(body, None, max_bytes=MAX)
    assert isinstance(result, Rejection) and result.reason == "schema_invalid"
    assert result.event_type == "order.paid"
    for name in ("lang", "data", "password"):
        assert name in result.error
    assert "SECRET" not in result.error and "hunter2" not in result.error


@pytest.mark.parametrize("body", [b"[]", b"42", b'{"event": "Not An Event!", "data": {}}'])
def test_decode_schema_invalid_shapes(body: bytes) -> None:
    result = decode(body, None, max_bytes=MAX)
    assert isinstance(result, Rejection) and result.reason == "schema_invalid"
    assert result.event_type is None  # nothing well-formed to report


def test_decode_refuses_another_contract_type() -> None:
    result = decode(orjson.dumps(TEMPLATE), "dihya.delivery_job.v1", max_bytes=MAX)
    assert isinstance(result, Rejection) and result.reason == "unsupported_type"
    assert result.event_type == "template.created"


def test_accepted_fact_is_deterministic_and_names_the_subject() -> None:
    ev = event(id="evt_fact")
    jobs = plan(ev, ENDPOINTS)
    fact = accepted_fact(ev, jobs, NOW)
    assert fact.id == accepted_fact_id("evt_fact") == accepted_fact(ev, jobs, NOW).id
    assert fact.id != accepted_fact_id("evt_other") and fact.id.startswith("fct_")
    assert fact.kind == "event.accepted" and fact.service == "ingest"
    assert fact.event_id == "evt_fact" and fact.event_type == "template.created"
    assert fact.details == {"endpoints": 2, "subject": "user42", "lang": "fr"}
    odd = event(id="evt_odd", data={"user_id": 42}, lang=None)
    assert accepted_fact(odd, [], NOW).details == {"endpoints": 0, "subject": None, "lang": None}


def test_rejected_facts_get_fresh_ids() -> None:
    rejection = Rejection("invalid_json", "Invalid JSON")
    a, b = rejected_fact(rejection, NOW), rejected_fact(rejection, NOW)
    assert a.id != b.id and a.kind == "event.rejected" and a.reason == "invalid_json"


def test_idempotency_window() -> None:
    assert key_is_fresh(NOW, NOW + timedelta(seconds=59), 60)
    assert not key_is_fresh(NOW, NOW + timedelta(seconds=60), 60)
    assert not key_is_fresh(NOW, NOW, 0)


def test_plan_and_hold_copy_each_endpoints_own_retry_schedule() -> None:
    ev = event(id="evt_sched")
    endpoints = [
        Endpoint("ep_own", "https://a.example/", ("template.*",), retry_schedule_ms=(1000, 60_000)),
        Endpoint("ep_once", "https://b.example/", ("#",), retry_schedule_ms=()),
        Endpoint("ep_default", "https://c.example/", ("template.created",)),
        Endpoint("ep_off", "https://d.example/", ("#",), "disabled", "manual",
                 retry_schedule_ms=(2000,)),
    ]
    jobs = {j.endpoint_id: j for j in plan(ev, endpoints)}
    assert {k: j.retry_schedule_ms for k, j in jobs.items()} == {
        "ep_own": (1000, 60_000), "ep_once": (), "ep_default": None}
    # it travels in the message the signer reads, in milliseconds, and comes out the same
    assert orjson.loads(encode(jobs["ep_own"]))["retry_schedule_ms"] == [1000, 60_000]
    assert DeliveryJob.model_validate_json(encode(jobs["ep_once"])) == jobs["ep_once"]
    [held] = hold(ev, endpoints)
    assert held.job.endpoint_id == "ep_off" and held.job.retry_schedule_ms == (2000,)


# -- the limits both doors share, and the routing key (issue #18) ---------------------------


def test_decode_refuses_a_body_over_the_limit_before_reading_it() -> None:
    body = orjson.dumps({**TEMPLATE, "data": {"blob": "x" * 2000}})
    assert isinstance(decode(body, None, max_bytes=len(body)), Event)
    result = decode(body, None, max_bytes=len(body) - 1)
    assert isinstance(result, Rejection) and result.reason == "body_too_large"
    assert str(len(body)) in result.error and "DIHYA_INGEST_MAX_BODY_BYTES" in result.error
    garbage = b"{" * 5000  # not even JSON: the size decides first, nothing is parsed
    assert decode(garbage, None, max_bytes=1024) == Rejection(
        "body_too_large", "the body is 5000 bytes; the limit is 1024 "
        "(DIHYA_INGEST_MAX_BODY_BYTES)")


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"event": "order.paid", "data": {"n": NaN}}', "non_finite_number"),
    (b'{"event": "order.paid", "data": {"n": [Infinity]}}', "non_finite_number"),
    (b'{"event": "order.paid", "data": {"n": -Infinity}}', "non_finite_number"),
    (b'{"event": "order.paid", "data": {"n": 1e999}}', "non_finite_number"),
    (b'{"event": "order.paid", "data": {"a": 1, "a": 2}}', "duplicate_key"),
    (b'{"event": "order.paid", "data": {}, "event": "order.paid"}', "duplicate_key"),
])
def test_decode_applies_the_json_rule_and_still_names_the_type(body: bytes, reason: str
                                                                ) -> None:
    result = decode(body, None, max_bytes=MAX)
    assert isinstance(result, Rejection) and result.reason == reason
    assert result.event_type == "order.paid"


def test_decode_refuses_the_smuggled_second_type() -> None:
    # before: the last "event" won, and a publisher allowed "order.*" announced admin.reset
    body = b'{"event": "order.paid", "data": {}, "event": "admin.reset"}'
    result = decode(body, None, max_bytes=MAX)
    assert isinstance(result, Rejection) and result.reason == "duplicate_key"
    assert "'event'" in result.error


@pytest.mark.parametrize(("exchange", "routing_key", "refused"), [
    (topology.EVENTS_EXCHANGE, "template.created", False),
    (topology.EVENTS_EXCHANGE, "template.deleted", True),
    (topology.EVENTS_EXCHANGE, "template.#", True),
    (topology.EVENTS_EXCHANGE, "", True),
    (topology.EVENTS_EXCHANGE, None, True),
    ("", topology.INGEST_EVENTS, False),  # an operator's own message, put into the queue
    ("", "template.created", False),
    ("", "other.queue", True),
    ("some.exchange", topology.INGEST_EVENTS, True),
])
def test_route_refusal(exchange: str, routing_key: str | None, refused: bool) -> None:
    result = route_refusal(event(), exchange=exchange, routing_key=routing_key,
                           headers={"x-other": "1"})
    if not refused:
        assert result is None
    else:
        assert result is not None and result.reason == "routing_key_mismatch"
        assert result.event_type == "template.created"
        assert "template.created" in result.error


@given(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True),
       st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True))
def test_only_the_events_own_type_routes_it(event_type: str, routing_key: str) -> None:
    ev = Event(event=event_type, data={})
    result = route_refusal(ev, exchange=topology.EVENTS_EXCHANGE, routing_key=routing_key)
    assert (result is None) == (routing_key == event_type)


@pytest.mark.parametrize(("routed_as", "refused"), [
    ("template.created", False), (b"template.created", False),  # e.g. parked: fan-out limit
    ("template.deleted", True), (b"order.#", True), ("", True),
])
def test_a_parked_event_moved_back_is_judged_by_its_first_routing_key(
        routed_as: str | bytes, refused: bool) -> None:
    result = route_refusal(event(), exchange="", routing_key=topology.INGEST_EVENTS,
                           headers={ROUTED_AS_HEADER: routed_as})
    assert (result is not None) == refused
    if result is not None:
        assert result.reason == "routing_key_mismatch"
    # the header means nothing on the events exchange: the real routing key decides
    assert route_refusal(event(), exchange=topology.EVENTS_EXCHANGE,
                         routing_key="template.deleted",
                         headers={ROUTED_AS_HEADER: "template.created"}) is not None
