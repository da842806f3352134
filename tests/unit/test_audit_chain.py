"""Audit hash chain: canonical JSON, chaining, and verification naming the first bad record."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit import decisions
from services.audit.decisions import GENESIS_HASH, Record
from shared.contracts import AuditFact

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)


def fact(i: int, **extra: Any) -> AuditFact:
    return AuditFact(
        id=f"fct_{i:05d}", kind="delivery.attempted", occurred_at=T0 + timedelta(seconds=i),
        service="deliverer", event_id=f"evt_{i % 3}", attempt=1 + i % 4, duration_ms=12.5,
        details={"subject": f"user{i % 2}", "n": i, "nested": {"b": 1, "a": [1, 2.5, None]}},
        **extra,
    )


def chain(n: int) -> list[Record]:
    return decisions.append(
        [fact(i) for i in range(n)], existing_ids=set(), head_seq=0,
        head_hash=GENESIS_HASH, recorded_at=T0,
    ).records


# ------------------------------------------------------------------ canonical form

def test_canonical_json_has_sorted_keys_no_whitespace_and_fixed_datetimes() -> None:
    record = chain(1)[0]
    raw = decisions.canonical(record)
    assert b" " not in raw and b"\n" not in raw
    parsed = orjson.loads(raw)
    assert list(parsed) == sorted(parsed)
    assert list(parsed["details"]["nested"]) == ["a", "b"]
    assert parsed["occurred_at"] == "2025-05-20T12:00:00.000000Z"
    assert set(parsed) == set(decisions.RECORD_FIELDS)  # hash and prev_hash are not hashed


def test_hash_is_sha256_of_prev_hash_then_canonical_json() -> None:
    record = chain(1)[0]
    expected = hashlib.sha256(GENESIS_HASH.encode() + decisions.canonical(record)).hexdigest()
    assert record["prev_hash"] == GENESIS_HASH
    assert record["hash"] == expected


def test_api_form_reverifies_without_the_service() -> None:
    """An export (the JSON the API returns) is enough for an auditor to recheck the chain."""
    exported = [orjson.loads(orjson.dumps(decisions.to_json(r))) for r in chain(5)]
    for previous, record in zip([None, *exported], exported, strict=False):
        body = {k: v for k, v in record.items() if k not in ("hash", "prev_hash")}
        digest = hashlib.sha256(
            record["prev_hash"].encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        assert digest == record["hash"]
        assert record["prev_hash"] == (previous["hash"] if previous else GENESIS_HASH)


@given(st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=6),
       st.randoms())
def test_canonical_ignores_key_order(details: dict[str, int], rnd: Any) -> None:
    record = chain(1)[0]
    items = list(details.items())
    rnd.shuffle(items)
    a = {**record, "details": details}
    b = {**record, "details": dict(items)}
    assert decisions.canonical(a) == decisions.canonical(b)


def test_equal_instants_in_other_offsets_hash_alike() -> None:
    record = chain(1)[0]
    shifted = {**record, "occurred_at": record["occurred_at"].astimezone(timezone(timedelta(
        hours=2)))}
    naive = {**record, "occurred_at": record["occurred_at"].replace(tzinfo=None)}
    assert decisions.canonical(shifted) == decisions.canonical(record) == decisions.canonical(naive)


def test_row_read_back_from_sqlite_text_hashes_alike() -> None:
    record = chain(1)[0]
    row = {k: v for k, v in record.items() if k != "id"}
    row |= {"fact_id": record["id"], "occurred_at": "2025-05-20 12:00:00.000000",
            "recorded_at": "2025-05-20 12:00:00.000000",
            "details": orjson.dumps(record["details"]).decode()}
    assert decisions.record_from_row(row) == record
    with pytest.raises(ValueError, match="details"):
        decisions.record_from_row({**row, "details": "{not json"})


# ------------------------------------------------------------------ chaining

def test_append_chains_after_the_head_and_skips_known_and_repeated_ids() -> None:
    first = chain(3)
    again = [fact(1), fact(3), fact(3), fact(4)]
    result = decisions.append(again, existing_ids={"fct_00001"}, head_seq=3,
                             head_hash=first[-1]["hash"], recorded_at=T0)
    assert result.duplicates == 2
    assert [r["id"] for r in result.records] == ["fct_00003", "fct_00004"]
    assert [r["seq"] for r in result.records] == [4, 5]
    assert result.records[0]["prev_hash"] == first[-1]["hash"]
    assert decisions.verify_chain([*first, *result.records]).ok


def test_subject_comes_from_details_only_when_a_string() -> None:
    assert chain(1)[0]["subject"] == "user0"
    other = decisions.new_record(fact(0).model_copy(update={"details": {"subject": 7}}), 1, T0)
    assert other["subject"] is None


# ------------------------------------------------------------------ verification

def test_intact_chain_verifies() -> None:
    records = chain(10)
    report = decisions.verify_chain(records)
    assert report == decisions.ChainReport(True, 10, None, None, records[-1]["hash"])


def test_empty_chain_verifies() -> None:
    assert decisions.verify_chain([]).as_json() == {
        "ok": True, "records": 0, "first_bad_seq": None, "problem": None, "detail": None,
        "head_hash": GENESIS_HASH, "checkpoint": None,
    }


FIELDS = ("id", "kind", "occurred_at", "service", "event_id", "attempt", "duration_ms",
          "subject", "details", "seq", "hash")


@given(n=st.integers(2, 12), data=st.data())
def test_tampering_with_any_field_names_that_record(n: int, data: st.DataObject) -> None:
    records = chain(n)
    victim = data.draw(st.integers(0, n - 1))
    name = data.draw(st.sampled_from(FIELDS))
    tampered = dict(records[victim])
    value = tampered[name]
    tampered[name] = (
        value + timedelta(microseconds=1) if isinstance(value, datetime)
        else {**value, "extra": True} if isinstance(value, dict)
        else value + 1 if isinstance(value, int | float)
        else "0" * 64 if name == "hash"
        else f"{value}x"
    )
    records[victim] = tampered
    report = decisions.verify_chain(records)
    assert not report.ok
    assert report.first_bad_seq == tampered["seq"]  # == victim + 1 unless seq was the field
    assert report.problem == "hash_mismatch"
    assert report.records == n


@given(n=st.integers(2, 12), data=st.data())
def test_deleting_a_record_names_the_one_after_the_gap(n: int, data: st.DataObject) -> None:
    records = chain(n)
    victim = data.draw(st.integers(0, n - 2))
    del records[victim]
    report = decisions.verify_chain(records)
    assert (report.ok, report.first_bad_seq, report.problem) == (
        False, victim + 2, "broken_link")


def test_deleting_the_newest_records_is_seen_only_through_the_head_hash() -> None:
    records = chain(5)
    head = decisions.verify_chain(records).head_hash
    truncated = decisions.verify_chain(records[:-1])
    assert truncated.ok and truncated.head_hash != head


@given(n=st.integers(2, 12), data=st.data())
def test_reordering_names_the_first_moved_record(n: int, data: st.DataObject) -> None:
    records = chain(n)
    i = data.draw(st.integers(0, n - 2))
    j = data.draw(st.integers(i + 1, n - 1))
    records[i], records[j] = records[j], records[i]
    report = decisions.verify_chain(records)
    assert not report.ok
    # Walking in the new order, position i now holds record j: its link is wrong.
    assert report.first_bad_seq == records[i]["seq"] == j + 1
    assert report.problem == "broken_link"


def test_renumbering_a_record_is_a_hash_mismatch() -> None:
    """seq is hashed: swapping two rows *and* their seq numbers is still caught."""
    records = chain(4)
    a, b = dict(records[1]), dict(records[2])
    a["seq"], b["seq"] = 3, 2
    report = decisions.verify_chain([records[0], b, a, records[3]])
    assert (report.first_bad_seq, report.problem) == (2, "broken_link")


def test_an_unhashable_value_is_reported_not_raised() -> None:
    records = chain(3)
    records[1] = {**records[1], "attempt": object()}
    report = decisions.verify_chain(records)
    assert (report.first_bad_seq, report.problem) == (2, "unreadable")


def test_unreadable_row_is_reported_and_the_walk_goes_on() -> None:
    records = chain(3)
    verifier = decisions.ChainVerifier()
    verifier.feed(records[0])
    verifier.feed_unreadable(2, records[1]["hash"])
    verifier.feed(records[2])
    report = verifier.report()
    assert (report.ok, report.records, report.first_bad_seq, report.problem) == (
        False, 3, 2, "unreadable")
