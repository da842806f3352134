"""The address ranges deliveries may not reach, as data: IANA's IPv4 and IPv6 Special-Purpose
Address Registries, row by row, plus the few special ranges kept in other registries.

Sources (rows as of the registries' 2025 updates):

* IANA IPv4 Special-Purpose Address Registry (RFC 6890 and the RFCs named per row);
* IANA IPv6 Special-Purpose Address Registry (idem);
* outside those two: IPv4 multicast 224.0.0.0/4 (RFC 5771), IPv6 multicast ff00::/8 and the
  deprecated IPv4-compatible ``::/96`` (RFC 4291), site-local fec0::/10 (RFC 3879) and the
  IPv4-translated ``::ffff:0:0:0/96`` of SIIT (RFC 2765).

Every row is refused, including those the registries mark "globally reachable" (anycast service
addresses such as PCP, TURN, AS112 and AMT): no webhook receiver lives at one. Rows whose
``embeds`` is set are the IPv6 forms that carry an IPv4 address inside; they are judged by that
address instead (:func:`shared.egress.refusal`): refused unless it is public itself.

The table is data on purpose: a new registry row is one line here, and
``tests/unit/test_egress.py`` holds an expected address and reason for every row (a row without
a test fails the suite).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Embedding = Literal["low32", "6to4", "teredo"]
"""Where an IPv6 form keeps its IPv4 address: the last 32 bits (IPv4-mapped,
IPv4-compatible, IPv4-translated, NAT64 well-known prefix), bits 16-47 (6to4), or Teredo's
server (bits 32-63) and obfuscated client (last 32 bits)."""


@dataclass(frozen=True)
class Row:
    """One special-purpose range."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    name: str
    """The reason a refusal gives (lower case, as in "address … is refused: loopback")."""
    source: str
    embeds: Embedding | None = None


def _row(network: str, name: str, source: str, embeds: Embedding | None = None) -> Row:
    return Row(ipaddress.ip_network(network), name, source, embeds)


IPV4: tuple[Row, ...] = (
    _row("0.0.0.0/8", "this network (unspecified)", "RFC 791"),
    _row("10.0.0.0/8", "private", "RFC 1918"),
    _row("100.64.0.0/10", "carrier-grade NAT", "RFC 6598"),
    _row("127.0.0.0/8", "loopback", "RFC 1122"),
    _row("169.254.0.0/16", "link-local (cloud metadata)", "RFC 3927"),
    _row("172.16.0.0/12", "private", "RFC 1918"),
    _row("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    _row("192.0.0.0/29", "IPv4 service continuity prefix", "RFC 7335"),
    _row("192.0.0.8/32", "IPv4 dummy address", "RFC 7600"),
    _row("192.0.0.9/32", "PCP anycast", "RFC 7723"),
    _row("192.0.0.10/32", "TURN anycast", "RFC 8155"),
    _row("192.0.0.170/32", "NAT64/DNS64 discovery", "RFC 8880"),
    _row("192.0.0.171/32", "NAT64/DNS64 discovery", "RFC 8880"),
    _row("192.0.2.0/24", "documentation", "RFC 5737"),
    _row("192.31.196.0/24", "AS112 anycast", "RFC 7535"),
    _row("192.52.193.0/24", "AMT anycast", "RFC 7450"),
    _row("192.88.99.0/24", "6to4 relay anycast (deprecated)", "RFC 7526"),
    _row("192.88.99.2/32", "6a44 relay anycast", "RFC 6751"),
    _row("192.168.0.0/16", "private", "RFC 1918"),
    _row("192.175.48.0/24", "AS112 direct delegation", "RFC 7534"),
    _row("198.18.0.0/15", "benchmarking", "RFC 2544"),
    _row("198.51.100.0/24", "documentation", "RFC 5737"),
    _row("203.0.113.0/24", "documentation", "RFC 5737"),
    _row("224.0.0.0/4", "multicast", "RFC 5771"),
    _row("240.0.0.0/4", "reserved", "RFC 1112"),
    _row("255.255.255.255/32", "limited broadcast", "RFC 919"),
)

IPV6: tuple[Row, ...] = (
    _row("::/128", "unspecified", "RFC 4291"),
    _row("::1/128", "loopback", "RFC 4291"),
    _row("::/96", "IPv4-compatible IPv6 (deprecated)", "RFC 4291", "low32"),
    _row("::ffff:0:0/96", "IPv4-mapped IPv6", "RFC 4291", "low32"),
    _row("::ffff:0:0:0/96", "IPv4-translated IPv6", "RFC 2765", "low32"),
    _row("64:ff9b::/96", "NAT64", "RFC 6052", "low32"),
    # Local-use NAT64 prefixes may be any length inside this /48 (RFC 6052 embeds the IPv4
    # address at a place that depends on it): which address is meant cannot be told.
    _row("64:ff9b:1::/48", "local-use NAT64", "RFC 8215"),
    _row("100::/64", "discard-only", "RFC 6666"),
    _row("100:0:0:1::/64", "dummy IPv6 prefix", "RFC 9780"),
    _row("2001::/23", "IETF protocol assignments", "RFC 2928"),
    _row("2001::/32", "Teredo", "RFC 4380", "teredo"),
    _row("2001:1::1/128", "PCP anycast", "RFC 7723"),
    _row("2001:1::2/128", "TURN anycast", "RFC 8155"),
    _row("2001:1::3/128", "DNS-SD SRP anycast", "RFC 9665"),
    _row("2001:2::/48", "benchmarking", "RFC 5180"),
    _row("2001:3::/32", "AMT", "RFC 7450"),
    _row("2001:4:112::/48", "AS112", "RFC 7535"),
    _row("2001:10::/28", "ORCHID (deprecated)", "RFC 4843"),
    _row("2001:20::/28", "ORCHIDv2", "RFC 7343"),
    _row("2001:30::/28", "drone remote ID (DET)", "RFC 9374"),
    _row("2001:db8::/32", "documentation", "RFC 3849"),
    _row("2002::/16", "6to4", "RFC 3056", "6to4"),
    _row("2620:4f:8000::/48", "AS112 direct delegation", "RFC 7534"),
    _row("3fff::/20", "documentation", "RFC 9637"),
    _row("5f00::/16", "SRv6 SIDs", "RFC 9602"),
    _row("fc00::/7", "unique local (private)", "RFC 4193"),
    _row("fe80::/10", "link-local", "RFC 4291"),
    _row("fec0::/10", "site-local (deprecated)", "RFC 3879"),
    _row("ff00::/8", "multicast", "RFC 4291"),
)

ROWS: tuple[Row, ...] = IPV4 + IPV6
