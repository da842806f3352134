"""Retention checkpoints: Ed25519 signatures, the purge bound, verification from a checkpoint."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from services.audit import checkpoints, decisions
from services.audit.checkpoints import CheckpointSigner
from services.audit.decisions import GENESIS_HASH
from shared.contracts import AuditFact

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
SIGNER = CheckpointSigner(bytes(range(32)))
OTHER = CheckpointSigner(bytes(32))


def test_a_checkpoint_verifies_with_the_public_key_alone() -> None:
    cp = SIGNER.sign(10, "ab" * 32, 10, T0)
    assert checkpoints.signature_ok(cp, SIGNER.public)
    assert cp.key_id == checkpoints.key_id_of(SIGNER.public) and len(cp.key_id) == 16
    # The documented bytes, checked with nothing but the published public key:
    signed = orjson.dumps({"at": "2025-05-20T12:00:00.000000Z", "count": 10,
                           "key_id": cp.key_id, "last_hash": "ab" * 32, "last_seq": 10},
                          option=orjson.OPT_SORT_KEYS)
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(SIGNER.public_b64))
    public.verify(base64.b64decode(cp.signature), signed)  # raises if wrong


@pytest.mark.parametrize("change", [
    {"last_seq": 11}, {"last_hash": "cd" * 32}, {"count": 9},
    {"at": T0 + timedelta(microseconds=1)}, {"signature": "AAAA"}, {"signature": "!!"},
])
def test_any_change_breaks_the_signature(change: dict[str, object]) -> None:
    cp = SIGNER.sign(10, "ab" * 32, 10, T0)
    assert not checkpoints.signature_ok(dataclasses.replace(cp, **change), SIGNER.public)


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    forged = OTHER.sign(10, "ab" * 32, 10, T0)
    assert not checkpoints.signature_ok(forged, SIGNER.public)
    # Even relabelled with our key id.
    relabelled = dataclasses.replace(forged, key_id=SIGNER.key_id)
    assert not checkpoints.signature_ok(relabelled, SIGNER.public)


@given(st.integers(0, 1000), st.integers(0, 1000), st.one_of(st.none(), st.integers(1, 1001)))
def test_purge_bound_deletes_only_an_old_prefix_and_never_goes_back(
    previous: int, extra: int, first_kept: int | None
) -> None:
    head = previous + extra
    if first_kept is not None:
        first_kept = min(first_kept, head + 1)
    bound = checkpoints.purge_bound(previous, first_kept, head)
    assert previous <= bound <= head
    if first_kept is None:
        assert bound == head
    elif first_kept > previous:
        assert bound == first_kept - 1


def chain(n: int) -> list[decisions.Record]:
    facts = [AuditFact(id=f"fct_{i}", kind="event.accepted", service="ingest",
                       occurred_at=T0 + timedelta(seconds=i)) for i in range(n)]
    return decisions.append(facts, existing_ids=set(), head_seq=0, head_hash=GENESIS_HASH,
                           recorded_at=T0).records


@given(st.integers(1, 9))
def test_a_purged_chain_verifies_from_its_checkpoint_only(kept_from: int) -> None:
    records = chain(10)
    remaining = records[kept_from:]
    assert decisions.verify_chain(remaining, start_hash=records[kept_from - 1]["hash"]).ok
    report = decisions.verify_chain(remaining)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, kept_from + 1,
                                                                 "broken_link")
    # Deleting one more record than the checkpoint covers is caught.
    if kept_from < 9:
        report = decisions.verify_chain(records[kept_from + 1:],
                                       start_hash=records[kept_from - 1]["hash"])
        assert (report.first_bad_seq, report.problem) == (kept_from + 2, "broken_link")


def test_a_bad_checkpoint_is_the_first_problem_reported() -> None:
    records = chain(4)
    verifier = decisions.ChainVerifier(records[1]["hash"], checkpoint={"last_seq": 2})
    verifier.bad_checkpoint(2)
    for record in records[2:]:
        verifier.feed(record)
    report = verifier.report()
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 2, "bad_checkpoint")
    assert report.as_json()["checkpoint"] == {"last_seq": 2}
    assert report.as_json()["detail"] == decisions.PROBLEMS["bad_checkpoint"]
