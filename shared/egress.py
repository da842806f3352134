"""Where deliveries may go: the SSRF policy shared by ingest (at endpoint registration) and the
deliverer (at every attempt, since DNS can change in between).

An endpoint URL is chosen by whoever registers it, so without a policy Dihya could be pointed
at the cloud metadata service, loopback or the internal network. An address is refused when it
falls in a special-purpose range (:mod:`shared.address_registry`, IANA's registries as data) —
judged on the address itself, not on Python's ``ipaddress.is_private`` alone, which misses
several of them (100.64/10 is neither private nor global; on 3.11 NAT64 and 6to4 forms of
private addresses report ``is_global``). An IPv6 form that carries an IPv4 address (IPv4-mapped,
-compatible, -translated, NAT64, 6to4, Teredo) is judged by that address: refused unless it is
public itself.

``DIHYA_ALLOWED_NETWORKS`` lists networks accepted anyway (an internal receiver, or loopback in
development and tests); production defaults refuse. ``DIHYA_HTTPS_ONLY`` refuses plain http.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence

from pydantic import Field, field_validator
from yarl import URL

from shared.address_registry import ROWS, Embedding, Row
from shared.settings import ServiceSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NUMERIC = re.compile(r"[0-9a-fA-FxX.]+")
# longest prefix first: the first row that holds an address is its most specific one
_BY_VERSION: dict[int, tuple[Row, ...]] = {
    version: tuple(sorted((r for r in ROWS if r.network.version == version),
                          key=lambda r: -r.network.prefixlen))
    for version in (4, 6)
}

ALLOW_HINT = ("to deliver there anyway, add its network to DIHYA_ALLOWED_NETWORKS "
              "(ingest and deliverer), e.g. 127.0.0.0/8 for a receiver on this machine")
"""What a refusal tells an operator: which setting allows a non-public destination."""


class BlockedAddressError(OSError):
    """The destination is (or resolves only to) addresses deliveries may not reach."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, ::1"`` → networks (a bare address means just that address)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


def special_row(address: Address) -> Row | None:
    """The most specific special-purpose range holding ``address``, if any."""
    for row in _BY_VERSION[address.version]:
        if address in row.network:
            return row
    return None


def embedded(address: ipaddress.IPv6Address, how: Embedding) -> tuple[ipaddress.IPv4Address,
                                                                      ...]:
    """The IPv4 address(es) an IPv6 form carries (Teredo: its server and its client)."""
    if how == "6to4":
        inner = address.sixtofour
        return () if inner is None else (inner,)
    if how == "teredo":
        pair = address.teredo
        return () if pair is None else pair
    return (ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF),)


def refusal(address: str | Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a delivery may not connect to ``address`` — or ``None`` if it may.

    Allowed networks first; then the special-purpose table (:mod:`shared.address_registry`):
    a range there is refused, except the IPv6 forms that carry an IPv4 address (IPv4-mapped,
    -compatible and -translated, NAT64, 6to4, Teredo), which are judged by that address — so
    ``[::ffff:8.8.8.8]`` may be delivered to and ``[::127.0.0.1]`` may not. Last, whatever
    Python does not call global.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    row = special_row(ip)
    if row is not None:
        if row.embeds is None or not isinstance(ip, ipaddress.IPv6Address):
            return row.name
        for inner in embedded(ip, row.embeds):
            why = refusal(inner, allowed)
            if why is not None:
                return f"{row.name} form of {inner}, {why}"
        return None
    if not ip.is_global:
        return "not publicly routable"
    return None


def _literal(host: str) -> Address | None:
    """The address an IP-literal host means, numeric IPv4 forms included (``2130706433``,
    ``0x7f.1``, ``127.1``, octal), which the system resolver accepts; ``None`` for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def ip_literal(host: str) -> Address | None:
    """The address an IP-literal host means (numeric IPv4 forms included); ``None`` for a
    name."""
    return _literal(host.strip("[]"))


def check_url(url: str, allowed: Sequence[Network] = (), *, https_only: bool = False) -> str:
    """Vet what can be vetted without DNS; return the host to resolve.

    Raises ``ValueError`` for an unusable URL and :class:`BlockedAddressError` for an
    IP-literal host that is refused (IP literals never reach a resolver).
    """
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("only absolute http(s) URLs can be delivered to")
    if https_only and parsed.scheme != "https":
        raise ValueError("plain http is refused here (https only)")
    host = parsed.host.strip("[]")
    literal = _literal(host)
    if literal is None:
        return host
    why = refusal(literal, allowed)
    if why is not None:
        raise BlockedAddressError(f"address {literal} is refused: {why}")
    return host


async def check_destination(url: str, allowed: Sequence[Network] = (), *,
                            https_only: bool = False) -> None:
    """Vet ``url`` and every address its host resolves to now (at endpoint registration).

    A host name that does not resolve (yet, or within 5 s) is accepted: the deliverer vets
    again at every attempt. Numeric forms such as ``2130706433`` or ``0x7f.1`` are judged by
    the address they really mean, as the system resolver would read them.
    """
    host = check_url(url, allowed, https_only=https_only)
    if _literal(host) is not None:
        return  # an allowed literal: nothing to resolve
    try:
        async with asyncio.timeout(5):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                                 type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, TimeoutError):
        return
    for info in infos:
        why = refusal(str(info[4][0]), allowed)
        if why is not None:
            raise BlockedAddressError(
                f"{host} resolves to {info[4][0]}, which is refused: {why}")


class EgressSettings(ServiceSettings):
    """Settings of the services that vet destinations (ingest and deliverer), read once."""

    allowed_networks: str = Field(
        default="", validation_alias="DIHYA_ALLOWED_NETWORKS",
        description="Comma-separated CIDRs endpoints may point to although not public "
        "(private, loopback…), e.g. `10.20.0.0/16`; everything non-public is refused otherwise.",
    )
    https_only: bool = Field(
        default=False, validation_alias="DIHYA_HTTPS_ONLY",
        description="Refuse endpoints (and deliveries) whose URL is plain http.",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def allowed(self) -> tuple[Network, ...]:
        return parse_networks(self.allowed_networks)
