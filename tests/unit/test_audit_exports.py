"""Export formats: query parsing, JSON Lines, CSV quoting and formula guard, subject summary."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit import decisions, exports
from services.audit.decisions import GENESIS_HASH, QueryError
from shared.contracts import AuditFact

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)


def fields_of(exc: pytest.ExceptionInfo[QueryError]) -> list[str]:
    return [f["field"] for f in exc.value.fields]


def test_export_query_defaults_to_jsonl_and_takes_the_record_filters() -> None:
    query, fmt = exports.parse_export([])
    assert fmt == "jsonl" and query.filters == {} and query.after_seq == 0
    query, fmt = exports.parse_export([("format", "csv"), ("kind", "subject.erased"),
                                       ("subject", "alice"), ("since", "2025-01-01")])
    assert fmt == "csv"
    assert query.filters == {"kind": "subject.erased", "subject": "alice"}
    assert query.since == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("pairs", "bad"), [
    ([("format", "xml")], ["format"]),
    ([("format", "csv"), ("format", "csv")], ["format"]),
    ([("limit", "10")], ["limit"]),
    ([("cursor", "MQ")], ["cursor"]),
    ([("kind", "nope"), ("format", "pdf")], ["format", "kind"]),
    ([("until", "x")], ["until"]),
])
def test_bad_export_parameters_are_named(pairs: list[tuple[str, str]], bad: list[str]) -> None:
    with pytest.raises(QueryError) as exc:
        exports.parse_export(pairs)
    assert sorted(fields_of(exc)) == bad


def record(**values: Any) -> dict[str, Any]:
    fact = AuditFact(id="fct_1", kind="delivery.attempted", service="deliverer",
                     occurred_at=T0, **values)
    return decisions.append([fact], existing_ids=set(), head_seq=0, head_hash=GENESIS_HASH,
                           recorded_at=T0).records[0]


def test_jsonl_is_one_api_record_per_line() -> None:
    records = [record(error="a\nb"), record(url="https://x.example/?a=1,2")]
    lines = exports.jsonl(records).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert [orjson.loads(line) for line in lines[:2]] == [decisions.to_json(r) for r in records]


def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_csv_header_names_every_field_once() -> None:
    assert parse_csv(exports.csv_header()) == [list(exports.CSV_COLUMNS)]
    assert len(set(exports.CSV_COLUMNS)) == len(exports.CSV_COLUMNS)
    assert exports.CSV_COLUMNS[-2:] == ("prev_hash", "hash")


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40)


@given(error=text, reason=text, details=st.dictionaries(text, text, max_size=3))
def test_csv_cells_round_trip_through_a_csv_reader(
    error: str, reason: str, details: dict[str, str]
) -> None:
    rec = record(error=error, reason=reason, status_code=502, duration_ms=12.5,
                 details=details)
    rows = parse_csv(exports.csv_rows([rec]))
    assert len(rows) == 1
    row = dict(zip(exports.CSV_COLUMNS, rows[0], strict=True))
    guarded = error.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert row["error"] == ("'" + error if guarded else error)
    assert row["status_code"] == "502" and row["duration_ms"] == "12.5"
    assert orjson.loads(row["details"]) == details
    assert row["occurred_at"] == "2025-05-20T12:00:00.000000Z"
    assert row["actor"] == "" and row["sealed"] == "" and row["hash"] == rec["hash"]


def test_csv_quotes_separators_and_guards_formulas() -> None:
    rec = record(error='say "hi", then\nbye', reason="=HYPERLINK(\"http://evil\")",
                 url="@SUM(A1)")
    raw = exports.csv_rows([rec]).decode()
    assert '"say ""hi"", then\nbye"' in raw
    row = dict(zip(exports.CSV_COLUMNS, parse_csv(raw.encode())[0], strict=True))
    assert row["reason"] == "'=HYPERLINK(\"http://evil\")"
    assert row["url"] == "'@SUM(A1)"
    assert raw.endswith("\r\n")


def test_subject_export_document_is_valid_json_with_a_summary() -> None:
    accepted = record(event_id="evt_1", event_type="template.created")
    accepted = {**accepted, "kind": "event.accepted", "url": None}
    attempts = [
        {**record(event_id="evt_1", event_type="template.created", outcome=outcome,
                  url=url, endpoint_id="ep_1", attempt=n, status_code=code),
         "occurred_at": T0 + timedelta(seconds=n)}
        for n, (outcome, url, code) in enumerate(
            [("failed", "https://a.example/h", 500), ("delivered", "https://a.example/h", 200),
             ("delivered", "https://b.example/h", 204)], start=1)
    ]
    summary = exports.SubjectSummary()
    body = exports.subject_head("alice", T0)
    for i, page in enumerate([[accepted, attempts[0]], attempts[1:]]):
        for rec in page:
            summary.feed(rec)
        body += exports.subject_records(page, first=i == 0)
    body += summary.tail()
    doc = orjson.loads(body)
    assert doc["type"] == exports.SUBJECT_EXPORT_TYPE and doc["subject"] == "alice"
    assert len(doc["records"]) == 4
    assert doc["recipients"] == ["https://a.example/h", "https://b.example/h"]
    [event] = doc["events"]
    assert event["event_type"] == "template.created"
    assert [d["outcome"] for d in event["deliveries"]] == ["failed", "delivered", "delivered"]


def test_an_empty_subject_export_is_valid_json() -> None:
    doc = orjson.loads(exports.subject_head("bob", T0) + exports.SubjectSummary().tail())
    assert (doc["records"], doc["events"], doc["recipients"]) == ([], [], [])
