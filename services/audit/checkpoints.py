"""Retention checkpoints: what lets the chain lose its oldest records and still verify.

A purge deletes a *prefix* of the chain (every record up to ``last_seq``) and first writes a
checkpoint naming the last deleted record and its hash, signed with Ed25519. Verification then
starts from the checkpoint instead of the genesis hash: the first remaining record must link to
``last_hash``, and the signature must verify with the service's checkpoint key. Deleting more
records than a checkpoint covers (or deleting the checkpoint) breaks the link; forging one
needs the private key.

Why Ed25519 rather than an HMAC: an external auditor can check a checkpoint with the *public*
key (``GET /v1/audit/verify`` shows it) without being able to sign one.

Signed bytes (for anyone re-checking by hand): the canonical JSON — sorted keys, no whitespace —
of ``{"at", "count", "key_id", "last_hash", "last_seq"}``, ``at`` in the records' datetime
spelling; the signature is base64 (standard, padded). ``key_id`` is the first 16 hex digits of
sha256(raw public key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.audit.decisions import iso, utc


@dataclass(frozen=True)
class Checkpoint:
    last_seq: int
    """Every record up to this seq is (or is about to be) deleted."""
    last_hash: str
    """Hash of record ``last_seq``: what the first remaining record's ``prev_hash`` must be."""
    count: int
    """Records this purge covers (``last_seq`` minus the previous checkpoint's)."""
    at: datetime
    key_id: str
    signature: str

    def as_json(self) -> dict[str, Any]:
        return {"last_seq": self.last_seq, "last_hash": self.last_hash, "count": self.count,
                "at": iso(self.at), "key_id": self.key_id, "signature": self.signature}


def message(last_seq: int, last_hash: str, count: int, at: datetime, key_id: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return orjson.dumps(
        {"last_seq": last_seq, "last_hash": last_hash, "count": count, "at": iso(at),
         "key_id": key_id},
        option=orjson.OPT_SORT_KEYS,
    )


def key_id_of(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key given as its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id_of(self.public)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode("ascii")

    def sign(self, last_seq: int, last_hash: str, count: int, at: datetime) -> Checkpoint:
        at = utc(at)
        signature = self._private.sign(message(last_seq, last_hash, count, at, self.key_id))
        return Checkpoint(last_seq, last_hash, count, at, self.key_id,
                          base64.b64encode(signature).decode("ascii"))


def signature_ok(checkpoint: Checkpoint, public: bytes) -> bool:
    """Whether ``checkpoint`` was signed by the key whose raw public key is ``public``."""
    if checkpoint.key_id != key_id_of(public):
        return False
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature,
            message(checkpoint.last_seq, checkpoint.last_hash, checkpoint.count,
                    checkpoint.at, checkpoint.key_id),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def from_row(row: Mapping[Any, Any]) -> Checkpoint:
    return Checkpoint(int(row["last_seq"]), row["last_hash"], int(row["count"]),
                      utc(row["at"]), row["key_id"], row["signature"])


def purge_bound(previous_last: int, first_kept: int | None, head_seq: int) -> int:
    """The last seq a purge may delete: just before the first record young enough to keep
    (``first_kept``), or the head if every record is old — never going backwards."""
    bound = head_seq if first_kept is None else first_kept - 1
    return max(bound, previous_last)
