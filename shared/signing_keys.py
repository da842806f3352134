"""Standard Webhooks asymmetric keys (``v1a``, ed25519): the one format ingest and the signer
must agree on, so it lives here rather than in either service.

* ``whsk_<base64>`` — the secret (signing) key: the 32-byte ed25519 seed, standard base64.
  The 64-byte form some libraries write (seed followed by the public key) is accepted too,
  provided its second half is the seed's public key.
* ``whpk_<base64>`` — the public key: the 32 raw bytes, standard base64. Receivers verify
  ``webhook-signature`` entries ``v1a,<base64 signature>`` over ``{id}.{timestamp}.{body}``
  with it.

A ``whsk_`` key is a secret like an HMAC secret: it only travels in the control message that
hands it to the signer and is encrypted in the signer's keystore. The owner gets the public key.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET_PREFIX = "whsk_"  # noqa: S105 - a key prefix, not a password
PUBLIC_PREFIX = "whpk_"


class InvalidKeyError(ValueError):
    """Not a usable ``whsk_``/``whpk_`` key. The message never repeats the key."""


def _decode(value: str, prefix: str) -> bytes:
    if not value.startswith(prefix):
        raise InvalidKeyError(f"must start with {prefix}")
    rest = value[len(prefix):]
    try:
        return base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyError(f"must be {prefix} followed by standard base64") from None


def is_signing_key(secret: str) -> bool:
    """Whether ``secret`` is an ed25519 signing key (else it is an HMAC secret)."""
    return secret.startswith(SECRET_PREFIX)


def generate_signing_key() -> str:
    """A new random ``whsk_`` key."""
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return SECRET_PREFIX + base64.b64encode(seed).decode()


def load_signing_key(secret: str) -> Ed25519PrivateKey:
    """The private key of a ``whsk_`` key; :class:`InvalidKeyError` if it is malformed."""
    raw = _decode(secret, SECRET_PREFIX)
    if len(raw) not in (32, 64):
        raise InvalidKeyError("must hold a 32-byte ed25519 seed (or seed + public key)")
    key = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if len(raw) == 64 and key.public_key().public_bytes_raw() != raw[32:]:
        raise InvalidKeyError("its public half does not belong to its seed")
    return key


def public_key_of(secret: str) -> str:
    """The ``whpk_`` public key of a ``whsk_`` key."""
    public = load_signing_key(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(public).decode()


def load_public_key(public: str) -> Ed25519PublicKey:
    """The key of a ``whpk_`` string; :class:`InvalidKeyError` if it is malformed."""
    raw = _decode(public, PUBLIC_PREFIX)
    if len(raw) != 32:
        raise InvalidKeyError("must hold a 32-byte ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign_v1a(key: Ed25519PrivateKey, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1a,<base64>`` Standard Webhooks signature."""
    signature = key.sign(f"{msg_id}.{timestamp}.".encode() + body)
    return "v1a," + base64.b64encode(signature).decode()
