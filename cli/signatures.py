"""Check a Dihya delivery's two signatures, as a receiver does (used by ``dihya listen``).

* ``X-Dihya-Signature``: hex HMAC-SHA256 of the raw body, keyed with the secret string's UTF-8
  bytes — the guide's Flask, Express and Django check.
* Standard Webhooks: ``webhook-signature`` holds space-separated ``v1,<base64>`` HMAC-SHA256
  signatures of ``{webhook-id}.{webhook-timestamp}.{body}``, keyed with the base64-decoded part
  of a ``whsec_`` secret (a free-form secret: its UTF-8 bytes, as the signer does); and
  ``webhook-timestamp`` must be within ``tolerance`` seconds of now.

Written here with :mod:`hmac` rather than imported: the receiver SDK (``sdk/python``) is a
separate distribution the ``dihya`` CLI does not depend on, and the ``standardwebhooks`` package
checks only one of the two signatures; both are a few lines of the standard library. The unit
tests hold this module to the signer's own functions, the Standard Webhooks specification's
published vector and the ``standardwebhooks`` library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

TOLERANCE = 300
"""Seconds a ``webhook-timestamp`` may be away from now (the Standard Webhooks default)."""


@dataclass(frozen=True)
class Verdict:
    """What the checks of one delivery found."""

    dihya: bool
    """``X-Dihya-Signature`` matches the body."""
    standard: bool
    """One ``v1`` signature of ``webhook-signature`` matches id, timestamp and body."""
    fresh: bool
    """``webhook-timestamp`` is within the tolerance of now."""

    @property
    def ok(self) -> bool:
        return self.dihya and self.standard and self.fresh


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key of ``secret``."""
    if secret.startswith("whsec_"):
        rest = secret[len("whsec_"):]
        try:
            key = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key:
            return key
    return secret.encode()


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name), "")


def verify(secret: str, body: bytes, headers: Mapping[str, str], now: float,
           tolerance: float = TOLERANCE) -> Verdict:
    """Both signatures and the timestamp of one delivery (headers in any case)."""
    expected_hex = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    dihya = hmac.compare_digest(_header(headers, "x-dihya-signature").encode(),
                                expected_hex.encode())
    msg_id, stamp = _header(headers, "webhook-id"), _header(headers, "webhook-timestamp")
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(standard_key(secret), signed, hashlib.sha256)
                                .digest())
    presented = [s[3:].encode() for s in _header(headers, "webhook-signature").split()
                 if s.startswith("v1,")]
    standard = bool(msg_id and stamp) and any(hmac.compare_digest(p, expected)
                                              for p in presented)
    try:
        fresh = abs(now - int(stamp)) <= tolerance
    except ValueError:
        fresh = False
    return Verdict(dihya=dihya, standard=standard, fresh=fresh)
