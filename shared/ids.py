"""Prefixed, time-sortable identifiers (``evt_…``, ``ep_…``, ``dlv_…``), and the derived id of
an audit fact.

A prefix tells a human at a glance what an id names; the ULID-style body (48-bit millisecond
timestamp + 80 random bits, Crockford base32) sorts by creation time, which keeps database
indexes and cursor pagination cheap.
"""

from __future__ import annotations

import hashlib
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """Return ``<prefix>_<26 chars>``: sortable by creation time, unique with 80 random bits."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


FACT_DIGITS = 32
"""Hex digits of a derived fact id (128 bits of sha256)."""


def fact_id(*parts: str | bytes) -> str:
    """A deterministic ``fct_`` id derived from ``parts`` (UTF-8, joined with U+001F): a
    redelivered message yields the same fact, which the audit store then drops as a duplicate.
    A part may be raw bytes (a message body that is not text)."""
    data = b"\x1f".join(p if isinstance(p, bytes) else p.encode() for p in parts)
    return "fct_" + hashlib.sha256(data).hexdigest()[:FACT_DIGITS]
