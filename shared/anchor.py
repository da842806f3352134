"""Signed heads of the audit chain and the offline verifier — pure and stand-alone.

This module imports only the standard library, ``orjson`` and ``cryptography``: an auditor can
run it (``dihya audit verify --heads … --public-key …``) trusting neither the audit service
nor its database. It re-implements the record hash on its own (a unit test checks that it
agrees with the service's :func:`services.audit.decisions.chain_hash`).

**Head** (format ``dihya.audit.head.v1``, one JSON object per line of the heads file and one
message body on the ``dihya.audit.heads`` exchange)::

    {"type": "dihya.audit.head.v1", "seq": 120, "head_hash": "<hash of record 120>",
     "records": 120, "time": "2026-12-06T20:00:00.000000Z",
     "previous_head_hash": "<digest of the previous head, or 64 zeros>",
     "checkpoint": null | {"last_seq": 40, "last_hash": "<hash of record 40>"},
     "key_id": "<16 hex digits>", "signature": "<base64>"}

* ``seq`` / ``head_hash``: the newest record of the chain when the head was signed;
  ``records``: the records of the chain from its start to ``seq`` (``seq`` minus the
  checkpoint's ``last_seq``);
  ``time``: when it was signed, in the records' datetime spelling; ``checkpoint``: the newest
  retention checkpoint, once the service checked its signature (the chain may start after it).
* ``signature``: Ed25519 over the *signed bytes* — the canonical JSON (keys sorted, no
  whitespace, UTF-8) of the head without ``signature``; base64, standard alphabet, padded.
* ``key_id``: the first 16 hex digits of sha256(raw 32-byte public key).
* the *digest* of a head: sha256 hex of the canonical JSON of the whole head, ``signature``
  included. Each head names the digest of the one before it (``previous_head_hash``), so heads
  form a chain of their own: a head removed from, inserted into or reordered in the file breaks
  it.

**What the verifier checks** (:class:`OfflineVerifier`), given the heads and an export of the
log (JSON Lines, the ``GET /v1/audit/export`` records in seq order): every head's signature;
that the heads chain; the records' own hash chain; that the record at each head's ``seq`` has
that head's ``head_hash``; that the log is at least as long as the newest head; that the log
starts at seq 1 from the genesis hash or right after a checkpoint a head attests; and that no
record a head should have covered (recorded before the head's time) lies beyond it. The first
problem wins and is named by its kind and the first seq it concerns.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

HEAD_TYPE = "dihya.audit.head.v1"
GENESIS_HASH = "0" * 64
"""``prev_hash`` of record 1, and ``previous_head_hash`` of the first head of a chain."""
UNHASHED = frozenset(("hash", "prev_hash", "personal"))
"""Keys of an exported record that its hash does not cover."""

Kind = Literal[
    "no_heads", "bad_head_signature", "head_chain_broken", "unreadable_record", "broken_link",
    "rewritten", "truncated", "forged_checkpoint", "forged_append",
]

KINDS: dict[str, str] = {
    "no_heads": "there is no signed head to check the log against",
    "bad_head_signature": "a head is malformed or not signed by the given key",
    "head_chain_broken": "a head does not name the digest of the head before it (a head was "
                         "removed, inserted or reordered), or goes back in seq or time",
    "unreadable_record": "a line of the export is not a record",
    "broken_link": "a record's prev_hash is not the hash of the record before it (records "
                   "deleted, inserted or reordered)",
    "rewritten": "the log no longer matches what was signed: a record's content differs from "
                 "its hash, or the chain differs from a head's head_hash",
    "truncated": "the log ends before the newest signed head",
    "forged_checkpoint": "the log starts after a retention checkpoint that no signed head "
                         "attests: records were deleted",
    "forged_append": "a record lies beyond a head signed after it was recorded: it was "
                     "appended behind the service's back",
}


# --------------------------------------------------------------------------- formats

def canonical(value: Any) -> bytes:
    """Canonical JSON: keys sorted, no whitespace, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """sha256 hex of ``prev_hash`` (ASCII) + the canonical JSON of the exported record minus
    ``hash``, ``prev_hash`` and ``personal``."""
    body = {k: v for k, v in record.items() if k not in UNHASHED}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(body)).hexdigest()


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def signed_bytes(head: Mapping[str, Any]) -> bytes:
    """The bytes a head's signature covers: its canonical JSON without ``signature``."""
    return canonical({k: v for k, v in head.items() if k != "signature"})


def head_digest(head: Mapping[str, Any]) -> str:
    """What the next head names as ``previous_head_hash``."""
    return hashlib.sha256(canonical(dict(head))).hexdigest()


class HeadSigner:
    """Signs heads with an Ed25519 key given as its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(self.public)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode("ascii")

    def sign(self, *, seq: int, head_hash: str, records: int, time: str,
             previous_head_hash: str, checkpoint: Mapping[str, Any] | None) -> dict[str, Any]:
        head: dict[str, Any] = {
            "type": HEAD_TYPE, "seq": seq, "head_hash": head_hash, "records": records,
            "time": time, "previous_head_hash": previous_head_hash,
            "checkpoint": dict(checkpoint) if checkpoint is not None else None,
            "key_id": self.key_id,
        }
        head["signature"] = base64.b64encode(self._private.sign(signed_bytes(head))).decode()
        return head


def public_key_from_text(text: str) -> bytes:
    """A raw 32-byte Ed25519 public key from its base64 text (as ``/v1/audit/verify`` shows
    it) or a PEM ``PUBLIC KEY`` block; ValueError otherwise."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = load_pem_public_key(text.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM key is not an Ed25519 public key")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the public key is neither base64 nor PEM") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return raw


def _head_problem(head: Mapping[str, Any]) -> str | None:
    """Why ``head`` is not a well-formed v1 head, or None."""
    if head.get("type") != HEAD_TYPE:
        return f"type is not {HEAD_TYPE}"
    for name, kind in (("seq", int), ("records", int), ("head_hash", str), ("time", str),
                       ("previous_head_hash", str), ("key_id", str), ("signature", str)):
        if not isinstance(head.get(name), kind) or isinstance(head.get(name), bool):
            return f"{name} is missing or not a {kind.__name__}"
    checkpoint = head.get("checkpoint")
    if checkpoint is not None and not (
            isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("last_seq"), int)
            and isinstance(checkpoint.get("last_hash"), str)):
        return "checkpoint is neither null nor {last_seq, last_hash}"
    return None


def signature_ok(head: Mapping[str, Any], public: bytes) -> bool:
    if _head_problem(head) is not None or head["key_id"] != key_id(public):
        return False
    try:
        signature = base64.b64decode(head["signature"], validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(signature, signed_bytes(head))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def parse_lines(lines: Iterable[bytes | str]) -> Iterable[dict[str, Any] | None]:
    """JSON objects of a JSON Lines text, blank lines skipped; None for a line that is not a
    JSON object (the caller names it)."""
    for line in lines:
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield None
            continue
        yield value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- verification

@dataclass(frozen=True)
class Verdict:
    ok: bool
    kind: Kind | None
    seq: int | None
    """The first seq the problem concerns (the record, or the head's seq)."""
    detail: str
    heads: int
    records: int
    newest_head: Mapping[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        newest = self.newest_head
        return {
            "ok": self.ok, "kind": self.kind, "first_bad_seq": self.seq,
            "detail": self.detail, "heads": self.heads, "records": self.records,
            "newest_head": None if newest is None else {
                k: newest[k] for k in ("seq", "head_hash", "time")},
        }


@dataclass
class OfflineVerifier:
    """Feed the export's records in file order, then ask for the :meth:`verdict`.

    Memory holds the heads (one per minute: ~525,000 a year, a few hundred bytes each) and
    nothing per record.
    """

    heads: Sequence[Mapping[str, Any] | None]
    """The heads file's lines in order; None for a line that is not JSON (torn)."""
    public_key: bytes
    torn: int = field(default=0, init=False)
    """Lines of the heads file that are not JSON, skipped: a head cut short by a crash is
    as if never written (the next one names the head before it). A whole head made garbage
    afterwards is not skipped silently: the head after it no longer chains."""
    _problem: tuple[Kind, int | None, str] | None = field(default=None, init=False)
    _by_seq: dict[int, list[Mapping[str, Any]]] = field(default_factory=dict, init=False)
    _seqs: list[int] = field(default_factory=list, init=False)
    _times: list[str] = field(default_factory=list, init=False)
    _attested: set[tuple[int, str]] = field(default_factory=set, init=False)
    _anchored: int = field(default=0, init=False)
    """The newest seq known good (matched a head, or the attested start)."""
    _records: int = field(default=0, init=False)
    _last_seq: int | None = field(default=None, init=False)
    _last_hash: str = field(default=GENESIS_HASH, init=False)

    def __post_init__(self) -> None:
        previous: Mapping[str, Any] | None = None
        for index, head in enumerate(self.heads):
            line = f"head {index + 1} of the heads file"
            if head is None:  # a torn line (power lost mid-write): as if never written
                self.torn += 1
                continue
            if _head_problem(head) is not None:
                self._fail("bad_head_signature", _int(head, "seq"),
                           f"{line}: {_head_problem(head)}")
                return
            if not signature_ok(head, self.public_key):
                self._fail("bad_head_signature", head["seq"],
                           f"{line} (seq {head['seq']}): the signature does not verify with "
                           f"the given public key (key_id {key_id(self.public_key)})")
                return
            if previous is not None and (
                    head["previous_head_hash"] != head_digest(previous)
                    or head["seq"] < previous["seq"] or head["time"] < previous["time"]):
                self._fail("head_chain_broken", head["seq"],
                           f"{line} (seq {head['seq']}) does not follow the head before it "
                           f"(seq {previous['seq']})")
                return
            previous = head
            self._by_seq.setdefault(head["seq"], []).append(head)
            self._seqs.append(head["seq"])
            self._times.append(head["time"])
            if head["checkpoint"] is not None:
                self._attested.add((head["checkpoint"]["last_seq"],
                                    head["checkpoint"]["last_hash"]))
        if previous is None:
            self._fail("no_heads", None, "the heads file holds no head")

    @property
    def newest(self) -> Mapping[str, Any] | None:
        whole = [head for head in self.heads if head is not None]
        return whole[-1] if whole and self._seqs else None

    def _fail(self, kind: Kind, seq: int | None, detail: str) -> None:
        if self._problem is None:
            self._problem = (kind, seq, detail)

    def feed(self, record: Mapping[str, Any] | None) -> None:
        """The next line of the export (None: a line that is not a JSON object)."""
        self._records += 1
        expected = None if self._last_seq is None else self._last_seq + 1
        if record is None or not isinstance(record.get("seq"), int) or not isinstance(
                record.get("prev_hash"), str) or not isinstance(record.get("hash"), str):
            self._fail("unreadable_record", expected,
                       f"line {self._records} of the export is not a record")
            if record is not None and isinstance(record.get("seq"), int):
                self._last_seq = record["seq"]
            return
        seq = record["seq"]
        if self._problem is None:
            self._check(record, seq, expected)
        self._last_seq, self._last_hash = seq, record["hash"]

    def _check(self, record: Mapping[str, Any], seq: int, expected: int | None) -> None:
        if expected is None:  # the first record: where does the log start?
            if seq == 1:
                if record["prev_hash"] != GENESIS_HASH:
                    self._fail("broken_link", 1, "record 1 does not start from the genesis "
                                                 "hash")
                    return
            elif (seq - 1, record["prev_hash"]) in self._attested:
                self._anchored = seq - 1
            else:
                start = max((s for s, _ in self._attested if s < seq), default=0)
                self._fail("forged_checkpoint", start + 1,
                           f"the log starts at seq {seq}, but no signed head attests a "
                           f"retention checkpoint at seq {seq - 1}: records {start + 1}.."
                           f"{seq - 1} were deleted")
                return
        elif seq != expected:
            self._fail("broken_link", min(seq, expected),
                       f"record {expected} is followed by seq {seq} in the export"
                       if seq > expected else f"seq {seq} appears out of order")
            return
        elif record["prev_hash"] != self._last_hash:
            self._fail("broken_link", seq, f"record {seq}'s prev_hash is not the hash of "
                                           f"record {seq - 1}")
            return
        try:
            intact = record_hash(record["prev_hash"], record) == record["hash"]
        except (TypeError, ValueError, orjson.JSONEncodeError):
            intact = False
        if not intact:
            self._fail("rewritten", seq, f"record {seq}'s content does not match its hash")
            return
        for head in self._by_seq.get(seq, ()):
            if head["head_hash"] != record["hash"]:
                self._fail("rewritten", self._anchored + 1,
                           f"the chain matches the signed heads up to seq {self._anchored} "
                           f"but not the head signed at {head['time']} for seq {seq}: a "
                           f"record in {self._anchored + 1}..{seq} was changed and the later "
                           f"hashes recomputed")
                return
            self._anchored = seq
        before = bisect.bisect_left(self._seqs, seq) - 1  # the newest head with seq below
        recorded = record.get("recorded_at")
        if before >= 0 and isinstance(recorded, str) and recorded < self._times[before]:
            self._fail("forged_append", seq,
                       f"record {seq} says it was recorded at {recorded}, before the head "
                       f"signed at {self._times[before]} for seq {self._seqs[before]}, which "
                       f"does not cover it")

    def verdict(self) -> Verdict:
        newest = self.newest
        if self._problem is None and newest is not None:
            last = self._last_seq
            if last is None or last < newest["seq"]:
                start = last + 1 if last is not None else max(
                    (s for s, _ in self._attested), default=0) + 1
                self._fail("truncated", start,
                           f"the log ends at seq {last if last is not None else '(empty)'}, "
                           f"but a head was signed for seq {newest['seq']} at "
                           f"{newest['time']}: records {start}..{newest['seq']} are missing")
        problem = self._problem
        return Verdict(
            ok=problem is None, kind=problem[0] if problem else None,
            seq=problem[1] if problem else None,
            detail=problem[2] if problem else (
                f"{self._records} records verified against {len(self._seqs)} signed heads; "
                f"anchored up to seq {self._anchored}"),
            heads=len(self._seqs), records=self._records, newest_head=newest,
        )


def _int(head: Mapping[str, Any], name: str) -> int | None:
    value = head.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def verify(heads: Sequence[Mapping[str, Any] | None], public_key: bytes,
           records: Iterable[Mapping[str, Any] | None]) -> Verdict:
    """Check an export against signed heads (see the module docstring)."""
    verifier = OfflineVerifier(heads, public_key)
    for record in records:
        verifier.feed(record)
    return verifier.verdict()
