"""The SSRF policy: only public destinations, unless an operator allow-lists a network."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from services.deliverer.client import make_client
from services.deliverer.settings import Settings
from services.deliverer.ssrf import VettingResolver
from shared.address_registry import ROWS, Row
from shared.egress import (
    BlockedAddressError,
    check_destination,
    check_url,
    parse_networks,
    refusal,
    special_row,
)

REFUSED = [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254",
    "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
    "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "198.18.0.1",
    "192.0.2.1", "192.88.99.1", "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1",
    "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "::127.0.0.1", "::a9fe:a9fe",  # IPv4-compatible forms (issue #18)
    "::ffff:0:127.0.0.1", "::ffff:0:a9fe:a9fe",  # IPv4-translated forms (issue #18)
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address (is_global on 3.11)
    "64:ff9b:1::a00:1", "64:ff9b:1::808:808",  # local-use NAT64: embedding unknown
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address (is_global on 3.11)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45 (documentation)
    "2001:db8::1", "3fff::1", "5f00::1",
]

EMBEDDING_PUBLIC = [
    "::ffff:8.8.8.8", "::8.8.8.8", "::ffff:0:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
    # Teredo: server 65.54.227.120, client 8.8.8.8 (obfuscated: every bit inverted)
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     *EMBEDDING_PUBLIC])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


# One case per row of shared.address_registry: an address inside the row, and the reason it
# must be refused with. Rows that carry an IPv4 address get a private one inside (refused,
# naming it) and a public one (allowed). A row added without a case here fails the coverage
# test below.
ROW_CASES: dict[str, tuple[str, str, str | None]] = {
    # network: (address inside, expected reason, embedding of a public address or None)
    "0.0.0.0/8": ("0.1.2.3", "this network (unspecified)", None),
    "10.0.0.0/8": ("10.255.0.1", "private", None),
    "100.64.0.0/10": ("100.100.100.200", "carrier-grade NAT", None),  # Alibaba metadata
    "127.0.0.0/8": ("127.0.0.53", "loopback", None),
    "169.254.0.0/16": ("169.254.169.254", "link-local (cloud metadata)", None),
    "172.16.0.0/12": ("172.20.0.1", "private", None),
    "192.0.0.0/24": ("192.0.0.100", "IETF protocol assignments", None),
    "192.0.0.0/29": ("192.0.0.1", "IPv4 service continuity prefix", None),
    "192.0.0.8/32": ("192.0.0.8", "IPv4 dummy address", None),
    "192.0.0.9/32": ("192.0.0.9", "PCP anycast", None),
    "192.0.0.10/32": ("192.0.0.10", "TURN anycast", None),
    "192.0.0.170/32": ("192.0.0.170", "NAT64/DNS64 discovery", None),
    "192.0.0.171/32": ("192.0.0.171", "NAT64/DNS64 discovery", None),
    "192.0.2.0/24": ("192.0.2.77", "documentation", None),
    "192.31.196.0/24": ("192.31.196.1", "AS112 anycast", None),
    "192.52.193.0/24": ("192.52.193.1", "AMT anycast", None),
    "192.88.99.0/24": ("192.88.99.1", "6to4 relay anycast (deprecated)", None),
    "192.88.99.2/32": ("192.88.99.2", "6a44 relay anycast", None),
    "192.168.0.0/16": ("192.168.0.1", "private", None),
    "192.175.48.0/24": ("192.175.48.6", "AS112 direct delegation", None),
    "198.18.0.0/15": ("198.19.255.255", "benchmarking", None),
    "198.51.100.0/24": ("198.51.100.7", "documentation", None),
    "203.0.113.0/24": ("203.0.113.9", "documentation", None),
    "224.0.0.0/4": ("239.255.255.250", "multicast", None),
    "240.0.0.0/4": ("240.0.0.1", "reserved", None),
    "255.255.255.255/32": ("255.255.255.255", "limited broadcast", None),
    "::/128": ("::", "unspecified", None),
    "::1/128": ("::1", "loopback", None),
    "::/96": ("::a9fe:a9fe", "IPv4-compatible IPv6 (deprecated) form of 169.254.169.254, "
              "link-local (cloud metadata)", "::8.8.8.8"),
    "::ffff:0:0/96": ("::ffff:10.0.0.1", "IPv4-mapped IPv6 form of 10.0.0.1, private",
                      "::ffff:8.8.4.4"),
    "::ffff:0:0:0/96": ("::ffff:0:127.0.0.1", "IPv4-translated IPv6 form of 127.0.0.1, "
                        "loopback", "::ffff:0:1.1.1.1"),
    "64:ff9b::/96": ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254, link-local "
                     "(cloud metadata)", "64:ff9b::808:808"),
    "64:ff9b:1::/48": ("64:ff9b:1::808:808", "local-use NAT64", None),
    "100::/64": ("100::1", "discard-only", None),
    "100:0:0:1::/64": ("100:0:0:1::1", "dummy IPv6 prefix", None),
    "2001::/23": ("2001:5::1", "IETF protocol assignments", None),
    "2001::/32": ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo form of 192.0.2.45, "
                  "documentation", "2001:0:4136:e378:8000:63bf:f7f7:f7f7"),
    "2001:1::1/128": ("2001:1::1", "PCP anycast", None),
    "2001:1::2/128": ("2001:1::2", "TURN anycast", None),
    "2001:1::3/128": ("2001:1::3", "DNS-SD SRP anycast", None),
    "2001:2::/48": ("2001:2::1", "benchmarking", None),
    "2001:3::/32": ("2001:3::1", "AMT", None),
    "2001:4:112::/48": ("2001:4:112::1", "AS112", None),
    "2001:10::/28": ("2001:10::1", "ORCHID (deprecated)", None),
    "2001:20::/28": ("2001:20::1", "ORCHIDv2", None),
    "2001:30::/28": ("2001:30::1", "drone remote ID (DET)", None),
    "2001:db8::/32": ("2001:db8::1", "documentation", None),
    "2002::/16": ("2002:c0a8:101::1", "6to4 form of 192.168.1.1, private", "2002:808:808::1"),
    "2620:4f:8000::/48": ("2620:4f:8000::42", "AS112 direct delegation", None),
    "3fff::/20": ("3fff:fff::1", "documentation", None),
    "5f00::/16": ("5f00:1::1", "SRv6 SIDs", None),
    "fc00::/7": ("fd00::1", "unique local (private)", None),
    "fe80::/10": ("fe80::1", "link-local", None),
    "fec0::/10": ("fec0::1", "site-local (deprecated)", None),
    "ff00::/8": ("ff02::1", "multicast", None),
}


def test_every_row_of_the_table_has_a_case() -> None:
    assert sorted(ROW_CASES) == sorted(str(row.network) for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: str(r.network))
def test_each_special_purpose_row(row: Row) -> None:
    address, reason, public_inside = ROW_CASES[str(row.network)]
    ip = ipaddress.ip_address(address)
    assert ip in row.network and special_row(ip) == row
    assert refusal(address) == reason
    # its first and last addresses are refused too, whatever lies between
    for edge in (row.network[0], row.network[-1]):
        assert refusal(edge) is not None, edge
    if row.embeds is None:
        assert public_inside is None
    else:  # a form that carries a public IPv4 address may be delivered to
        assert public_inside is not None and ipaddress.ip_address(public_inside) in row.network
        assert refusal(public_inside) is None


@given(st.sampled_from([row for row in ROWS if row.embeds is None]), st.integers(min_value=0))
def test_every_address_of_a_refused_range_is_refused(row: Row, offset: int) -> None:
    assert refusal(row.network[offset % row.network.num_addresses]) is not None


def test_the_reason_names_the_range() -> None:
    assert refusal("169.254.169.254") == "link-local (cloud metadata)"
    assert refusal("100.64.1.1") == "carrier-grade NAT"
    assert refusal("64:ff9b::a9fe:a9fe") == (
        "NAT64 form of 169.254.169.254, link-local (cloud metadata)")


ipv4s = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)
PUBLIC_V4 = int(ipaddress.IPv4Address("65.54.227.120"))  # RFC 4380's Teredo server


def forms(v4: ipaddress.IPv4Address) -> dict[str, ipaddress.IPv6Address]:
    """Every IPv6 form that carries ``v4`` (Teredo: as its client, a public server)."""
    n = int(v4)
    return {
        "mapped": ipaddress.IPv6Address(0xFFFF_0000_0000 | n),
        "compatible": ipaddress.IPv6Address(n),
        "translated": ipaddress.IPv6Address(0xFFFF_0000_0000_0000 | n),
        "nat64": ipaddress.IPv6Address((0x64FF9B << 96) | n),
        "6to4": ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1),
        "teredo client": ipaddress.IPv6Address((0x2001_0000 << 96) | (PUBLIC_V4 << 64)
                                               | (0x8000_63BF << 32) | (n ^ 0xFFFF_FFFF)),
        "teredo server": ipaddress.IPv6Address((0x2001_0000 << 96) | (n << 64)
                                               | (0x8000_63BF << 32) | (PUBLIC_V4 ^ 0xFFFF_FFFF)),
    }


@given(ipv4s)
def test_an_ipv6_form_is_refused_exactly_when_the_ipv4_address_inside_is(
        v4: ipaddress.IPv4Address) -> None:
    inside = refusal(v4)
    for name, form in forms(v4).items():
        assert (refusal(form) is None) == (inside is None), (name, str(form), inside)
        if inside is not None and form not in (ipaddress.IPv6Address("::"),
                                                ipaddress.IPv6Address("::1")):
            # (:: and ::1 are rows of their own: unspecified, loopback)
            assert str(v4) in (refusal(form) or ""), (name, str(form))


@given(ipv4s)
def test_an_allowed_ipv4_network_allows_its_ipv6_forms(v4: ipaddress.IPv4Address) -> None:
    allowed = (ipaddress.ip_network(f"{v4}/32"),)
    assert refusal(v4, allowed) is None
    for name in ("mapped", "nat64", "6to4"):
        assert refusal(forms(v4)[name], allowed) is None, name


def test_allow_list_opens_chosen_networks_only() -> None:
    allowed = parse_networks("127.0.0.0/8, 10.20.0.0/16,::1")
    assert refusal("127.0.0.1", allowed) is None
    assert refusal("10.20.3.4", allowed) is None
    assert refusal("::1", allowed) is None
    assert refusal("10.21.0.1", allowed) == "private"
    assert refusal("169.254.169.254", allowed) is not None
    assert parse_networks("") == ()


def test_check_url() -> None:
    assert check_url("https://hooks.example.com/x") == "hooks.example.com"
    check_url("http://8.8.8.8/x")
    for url in ("http://127.0.0.1:8080/x", "http://[::1]/x", "http://[::ffff:10.0.0.1]/x"):
        with pytest.raises(BlockedAddressError):
            check_url(url)
    check_url("http://127.0.0.1:8080/x", parse_networks("127.0.0.1"))
    for url in ("ftp://example.com/x", "/relative", "file:///etc/passwd"):
        with pytest.raises(ValueError, match="http"):
            check_url(url)
    for numeric in ("2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1"):
        with pytest.raises(BlockedAddressError, match="loopback"):
            check_url(f"http://{numeric}:8080/x")
    assert check_url("http://deadbeef.example/x") == "deadbeef.example"
    with pytest.raises(ValueError, match="https only"):
        check_url("http://hooks.example.com/x", https_only=True)


@pytest.mark.parametrize("url", [
    "http://localhost:9/x",  # a DNS name resolving to loopback
    "http://2130706433:9/x", "http://0x7f.1:9/x", "http://0x7f000001:9/x",
    "http://017700000001:9/x", "http://127.1:9/x",  # numeric forms of 127.0.0.1
])
async def test_names_and_numeric_forms_are_judged_by_what_they_resolve_to(url: str) -> None:
    with pytest.raises(BlockedAddressError):
        await check_destination(url)
    await check_destination(url, parse_networks("127.0.0.0/8,::1"))


async def test_resolver_refuses_names_that_resolve_to_private_addresses() -> None:
    resolver = VettingResolver()
    try:
        with pytest.raises(BlockedAddressError):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    allowing = VettingResolver(parse_networks("127.0.0.0/8"))
    try:
        found = await allowing.resolve("localhost", 80)
        assert found and all(r["host"].startswith("127.") for r in found)
    finally:
        await allowing.close()


async def test_session_caps_connections_per_host() -> None:
    client = make_client(Settings(max_per_host=7, prefetch=50))
    pool = client.connector
    try:
        assert isinstance(client.connector, aiohttp.TCPConnector)
        assert client.connector.limit_per_host == 7
        assert client.connector.limit == 50
        # one pool (one cap, one vetting resolver) under both sessions; only a paced POST's
        # session runs the trace hook
        assert client.paced.connector is client.plain.connector is client.connector
        assert client.plain.trace_configs == [] and len(client.paced.trace_configs) == 1
        assert client.session(traced=False) is client.plain
        assert client.session(traced=True) is client.paced
    finally:
        await client.close()
    assert client.plain.closed and client.paced.closed and pool is not None and pool.closed


def test_the_security_page_lists_every_row() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "security-rules.md").read_text()
    for row in ROWS:
        assert f"| `{row.network}` | {row.name} | {row.source} |" in page, row.network


class _Answers(AbstractResolver):
    """A name server answering from a fixed list (the resolver the guard wraps)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST) for a in self.addresses]

    async def close(self) -> None:
        return None


async def test_the_guard_keeps_the_allowed_answers_and_says_why_it_refuses_the_rest() -> None:
    mixed = VettingResolver(inner=_Answers("10.0.0.7", "8.8.8.8", "::ffff:0:a9fe:a9fe"))
    assert [r["host"] for r in await mixed.resolve("mixed.test", 443)] == ["8.8.8.8"]
    rebound = VettingResolver(inner=_Answers("127.0.0.2", "::1", "10.0.0.1", "fd00::1"))
    with pytest.raises(BlockedAddressError) as caught:
        await rebound.resolve("hooks.example.com", 443)
    assert str(caught.value) == (
        "hooks.example.com resolved to 127.0.0.2, ::1, 10.0.0.1 (+1 more) at delivery time, "
        "which is refused: loopback. Not a DNS failure: the name resolved, to an address "
        "deliveries may not reach (if it was public when the endpoint was registered, its DNS "
        "answer changed since)")
    with pytest.raises(BlockedAddressError, match="resolved to no address"):
        await VettingResolver(inner=_Answers()).resolve("empty.test", 443)
