"""Turns per key: one holder at a time for each key, the others waiting in arrival order.

For work that must not run side by side for one key while other keys go on: the deliverer's
ordered endpoints (one delivery per ordering key at a time) and ingest's endpoint health (one
judgement per endpoint at a time). asyncio locks are fair, so the waiters of a key get their
turns in the order they asked; a key nobody holds or waits for is forgotten.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class _Key:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KeyTurns:
    """Per key, one holder at a time; see the module."""

    def __init__(self) -> None:
        self._keys: dict[Hashable, _Key] = {}

    def waiting(self) -> int:
        """How many wait behind the holder of their key, over all keys."""
        return sum(max(k.users - 1, 0) for k in self._keys.values())

    @asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[Callable[[], int]]:
        """Hold ``key``'s turn (waiting for it first); yields how many wait behind, now."""
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key()
        entry.users += 1
        try:
            async with entry.lock:
                yield lambda: entry.users - 1
        finally:
            entry.users -= 1
            if not entry.users:
                del self._keys[key]
