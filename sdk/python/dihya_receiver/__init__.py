"""Verify a Dihya webhook delivery: who sent it, when, and that it is not a replay.

    from dihya_receiver import verify, VerificationError

    try:
        payload = verify(request_body, request_headers, secret="whsec_…")
    except VerificationError as exc:
        return 400, str(exc)

``verify`` checks, in order:

1. the Standard Webhooks signature (``webhook-signature`` over ``id.timestamp.body``) against
   each key you pass — pass the old and the new one during a rotation. A ``whsec_`` (or
   free-form) secret checks ``v1`` HMAC-SHA256 signatures; a ``whpk_`` public key (an endpoint
   with ``signature_scheme: ed25519``) checks ``v1a`` ed25519 signatures;
2. the ``webhook-timestamp`` is within ``tolerance`` seconds of now, both ways (default 300);
3. the signed body's ``delivery.timestamp`` equals that header (both are signed: the body by
   its own bytes, the header by the signed material) and its ``delivery.nonce`` has not been
   seen within the tolerance window (``nonce_store``; in-memory by default — share one store
   between workers, e.g. backed by Redis, in production).

Standard library only for HMAC, so it drops into any Python receiver (Flask, Django, aiohttp,
FastAPI); ``v1a`` needs ``cryptography`` (``pip install "dihya-receiver[ed25519]"``), imported
only when a ``whpk_`` key is given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from typing import Any, Iterable, Mapping, Optional, Protocol, Union

__all__ = [
    "DEFAULT_TOLERANCE",
    "InMemoryNonceStore",
    "InvalidSignature",
    "MalformedDelivery",
    "NonceStore",
    "ReplayedNonce",
    "TimestampOutOfTolerance",
    "VerificationError",
    "guide_signature",
    "verify",
]

DEFAULT_TOLERANCE = 300


class VerificationError(Exception):
    """The delivery must be rejected (answer 4xx); the subclass says why."""


class MalformedDelivery(VerificationError):
    """A required header is missing or the body is not a Dihya delivery."""


class InvalidSignature(VerificationError):
    """No signature matches any of the secrets: not from Dihya, or altered on the way."""


class TimestampOutOfTolerance(VerificationError):
    """Signed too long ago or too far in the future: possibly a replay of an old delivery."""


class ReplayedNonce(VerificationError):
    """This exact signed delivery was already accepted: a replay."""


class NonceStore(Protocol):
    def check_and_remember(self, nonce: str, expires_at: float, now: float) -> bool:
        """Remember ``nonce`` until ``expires_at``; False if it is already remembered at ``now``."""


class InMemoryNonceStore:
    """A per-process nonce store (thread-safe). Use a shared store when you run replicas."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check_and_remember(self, nonce: str, expires_at: float, now: float) -> bool:
        with self._lock:
            if len(self._seen) > 1024:
                self._seen = {n: t for n, t in self._seen.items() if t > now}
            known = self._seen.get(nonce)
            if known is not None and known > now:
                return False
            self._seen[nonce] = expires_at
            return True


_DEFAULT_STORE = InMemoryNonceStore()


def _standard_key(secret: str) -> bytes:
    """The HMAC key Standard Webhooks uses: base64-decoded ``whsec_`` secrets, else UTF-8."""
    if secret.startswith("whsec_"):
        rest = secret[len("whsec_"):]
        try:
            key = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
        except ValueError:
            key = b""
        if key:
            return key
    return secret.encode()


def _ed25519_valid(public: str, signed: bytes, presented: list[str]) -> bool:
    """Whether any ``v1a`` signature in ``presented`` verifies with the ``whpk_`` key."""
    try:
        from cryptography.exceptions import InvalidSignature as _Bad
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError('v1a (whpk_) keys need cryptography: '
                          'pip install "dihya-receiver[ed25519]"') from None
    try:
        raw = base64.b64decode(public[len("whpk_"):], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError("a whpk_ key must be whpk_ + base64 of 32 bytes") from None
    for sig in presented:
        try:
            key.verify(base64.b64decode(sig, validate=True), signed)
            return True
        except (_Bad, ValueError):
            continue
    return False


def guide_signature(secret: str, body: bytes) -> str:
    """``X-Dihya-Signature`` as the guide computes it: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise MalformedDelivery(f"missing header {name}")


def verify(
    body: Union[bytes, str],
    headers: Mapping[str, str],
    secret: Union[str, Iterable[str]],  # whsec_/free-form secrets and/or whpk_ public keys
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    nonce_store: Optional[NonceStore] = None,
    now: Optional[float] = None,
) -> Any:
    """Check a delivery and return its parsed JSON payload; raise a ``VerificationError``."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("give at least one secret")
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature").split()
    try:
        ts = int(stamp)
    except ValueError:
        raise MalformedDelivery("webhook-timestamp is not an integer") from None

    signed = f"{msg_id}.{stamp}.".encode() + raw
    publics = [s for s in secrets if s.startswith("whpk_")]
    expected = [
        base64.b64encode(hmac.new(_standard_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets if not s.startswith("whpk_")
    ]
    presented = [sig.split(",", 1)[1] for sig in signatures if sig.startswith("v1,")]
    asymmetric = [sig.split(",", 1)[1] for sig in signatures if sig.startswith("v1a,")]
    if not (any(hmac.compare_digest(p, e) for p in presented for e in expected)
            or any(_ed25519_valid(k, signed, asymmetric) for k in publics)):
        raise InvalidSignature("no valid v1/v1a signature for the given key(s)")

    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise TimestampOutOfTolerance(f"timestamp {ts} is more than {tolerance}s from now")

    try:
        payload = json.loads(raw)
        delivery = payload["delivery"]
        nonce = str(delivery["nonce"])
        body_ts = int(delivery["timestamp"])
    except (ValueError, KeyError, TypeError):
        raise MalformedDelivery("the body is not a Dihya delivery (delivery.nonce)") from None
    if body_ts != ts:
        raise MalformedDelivery("delivery.timestamp does not match webhook-timestamp")
    store = _DEFAULT_STORE if nonce_store is None else nonce_store
    if not store.check_and_remember(f"{msg_id}:{nonce}", ts + tolerance, current):
        raise ReplayedNonce(f"nonce {nonce} was already seen")
    return payload
