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
    """Resolves with ``inner`` (aiohttp's default resolver unless given), then keeps only the
    allowed addresses.

    A name whose every address is refused raises :class:`BlockedAddressError` saying so: the
    name did resolve, to somewhere deliveries may not go (often a DNS answer that changed since
    the endpoint was registered — "DNS rebinding"), which is no DNS outage.
    """

    def __init__(self, allowed: Sequence[Network] = (),
                 inner: AbstractResolver | None = None) -> None:
        self._allowed = tuple(allowed)
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if refusal(r["host"], self._allowed) is None]
        if not kept:
            raise BlockedAddressError(refused_answer(host, [r["host"] for r in results],
                                                     self._allowed))
        return kept

    async def close(self) -> None:
        await self._inner.close()


def refused_answer(host: str, addresses: Sequence[str], allowed: Sequence[Network] = ()) -> str:
    """The text of a refusal at delivery time: the name, what it resolved to, and why."""
    if not addresses:
        return f"{host} resolved to no address"
    shown = ", ".join(addresses[:3]) + (f" (+{len(addresses) - 3} more)"
                                        if len(addresses) > 3 else "")
    return (f"{host} resolved to {shown} at delivery time, which is refused: "
            f"{refusal(addresses[0], allowed)}. Not a DNS failure: the name resolved, to an "
            "address deliveries may not reach (if it was public when the endpoint was "
            "registered, its DNS answer changed since)")
