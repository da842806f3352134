"""The deliverer's SSRF guard: vet every address at connection time (policy: shared.egress).

The guard sits where the address is decided, not on the URL text: a custom aiohttp resolver
vets every address a host name resolves to and hands the connector only the acceptable ones, so
the connection goes to exactly the vetted address (no second lookup an attacker could rebind)
while TLS still checks the host name. IP-literal hosts never reach a resolver;
``shared.egress.check_url`` refuses them before the request.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.egress import BlockedAddressError, Network, refusal


class VettingResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, then keeps only the allowed addresses."""

    def __init__(self, allowed: Sequence[Network] = ()) -> None:
        self._allowed = tuple(allowed)
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if refusal(r["host"], self._allowed) is None]
        if not kept:
            why = refusal(results[0]["host"], self._allowed) if results else "no address"
            raise BlockedAddressError(f"{host} resolves only to refused addresses ({why})")
        return kept

    async def close(self) -> None:
        await self._inner.close()
