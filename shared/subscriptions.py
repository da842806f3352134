"""Subscription filters: which event types an endpoint's patterns select.

The filter language is part of the contract between whoever registers an endpoint (API, CLI,
console) and ingest, which applies it at fan-out: a client that predicts what an endpoint will
receive (``dihya endpoints test``, ``dihya listen``) must use exactly these rules, so they live
here and not in a service.
"""

from __future__ import annotations

import functools
import re

PATTERN_RE = re.compile(r"^(?:[a-z0-9_-]+|\*|#)(?:\.(?:[a-z0-9_-]+|\*|#))*$")
"""A subscription pattern: dot-separated words of ``[a-z0-9_-]``, ``*`` or ``#``."""
MAX_PATTERN = 255
"""Longest pattern accepted (characters)."""


def valid_pattern(pattern: str) -> bool:
    """True if ``pattern`` is a well-formed subscription pattern (see :func:`matches`)."""
    return len(pattern) <= MAX_PATTERN and PATTERN_RE.fullmatch(pattern) is not None


@functools.lru_cache(maxsize=65_536)
def matches(pattern: str, event_type: str) -> bool:
    """Does subscription ``pattern`` select events of type ``event_type``?

    RabbitMQ topic-exchange semantics, applied to dot-separated words:

    * a literal word matches that word only (``template.created``);
    * ``*`` matches exactly one word (``incident.*`` matches ``incident.security`` but neither
      ``incident`` nor ``incident.security.high``);
    * ``#`` matches zero or more words (``incident.#`` matches ``incident``,
      ``incident.security`` and ``incident.security.high``; ``#`` alone matches everything).

    Endpoints subscribe with the same language platform teams already use to bind queues to the
    events exchange, so one mental model covers both. Evaluated as a set of reachable positions
    in the type's words (O(pattern words x type words)): several ``#`` never backtrack
    exponentially. Memoised: every event is matched against every endpoint's patterns, and the
    pairs repeat (7 % of ingest's profile at saturation before).
    """
    words = event_type.split(".")
    positions = {0}
    for part in pattern.split("."):
        if part == "#":
            positions = set(range(min(positions), len(words) + 1))
        elif part == "*":
            positions = {i + 1 for i in positions if i < len(words)}
        else:
            positions = {i + 1 for i in positions if i < len(words) and words[i] == part}
        if not positions:
            return False
    return len(words) in positions


def selects(patterns: list[str] | tuple[str, ...], event_type: str) -> bool:
    """Does any of ``patterns`` select ``event_type``?"""
    return any(matches(p, event_type) for p in patterns)
