"""SSRF guard: deliveries go to public addresses only, unless an operator allow-lists a network.

An endpoint URL is chosen by whoever registers it, so without a guard the deliverer could be
pointed at the metadata service, loopback or the internal network. The guard sits where the
address is decided, not on the URL text: a custom aiohttp resolver vets every address a host
name resolves to and hands the connector only the acceptable ones, so the connection goes to
exactly the vetted address (no second lookup an attacker could rebind) while TLS still checks
the host name. IP-literal hosts never reach a resolver; :func:`vet_url` checks them first.

An address is refused unless it is globally routable: private, loopback, link-local (cloud
metadata), CGNAT 100.64/10, multicast and reserved ranges are refused. IPv6 addresses that
carry an IPv4 one are judged by it: IPv4-mapped and NAT64 (64:ff9b::/96, 64:ff9b:1::/48) by the
IPv4 address they reach, 6to4 (2002::/16) and Teredo by their embedded IPv4 endpoints too, which
``ipaddress`` alone would miss (it calls ``2002:a9fe:a9fe::1`` global).

``DIHYA_DELIVERER_ALLOWED_NETWORKS`` lists networks that are accepted anyway (e.g.
``10.20.0.0/16`` for an internal receiver, ``127.0.0.0/8`` in development).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class BlockedAddressError(OSError):
    """The destination resolves only to addresses deliveries may not reach."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, ::1/128"`` → networks (a bare address means just that address)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


def _translated_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped or NAT64 address reaches (judged instead of ``ip``)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _tunnelled_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 endpoints of 6to4 and Teredo addresses (each must be acceptable as well)."""
    found = [] if ip.sixtofour is None else [ip.sixtofour]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _public(ip: Address) -> bool:
    # ``is_global`` alone still passes multicast (224.0.0.0/4) on Python 3.11.
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or ip.is_loopback or ip.is_link_local or ip.is_private)


def is_allowed(address: str | Address, allowed: Sequence[Network] = ()) -> bool:
    """Whether a delivery may connect to ``address``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if any(ip in net for net in allowed if net.version == ip.version):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        translated = _translated_ipv4(ip)
        if translated is not None:
            return is_allowed(translated, allowed)
        return _public(ip) and all(is_allowed(v4, allowed) for v4 in _tunnelled_ipv4(ip))
    return _public(ip)


def vet_url(url: str, allowed: Sequence[Network] = ()) -> None:
    """Refuse an unusable URL (``ValueError``) or an IP-literal host that is not allowed."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("only absolute http(s) URLs can be delivered to")
    host = parsed.host.strip("[]")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return  # a host name: the resolver vets what it resolves to
    if not is_allowed(literal, allowed):
        raise BlockedAddressError(f"address {literal} is not allowed for deliveries")


class VettingResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, then keeps only the allowed addresses."""

    def __init__(self, allowed: Sequence[Network] = ()) -> None:
        self._allowed = tuple(allowed)
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if is_allowed(r["host"], self._allowed)]
        if not kept:
            raise BlockedAddressError(
                f"{host} resolves only to addresses not allowed for deliveries")
        return kept

    async def close(self) -> None:
        await self._inner.close()
