"""Ordered endpoints' jobs leave ingest in the order their events arrived, per ordering key.

Ingest handles the events in flight concurrently (up to its prefetch), and each awaits look-ups
of its own before it fans out, so two events of one ordering key could fan out in either
order. Each event takes a ticket when it arrives (:meth:`Turnstile.enter`) and, once its
fan-out is known, declares the ordering keys (endpoint, key) it has jobs for
(:meth:`Turnstile.declare`). It publishes those jobs only once every earlier event has declared
its keys and every earlier event sharing one of them has published and confirmed its own
(:meth:`Turnstile.wait_turn`); then it leaves (:meth:`Turnstile.leave`). Events of different
keys do not wait for each other's confirms, and an event without ordered jobs waits for
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Ticket:
    declared: asyncio.Future[frozenset[Hashable]]
    left: asyncio.Future[None]


class Turnstile:
    """Tickets in arrival order; a ticket's turn for its keys comes when every earlier ticket
    has declared its keys and every earlier one sharing a key has left."""

    def __init__(self) -> None:
        self._next = 0
        self._open: dict[int, _Ticket] = {}

    def enter(self) -> int:
        """A ticket for an event that has just arrived (call before any await)."""
        ticket = self._next
        self._next += 1
        loop = asyncio.get_running_loop()
        self._open[ticket] = _Ticket(loop.create_future(), loop.create_future())
        return ticket

    def declare(self, ticket: int, keys: frozenset[Hashable]) -> None:
        """The keys ``ticket``'s event has ordered jobs for (none: it leaves at once)."""
        entry = self._open.get(ticket)
        if entry is not None and not entry.declared.done():
            entry.declared.set_result(keys)
        if not keys:
            self.leave(ticket)

    async def wait_turn(self, ticket: int, keys: frozenset[Hashable]) -> None:
        """Return once no earlier ticket may still publish for one of ``keys``."""
        for earlier in [t for t in self._open if t < ticket]:
            entry = self._open.get(earlier)
            if entry is None:
                continue
            if await asyncio.shield(entry.declared) & keys:
                await asyncio.shield(entry.left)

    def leave(self, ticket: int) -> None:
        """``ticket``'s event has published its ordered jobs, or will publish none."""
        entry = self._open.pop(ticket, None)
        if entry is None:
            return
        if not entry.declared.done():
            entry.declared.set_result(frozenset())
        entry.left.set_result(None)

    def __len__(self) -> int:
        return len(self._open)
