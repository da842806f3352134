"""GDPR sealing: who a fact is about, per-subject encryption, and a chain that survives erasure."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit import decisions
from services.audit.decisions import GENESIS_HASH, Record, sealing
from services.audit.decisions.sealing import ERASED, UNREADABLE, Linked, Own, Sealing
from shared.contracts import AuditFact

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))
OTHER_KEY = bytes(32)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def fact(i: int, *, event: str | None = None, **details: Any) -> AuditFact:
    return AuditFact(id=f"fct_{i:04d}", kind="delivery.attempted", service="deliverer",
                     occurred_at=T0 + timedelta(seconds=i), event_id=event,
                     url="https://crm.example/hook", details=details)


# ------------------------------------------------------------------ subject paths

def test_paths_parse_dotted_names_in_order() -> None:
    assert sealing.parse_paths("subject, user_id ,customer.id") == (
        ("subject",), ("user_id",), ("customer", "id"))
    assert sealing.DEFAULT_PATHS == (("subject",), ("user_id",))


@pytest.mark.parametrize("text", ["", " , ", "a..b", "a. b", ".a"])
def test_bad_paths_are_refused(text: str) -> None:
    with pytest.raises(sealing.PathError):
        sealing.parse_paths(text)


def test_first_path_holding_a_subject_wins() -> None:
    paths = sealing.parse_paths("subject,user_id,customer.id")
    assert sealing.subject_of({"subject": "u1", "user_id": "u2"}, paths) == "u1"
    assert sealing.subject_of({"subject": None, "user_id": "u2"}, paths) == "u2"
    assert sealing.subject_of({"subject": "", "customer": {"id": "c9"}}, paths) == "c9"
    assert sealing.subject_of({"customer": "c9"}, paths) is None
    assert sealing.subject_of({"user_id": 42}, paths) is None  # numbers are not subjects
    assert sealing.subject_of({"user_id": "x" * 513}, paths) is None
    assert sealing.subject_of({"user_id": "a\x00b"}, paths) is None


@given(json_objects, st.lists(st.lists(st.text(min_size=1, max_size=4), min_size=1,
                                       max_size=3), min_size=1, max_size=3))
def test_subject_is_a_valid_string_found_at_one_of_the_paths(
    details: dict[str, Any], raw_paths: list[list[str]]
) -> None:
    paths = tuple(tuple(p) for p in raw_paths)
    subject = sealing.subject_of(details, paths)
    if subject is None:
        return
    assert sealing.valid_subject(subject)
    found = []
    for path in paths:
        value: Any = details
        for name in path:
            value = value.get(name) if isinstance(value, dict) else None
        found.append(value)
    assert subject in found


# ------------------------------------------------------------------ who a fact is about

def test_plan_links_the_facts_of_an_event_to_its_subject_in_either_order() -> None:
    held = fact(1, event="evt_a")  # queued before the event.accepted naming the subject
    accepted = fact(2, event="evt_a", subject="alice")
    later = fact(3, event="evt_b")
    lone = fact(4)
    other = fact(5, event="evt_c", user_id="bob")
    decided = sealing.plan([held, accepted, later, lone, other], sealing.DEFAULT_PATHS,
                           stored_links={"evt_b": "sbj_b"})
    assert decided == {
        held.id: Own("alice", named=False),
        accepted.id: Own("alice"),
        later.id: Linked("sbj_b"),
        other.id: Own("bob"),
    }
    assert sealing.links_needed([held, accepted, later, lone, other],
                                sealing.DEFAULT_PATHS) == {"evt_a", "evt_b"}


# ------------------------------------------------------------------ sealing

@given(st.text(min_size=1, max_size=30).filter(sealing.valid_subject), json_objects)
def test_seal_round_trips(subject: str, details: dict[str, Any]) -> None:
    personal = {"subject": subject, "details": details}
    token = sealing.seal(KEY, "fct_1", personal)
    assert token.startswith("v1.") and "=" not in token
    assert sealing.unseal(KEY, "fct_1", token) == orjson.loads(orjson.dumps(personal))


def test_sealed_value_opens_only_with_its_key_for_its_record() -> None:
    token = sealing.seal(KEY, "fct_1", {"subject": "alice", "details": {}})
    for key, fact_id in ((OTHER_KEY, "fct_1"), (KEY, "fct_2")):
        with pytest.raises(sealing.SealError):
            sealing.unseal(key, fact_id, token)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (flipped, "v2." + token[3:], "v1.!!", "v1."):
        with pytest.raises(sealing.SealError):
            sealing.unseal(KEY, "fct_1", bad)
    # Two seals of the same data differ (random nonce): equal personal data is not revealed.
    assert sealing.seal(KEY, "fct_1", {"a": 1}) != sealing.seal(KEY, "fct_1", {"a": 1})


def test_lookup_hash_is_keyed() -> None:
    assert sealing.lookup_hash(KEY, "alice") == sealing.lookup_hash(KEY, "alice")
    assert sealing.lookup_hash(KEY, "alice") != sealing.lookup_hash(OTHER_KEY, "alice")
    assert sealing.lookup_hash(KEY, "alice") != hashlib.sha256(b"alice").hexdigest()


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode,
                                    lambda raw: base64.b64encode(raw).rstrip(b"=")])
def test_keys_decode_from_any_base64_spelling(encode: Any) -> None:
    raw = bytes(range(200, 232))
    assert sealing.decode_key(encode(raw).decode(), "k") == raw


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="k must"):
        sealing.decode_key(text, "k")


# ------------------------------------------------------------------ sealed records in the chain

def sealed_chain(n: int) -> list[Record]:
    """Records alternating between a subject's own fact, a linked one, and a plain one."""
    facts = []
    for i in range(n):
        if i % 3 == 0:
            facts.append(fact(i, event=f"evt_{i // 3}", subject="alice", lang="fr"))
        elif i % 3 == 1:
            facts.append(fact(i, event=f"evt_{i // 3}", response_excerpt="hi alice"))
        else:
            facts.append(fact(i, next="done"))
    seals = {
        f.id: Sealing("sbj_" + "a" * 32, KEY, "alice" if i % 3 == 0 else None)
        for i, f in enumerate(facts) if i % 3 != 2
    }
    return decisions.append(facts, existing_ids=set(), head_seq=0, head_hash=GENESIS_HASH,
                           recorded_at=T0, seals=seals).records


def test_sealed_records_keep_nothing_personal_in_clear_and_verify() -> None:
    records = sealed_chain(6)
    assert decisions.verify_chain(records).ok
    for record in records[0], records[1]:
        assert record["subject"] is None and record["details"] == {}
        assert record["subject_ref"] == "sbj_" + "a" * 32
        assert "alice" not in orjson.dumps(decisions.to_json(record)).decode()
        canonical = orjson.loads(decisions.canonical(record))
        assert canonical["sealed"] == record["sealed"]
    assert sealing.personal_view(records[0], KEY) == {
        "subject": "alice", "details": {"subject": "alice", "lang": "fr"}}
    assert sealing.personal_view(records[1], KEY) == {
        "subject": None, "details": {"response_excerpt": "hi alice"}}
    plain = records[2]
    assert plain["details"] == {"next": "done"} and sealing.personal_view(plain, KEY) is None
    assert set(orjson.loads(decisions.canonical(plain))) == set(decisions.RECORD_FIELDS)


def reverify_exported(exported: list[dict[str, Any]]) -> bool:
    """The documented rule, written without the service's code."""
    prev = GENESIS_HASH
    for record in exported:
        body = {k: v for k, v in record.items() if k not in ("hash", "prev_hash", "personal")}
        digest = hashlib.sha256(
            prev.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        if record["prev_hash"] != prev or digest != record["hash"]:
            return False
        prev = record["hash"]
    return True


@pytest.mark.parametrize("key", [KEY, None], ids=["readable", "erased"])
def test_exported_records_reverify_whether_readable_or_erased(key: bytes | None) -> None:
    exported = []
    for record in sealed_chain(9):
        shown = {**record, "personal": sealing.personal_view(record, key)}
        exported.append(orjson.loads(orjson.dumps(decisions.to_json(shown))))
    assert reverify_exported(exported)
    sealed = [r for r in exported if "sealed" in r]
    assert len(sealed) == 6
    if key is None:
        assert all(r["personal"] == {"subject": ERASED, "details": ERASED} for r in sealed)
        assert "alice" not in orjson.dumps(exported).decode()
    assert all("personal" not in r and "subject_ref" not in r for r in exported
               if "sealed" not in r)


@given(st.integers(0, 5), st.sampled_from(["sealed", "subject_ref"]))
def test_tampering_with_a_sealed_field_is_caught(victim: int, name: str) -> None:
    records = sealed_chain(6)
    index = [0, 1, 3, 4][victim % 4]
    records[index] = {**records[index], name: records[index][name][:-1] + "x"}
    report = decisions.verify_chain(records)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, index + 1,
                                                                 "hash_mismatch")


def test_dropping_the_seal_to_restore_clear_text_is_caught() -> None:
    records = sealed_chain(3)
    forged = {**records[0], "subject": "mallory", "subject_ref": None, "sealed": None}
    report = decisions.verify_chain([forged, *records[1:]])
    assert (report.first_bad_seq, report.problem) == (1, "hash_mismatch")


def test_a_ciphertext_that_does_not_open_is_shown_unreadable() -> None:
    record = sealed_chain(1)[0]
    assert sealing.personal_view(record, OTHER_KEY) == dict.fromkeys(
        sealing.PERSONAL_FIELDS, UNREADABLE)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8),
                       max_size=8),
       st.sets(st.text(min_size=1, max_size=8), max_size=8))
def test_keys_are_created_only_for_subjects_without_one(lookups: dict[str, str],
                                                        stored: set[str]) -> None:
    found = {subject: (f"sbj_{subject}", b"k" * 32) for subject in stored}
    created = sealing.keys_to_create(lookups, found)
    assert set(created) == set(lookups.values()) - stored
    for subject, (ref, lookup, key) in created.items():
        assert lookups[lookup] == subject and ref.startswith(sealing.REF_PREFIX)
        assert len(key) == sealing.KEY_BYTES
    assert len({ref for ref, _, _ in created.values()}) == len(created)  # never shared
