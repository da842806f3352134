"""Audit query language: cursors, filters, time bounds and limits; the OpenAPI document agrees."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit import decisions, exports, openapi
from services.audit.decisions import QueryError, RecordQuery, parse_query
from services.audit.http import routes
from services.audit.store import Erasure, Purge


@given(st.integers(0, 2**63 - 1))
def test_cursor_round_trips(seq: int) -> None:
    cursor = decisions.encode_cursor(seq)
    assert "=" not in cursor
    assert decisions.decode_cursor(cursor) == seq


@given(st.text(max_size=40))
def test_decode_cursor_accepts_only_issued_cursors(text: str) -> None:
    try:
        seq = decisions.decode_cursor(text)
    except ValueError:
        return
    assert decisions.encode_cursor(seq) == text


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "", "!!!", b64(b"-1"), b64(b"abc"), b64(b"007"), b64(str(2**63).encode()), "x" * 33,
    "MTI=",  # padded spelling of 12: one spelling per cursor
    "MTJ",  # another spelling of the bytes of 12 (non-zero trailing bits)
])
def test_bad_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        decisions.decode_cursor(cursor)


def fields_of(exc: pytest.ExceptionInfo[QueryError]) -> dict[str, str]:
    return {f["field"]: f["message"] for f in exc.value.fields}


def test_defaults() -> None:
    assert parse_query([], page_limit=500) == RecordQuery({}, None, None, 100, 0)
    assert parse_query([], page_limit=20).limit == 20


def test_every_filter_parses() -> None:
    query = parse_query(
        [("event_id", "evt_1"), ("endpoint_id", "ep_1"), ("delivery_id", "dlv_1"),
         ("kind", "delivery.attempted"), ("outcome", "failed"), ("subject", "user42"),
         ("since", "2025-05-20T12:00:00Z"), ("until", "2025-05-20T14:00:00+02:00"),
         ("limit", "7"), ("cursor", decisions.encode_cursor(41))],
        page_limit=500,
    )
    assert query.filters == {
        "event_id": "evt_1", "endpoint_id": "ep_1", "delivery_id": "dlv_1",
        "kind": "delivery.attempted", "outcome": "failed", "subject": "user42",
    }
    assert query.since == query.until == datetime(2025, 5, 20, 12, tzinfo=UTC)
    assert (query.limit, query.after_seq) == (7, 41)


def test_datetime_without_offset_is_utc() -> None:
    query = parse_query([("since", "2025-05-20")], page_limit=500)
    assert query.since == datetime(2025, 5, 20, tzinfo=UTC)


@pytest.mark.parametrize(("pairs", "bad"), [
    ([("since", "yesterday")], "since"),
    ([("until", "2025-13-01T00:00:00Z")], "until"),
    ([("since", "2025-05-21T00:00:00Z"), ("until", "2025-05-20T00:00:00Z")], "until"),
    ([("limit", "0")], "limit"),
    ([("limit", "501")], "limit"),
    ([("limit", "ten")], "limit"),
    ([("limit", "-1")], "limit"),
    ([("kind", "event.exploded")], "kind"),
    ([("cursor", "@@")], "cursor"),
    ([("event_id", "")], "event_id"),
    ([("event_id", "a\x00b")], "event_id"),
    ([("subject", "\ud800")], "subject"),
    ([("outcome", "x" * 513)], "outcome"),
    ([("event", "evt_1")], "event"),
    ([("event_id", "a"), ("event_id", "b")], "event_id"),
    ([("order", "newest")], "order"),
])
def test_bad_parameters_are_named(pairs: list[tuple[str, str]], bad: str) -> None:
    with pytest.raises(QueryError) as exc:
        parse_query(pairs, page_limit=500)
    assert list(fields_of(exc)) == [bad]


def test_order_is_oldest_first_unless_asked() -> None:
    assert not parse_query([], page_limit=500).newest_first
    assert not parse_query([("order", "asc")], page_limit=500).newest_first
    assert parse_query([("order", "desc")], page_limit=500).newest_first


def test_all_bad_parameters_are_named_at_once() -> None:
    with pytest.raises(QueryError) as exc:
        parse_query([("since", "x"), ("limit", "0"), ("nope", "1")], page_limit=500)
    assert set(fields_of(exc)) == {"since", "limit", "nope"}


@given(st.lists(st.tuples(st.sampled_from([*decisions.QUERY_PARAMS, "x"]), st.text(max_size=30)),
                max_size=6))
def test_parse_query_never_fails_other_than_with_query_error(
    pairs: list[tuple[str, str]]
) -> None:
    try:
        query = parse_query(pairs, page_limit=50)
    except QueryError as exc:
        fields = exc.fields
    else:
        assert 1 <= query.limit <= 50
        return
    assert fields and all(f["field"] for f in fields)


def test_openapi_document_matches_the_parser_and_records() -> None:
    doc = openapi.document(routes(123))
    assert doc["openapi"] == "3.1.0"
    op = doc["paths"]["/v1/audit/records"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert tuple(params) == decisions.QUERY_PARAMS
    assert params["limit"]["schema"]["maximum"] == 123
    assert params["kind"]["schema"]["enum"] == list(decisions.RECORD_KINDS)
    # every fact kind is a record kind, but the deliverer's write-ahead (never a record)
    assert set(decisions.FACT_KINDS) - {decisions.STARTED_KIND} < set(decisions.RECORD_KINDS)
    assert decisions.STARTED_KIND not in decisions.RECORD_KINDS
    record = doc["components"]["schemas"]["AuditRecord"]
    assert set(record["properties"]) == {*decisions.RECORD_FIELDS, *decisions.SEALED_FIELDS,
                                         *decisions.VIEW_FIELDS, "prev_hash", "hash"}
    assert set(record["required"]) == {*decisions.RECORD_FIELDS, "prev_hash", "hash"}
    report = doc["components"]["schemas"]["VerifyReport"]
    # the chain walk's report, plus what the HTTP layer adds about signed heads
    assert set(report["properties"]) == {*decisions.verify_chain([]).as_json(), "heads",
                                         "signed_head"}
    assert set(doc["paths"]) >= {"/v1/audit/records", "/v1/audit/verify", "/v1/openapi.json",
                                 "/healthz", "/readyz", "/metrics"}


def test_openapi_document_describes_exports_erasure_and_retention() -> None:
    doc = openapi.document(routes(50))
    paths = doc["paths"]
    export = paths["/v1/audit/export"]["get"]
    names = [p["name"] for p in export["parameters"]]
    assert tuple(names) == exports.EXPORT_PARAMS
    fmt = next(p for p in export["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == list(exports.FORMATS)
    assert set(export["responses"]["200"]["content"]) == set(exports.CONTENT_TYPES.values())
    subject = paths["/v1/audit/subjects/{subject}/export"]["get"]
    assert [p["name"] for p in subject["parameters"]] == ["subject"]
    erasure = paths["/v1/audit/subjects/{subject}/erasure"]["post"]
    assert "403" in erasure["responses"] and "admin" in erasure["summary"]
    assert "409" in paths["/v1/audit/retention/purge"]["post"]["responses"]
    schemas = doc["components"]["schemas"]
    erased = Erasure("sbj_" + "0" * 32, 3, 0, 9, datetime(2025, 1, 1, tzinfo=UTC)).as_json()
    assert set(schemas["Erasure"]["properties"]) == set(erased)
    purged = Purge(0, None, 0, datetime(2025, 1, 1, tzinfo=UTC)).as_json()
    assert set(schemas["Purge"]["properties"]) == set(purged)
    checkpoint = schemas["Checkpoint"]  # VerifyReport's and Purge's `checkpoint` (or null)
    assert {"$ref": "#/components/schemas/Checkpoint"} in (
        schemas["VerifyReport"]["properties"]["checkpoint"]["anyOf"])
    assert set(checkpoint["required"]) == {"last_seq", "last_hash", "count", "at", "key_id",
                                           "signature", "signature_ok", "public_key"}


def test_a_tenant_token_is_confined_to_its_own_tenant() -> None:
    from services.audit.decisions import RecordQuery, confine

    query = RecordQuery(filters={"kind": "event.accepted"})
    assert confine(query, "auditor", None) is query  # platform roles: unchanged
    mine = confine(query, "tenant_viewer", "ten_a")
    assert mine is not None and mine.filters == {"kind": "event.accepted", "tenant": "ten_a"}
    named = RecordQuery(filters={"tenant": "ten_a"})
    assert confine(named, "tenant_admin", "ten_a") == named
    assert confine(RecordQuery(filters={"tenant": "ten_b"}), "tenant_admin", "ten_a") is None
    assert confine(query, "tenant_viewer", None) is None  # a grant without its tenant


def test_only_platform_roles_see_the_logs_head_in_an_export() -> None:
    from services.audit.decisions import sees_head

    assert sees_head("admin") and sees_head("auditor")
    assert not sees_head("tenant_admin") and not sees_head("tenant_viewer")
