"""Prefixed, time-sortable identifiers (``evt_…``, ``ep_…``, ``dlv_…``).

A prefix tells a human at a glance what an id names; the ULID-style body (48-bit millisecond
timestamp + 80 random bits, Crockford base32) sorts by creation time, which keeps database
indexes and cursor pagination cheap.
"""

from __future__ import annotations

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
