"""Audit message decoding (what is parked, and why) and token-grant ordering rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from services.audit import decisions
from services.audit.decisions import Rejected, StoredToken
from shared.contracts import AuditFact, AuditFactBatch, TokenGrant, decode_facts, encode

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
VALID: dict[str, Any] = {
    "type": "dihya.audit_fact.v1", "id": "fct_1", "kind": "event.accepted",
    "occurred_at": "2025-05-20T12:00:00Z", "service": "ingest",
}


def test_valid_fact_decodes() -> None:
    fact = AuditFact(id="fct_1", kind="event.accepted", occurred_at=T0, service="ingest",
                     details={"subject": "user42", "x": [1, 2.5, None, {"é": "ⵣ"}]})
    assert decisions.decode_fact(encode(fact)) == fact


def test_invalid_json_is_named() -> None:
    rejected = decisions.decode_fact(b"{not json")
    assert isinstance(rejected, Rejected) and rejected.reason == "invalid_json"


@pytest.mark.parametrize("body", [
    {k: v for k, v in VALID.items() if k != "id"},
    {**VALID, "kind": "event.exploded"},
    {**VALID, "occurred_at": "2025-05-20T12:00:00"},  # naive: no offset
    {**VALID, "surprise": 1},
    [VALID],
])
def test_contract_violations_are_schema_invalid(body: Any) -> None:
    rejected = decisions.decode_fact(orjson.dumps(body))
    assert isinstance(rejected, Rejected) and rejected.reason == "schema_invalid"


def test_schema_error_does_not_echo_values() -> None:
    rejected = decisions.decode_fact(orjson.dumps({**VALID, "kind": "s3cr3t-value"}))
    assert isinstance(rejected, Rejected) and "s3cr3t" not in rejected.error
    assert "kind" in rejected.error


@pytest.mark.parametrize(("extra", "field"), [
    ({"error": "a\x00b"}, "error"),
    ({"details": {"k\x00": 1}}, "details"),
    ({"details": {"note": ["ok", "bad\x00"]}}, "details.note[1]"),
    ({"attempt": 2**64}, "attempt"),
    ({"duration_ms": float("inf")}, "duration_ms"),
    ({"duration_ms": float("nan")}, "duration_ms"),
    ({"details": {"x": float("nan")}}, "details"),
    ({"details": {"x": 2**70}}, "details"),
])
def test_values_the_store_cannot_keep_exactly_are_refused(
    extra: dict[str, Any], field: str
) -> None:
    fact = AuditFact.model_validate({**VALID, **extra})
    problem = decisions.storable_problem(fact)
    assert problem is not None and problem.startswith(field)
    assert decisions.storable_problem(AuditFact.model_validate(VALID)) is None


def test_out_of_range_date_is_refused() -> None:
    fact = AuditFact.model_validate(
        {**VALID, "occurred_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}
    )
    assert decisions.storable_problem(fact) == "occurred_at: out of range once converted to UTC"


def test_nan_on_the_wire_is_refused_by_decode_fact() -> None:
    body = orjson.dumps(VALID)[:-1] + b', "duration_ms": NaN}'
    rejected = decisions.decode_fact(body)
    assert isinstance(rejected, Rejected)


def test_decode_token_grant() -> None:
    grant = TokenGrant(token_id="tok_1", role="auditor", token_hash="a" * 64, issued_at=T0)
    assert decisions.decode(encode(grant), TokenGrant) == grant
    bad = decisions.decode(orjson.dumps({"token_id": "tok_1"}), TokenGrant)
    assert isinstance(bad, Rejected) and bad.reason == "schema_invalid"


def stored(revoked: bool, at: datetime) -> StoredToken:
    return StoredToken("tok_1", "auditor", "a" * 64, revoked, at)


def grant(revoked: bool, at: datetime, role: str = "auditor") -> TokenGrant:
    return TokenGrant.model_validate({"token_id": "tok_1", "role": role, "token_hash": "a" * 64,
                                      "revoked": revoked, "issued_at": at})


def test_first_grant_applies() -> None:
    assert decisions.grant_applies(None, grant(False, T0))


def test_newer_grant_wins_older_is_stale() -> None:
    later = T0 + timedelta(minutes=1)
    assert decisions.grant_applies(stored(False, T0), grant(False, later, role="viewer"))
    assert not decisions.grant_applies(stored(False, later), grant(False, T0))


def test_revocation_is_final_even_against_a_newer_grant() -> None:
    later = T0 + timedelta(minutes=1)
    assert decisions.grant_applies(stored(False, later), grant(True, later))
    assert not decisions.grant_applies(stored(True, T0), grant(False, later))
    assert decisions.grant_applies(stored(True, T0), grant(True, later))


def test_a_batch_and_a_single_fact_decode_alike() -> None:
    one = AuditFact.model_validate(VALID)
    two = one.model_copy(update={"id": "fct_2"})
    assert decisions.decode_facts(encode(one)) == [one]
    assert decisions.decode_facts(encode(AuditFactBatch(facts=[one, two]))) == [one, two]
    assert decode_facts(encode(AuditFactBatch(facts=[one, two]))) == [one, two]
    assert decode_facts(encode(one)) == [one]


def test_a_batch_with_a_schema_invalid_fact_is_rejected_whole() -> None:
    body = orjson.dumps({"type": "dihya.audit_fact_batch.v1",
                         "facts": [VALID, {**VALID, "kind": "nope"}]})
    rejected = decisions.decode_facts(body)
    assert isinstance(rejected, Rejected) and rejected.reason == "schema_invalid"
    assert "facts.1" in rejected.error
    with pytest.raises(ValueError, match="kind"):
        decode_facts(body)


def test_an_empty_batch_and_garbage_are_rejected() -> None:
    empty = decisions.decode_facts(orjson.dumps({"type": "dihya.audit_fact_batch.v1",
                                                "facts": []}))
    assert isinstance(empty, Rejected) and empty.reason == "schema_invalid"
    garbage = decisions.decode_facts(b"\xff")
    assert isinstance(garbage, Rejected) and garbage.reason == "invalid_json"
    with pytest.raises(ValueError, match="not JSON"):
        decode_facts(b"\xff")
