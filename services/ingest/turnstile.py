"""Ordered endpoints' jobs leave ingest in the order their events arrived.

Ingest handles the events in flight concurrently (up to its prefetch), and each awaits look-ups
of its own before it fans out, so two events of one ordering key could fan out in either
order. Each event takes a ticket when it arrives (:meth:`Turnstile.enter`); an event with jobs
for ordered endpoints publishes them only once every earlier event has published its own or is
done (:meth:`Turnstile.wait_turn`), and lets the later ones go once they are confirmed
(:meth:`Turnstile.leave`). Events without such jobs wait for nothing.
"""

from __future__ import annotations

import asyncio


class Turnstile:
    """Tickets in arrival order; a ticket's turn comes when every earlier one has left."""

    def __init__(self) -> None:
        self._next = 0
        self._open: dict[int, asyncio.Future[None]] = {}

    def enter(self) -> int:
        """A ticket for an event that has just arrived (call before any await)."""
        ticket = self._next
        self._next += 1
        self._open[ticket] = asyncio.get_running_loop().create_future()
        return ticket

    async def wait_turn(self, ticket: int) -> None:
        """Return once every ticket taken before ``ticket`` has left."""
        for earlier in [t for t in self._open if t < ticket]:
            future = self._open.get(earlier)
            if future is not None:
                await asyncio.shield(future)

    def leave(self, ticket: int) -> None:
        """``ticket``'s event has published its ordered jobs, or will publish none."""
        future = self._open.pop(ticket, None)
        if future is not None and not future.done():
            future.set_result(None)

    def __len__(self) -> int:
        return len(self._open)
