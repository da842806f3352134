"""The offline verifier and the head format (shared/anchor.py), pure: every kind of
tampering it must name, on records built by the service's own chaining code."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.errors import Exit
from cli.main import run
from services.audit import decisions, exports
from services.audit.decisions import LocalFact
from shared import anchor

SEED = bytes(range(32))
SIGNER = anchor.HeadSigner(SEED)
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def chain(n: int, *, start: int = 0, prev: str = decisions.GENESIS_HASH,
          at: datetime = T0) -> list[dict[str, Any]]:
    """``n`` records as the export shows them (JSON Lines, parsed), one second apart."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        fact = LocalFact(id=f"fct_{start + i}", kind="subject.erased",
                         occurred_at=at + timedelta(seconds=start + i),
                         details={"n": start + i, "text": "é\u2028", "ratio": 0.1 * i})
        appended = decisions.append([fact], existing_ids=set(), head_seq=start + i,
                                   head_hash=prev,
                                   recorded_at=at + timedelta(seconds=start + i))
        prev = appended.records[0]["hash"]
        out.append(orjson.loads(exports.jsonl(appended.records)))
    return out


class Heads:
    """Heads signed the way the service signs them, chained."""

    def __init__(self, signer: anchor.HeadSigner = SIGNER) -> None:
        self.signer = signer
        self.heads: list[dict[str, Any]] = []

    def sign(self, records: Sequence[dict[str, Any]], seq: int, *,
             checkpoint: dict[str, Any] | None = None, after: float = 0.5) -> dict[str, Any]:
        record = next(r for r in records if r["seq"] == seq)
        time = decisions.iso(datetime.fromisoformat(record["recorded_at"])
                            + timedelta(seconds=after))
        previous = anchor.head_digest(self.heads[-1]) if self.heads else anchor.GENESIS_HASH
        head = self.signer.sign(seq=seq, head_hash=record["hash"], records=seq, time=time,
                                previous_head_hash=previous, checkpoint=checkpoint)
        self.heads.append(head)
        return head


def verdict(heads: Sequence[dict[str, Any] | None], records: Sequence[dict[str, Any] | None],
            public: bytes = SIGNER.public) -> tuple[str | None, int | None]:
    result = anchor.verify(heads, public, records)
    assert result.ok == (result.kind is None)
    return result.kind, result.seq


@pytest.fixture
def log() -> tuple[list[dict[str, Any]], Heads]:
    records = chain(30)
    heads = Heads()
    for seq in (10, 20, 30):
        heads.sign(records, seq)
    return records, heads


def test_the_verifier_hashes_records_exactly_as_the_service_does() -> None:
    for record in chain(5):
        assert anchor.record_hash(record["prev_hash"], record) == record["hash"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(details=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
       error=st.none() | st.text(), duration=st.none() | st.floats(allow_nan=False,
                                                                    allow_infinity=False))
def test_record_hash_agrees_with_the_service_on_any_content(
        details: dict[str, Any], error: str | None, duration: float | None) -> None:
    fact = LocalFact(id="fct_x", kind="subject.erased", occurred_at=T0, details=details,
                     error=error, duration_ms=duration)
    try:
        record = decisions.append([fact], existing_ids=set(), head_seq=0,
                                 head_hash=decisions.GENESIS_HASH, recorded_at=T0).records[0]
        exported = orjson.loads(exports.jsonl([record]))
    except orjson.JSONEncodeError:  # a surrogate: the service refuses such a fact
        return
    assert anchor.record_hash(exported["prev_hash"], exported) == record["hash"]


def test_an_intact_log_verifies(log: tuple[list[dict[str, Any]], Heads]) -> None:
    records, heads = log
    result = anchor.verify(heads.heads, SIGNER.public, records)
    assert result.ok and result.records == 30 and result.heads == 3
    assert result.newest_head is not None and result.newest_head["seq"] == 30
    # records after the newest head, recorded after it: not anchored yet, not wrong
    more = records + chain(2, start=30, prev=records[-1]["hash"], at=T0 + timedelta(seconds=5))
    assert verdict(heads.heads, more) == (None, None)


def test_truncation_names_the_first_missing_record(
        log: tuple[list[dict[str, Any]], Heads]) -> None:
    records, heads = log
    assert verdict(heads.heads, records[:20]) == ("truncated", 21)
    assert verdict(heads.heads, records[:25]) == ("truncated", 26)
    assert verdict(heads.heads, []) == ("truncated", 1)


def test_a_rewrite_is_placed_between_the_last_matching_head_and_the_first_other() -> None:
    records = chain(30)
    heads = Heads()
    for seq in (10, 20, 30):
        heads.sign(records, seq)
    forged = [dict(r) for r in records]
    forged[14]["outcome"] = "refused"  # seq 15, every later hash recomputed
    prev = forged[13]["hash"]
    for record in forged[14:]:
        record["prev_hash"] = prev
        record["hash"] = prev = anchor.record_hash(prev, record)
    assert verdict(heads.heads, forged) == ("rewritten", 11)
    result = anchor.verify(heads.heads, SIGNER.public, forged)
    assert "11..20" in result.detail
    # content edited, hashes left alone: the record itself
    edited = [dict(r) for r in records]
    edited[14]["outcome"] = "refused"
    assert verdict(heads.heads, edited) == ("rewritten", 15)


def test_deleted_or_reordered_records_break_the_links(
        log: tuple[list[dict[str, Any]], Heads]) -> None:
    records, heads = log
    assert verdict(heads.heads, records[:5] + records[6:]) == ("broken_link", 6)
    swapped = [*records[:5], records[6], records[5], *records[7:]]
    assert verdict(heads.heads, swapped)[0] == "broken_link"
    wrong_start = [dict(records[0], prev_hash="1" * 64), *records[1:]]
    assert verdict(heads.heads, wrong_start) == ("broken_link", 1)
    assert verdict(heads.heads, [*records[:3], None, *records[3:]]) == ("unreadable_record", 4)


def test_a_forged_append_dated_before_a_head_that_does_not_cover_it() -> None:
    records = chain(10)
    heads = Heads()
    heads.sign(records, 10, after=30)  # signed 30 s after record 10
    forged = chain(1, start=10, prev=records[-1]["hash"])  # recorded 1 s after record 10
    assert verdict(heads.heads, records + forged) == ("forged_append", 11)
    later = chain(1, start=10, prev=records[-1]["hash"], at=T0 + timedelta(minutes=1))
    assert verdict(heads.heads, records + later) == (None, None)  # after the head: not anchored


def test_the_log_may_start_only_after_an_attested_checkpoint() -> None:
    records = chain(30)
    heads = Heads()
    heads.sign(records, 10)
    heads.sign(records, 20, checkpoint={"last_seq": 10, "last_hash": records[9]["hash"]})
    heads.sign(records, 30, checkpoint={"last_seq": 10, "last_hash": records[9]["hash"]})
    assert verdict(heads.heads, records[10:]) == (None, None)  # a genuine purge
    assert verdict(heads.heads, records[15:]) == ("forged_checkpoint", 11)
    assert verdict(heads.heads, records[5:]) == ("forged_checkpoint", 1)


@pytest.mark.parametrize("field", ["seq", "head_hash", "records", "time", "checkpoint",
                                   "previous_head_hash"])
def test_a_head_edited_after_signing_fails_its_signature(
        log: tuple[list[dict[str, Any]], Heads], field: str) -> None:
    records, heads = log
    value = heads.heads[1][field]
    heads.heads[1][field] = (value + 1 if isinstance(value, int)
                             else {"last_seq": 1, "last_hash": "0" * 64} if value is None
                             else "f" + value[1:])
    assert verdict(heads.heads, records) == ("bad_head_signature", heads.heads[1]["seq"])


def test_heads_of_another_key_or_malformed_fail(
        log: tuple[list[dict[str, Any]], Heads]) -> None:
    records, heads = log
    assert verdict(heads.heads, records, public=anchor.HeadSigner(bytes(32)).public) == (
        "bad_head_signature", 10)
    other = Heads(anchor.HeadSigner(bytes(32)))
    other.heads = heads.heads[:1]
    other.sign(records, 20)  # chains well, but signed by someone else
    assert verdict(other.heads, records[:20]) == ("bad_head_signature", 20)
    assert verdict([{**heads.heads[0], "type": "x"}], records)[0] == "bad_head_signature"
    assert verdict([], records) == ("no_heads", None)


def test_heads_must_chain(log: tuple[list[dict[str, Any]], Heads]) -> None:
    records, heads = log
    h10, h20, h30 = heads.heads
    assert verdict([h10, h30], records) == ("head_chain_broken", 30)  # one removed
    assert verdict([h20, h10, h30], records)[0] == "head_chain_broken"  # reordered
    assert verdict([h20, h30], records) == (None, None)  # a tail of the file is fine


def test_a_torn_line_is_skipped_when_the_chain_goes_on_from_the_head_before_it() -> None:
    records = chain(20)
    heads = Heads()
    heads.sign(records, 10)
    torn = anchor.canonical(SIGNER.sign(seq=15, head_hash="x", records=1, time="t",
                                        previous_head_hash="y", checkpoint=None))[:40]
    heads.sign(records, 20)  # names head 10: the torn one was never whole
    lines = [anchor.canonical(heads.heads[0]), torn, anchor.canonical(heads.heads[1])]
    parsed = list(anchor.parse_lines(lines))
    assert parsed[1] is None
    result = anchor.verify(parsed, SIGNER.public, records)
    assert result.ok and result.heads == 2


def test_public_keys_are_read_as_base64_or_pem() -> None:
    assert anchor.public_key_from_text(SIGNER.public_b64 + "\n") == SIGNER.public
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert anchor.public_key_from_text(pem.decode()) == SIGNER.public
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match=r"base64|32 bytes"):
            anchor.public_key_from_text(bad)


def test_the_verifier_imports_nothing_of_the_service() -> None:
    """It must run where only the standard library, orjson and cryptography are."""
    code = ("import sys; import shared.anchor; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'services', 'pydantic', 'sqlalchemy', 'aiohttp', 'aio_pika', 'structlog'} "
            "or (m.startswith('shared.') and m != 'shared.anchor')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_wants_heads_and_a_key_for_an_offline_check(tmp_path: Path) -> None:
    def dihya(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run(list(argv), env={"HOME": str(tmp_path)}, stdout=out, stderr=err,
                   stdin=io.StringIO(""))
        return code, err.getvalue()

    code, err = dihya("audit", "verify", "--export", "x.jsonl")
    assert code == Exit.USAGE and "--heads FILE and --public-key KEY" in err
    code, err = dihya("audit", "verify", "--heads", "h.jsonl", "--public-key", "nope")
    assert code == Exit.USAGE and "The public key cannot be read" in err
    code, err = dihya("audit", "verify", "--heads", str(tmp_path / "missing.jsonl"),
                      "--public-key", SIGNER.public_b64, "--export", "-")
    assert code == Exit.USAGE and "missing.jsonl" in err
