"""The SSRF policy: only public destinations, unless an operator allow-lists a network."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.deliverer.app import make_session
from services.deliverer.settings import Settings
from services.deliverer.ssrf import VettingResolver
from shared.egress import (
    BlockedAddressError,
    check_destination,
    check_url,
    parse_networks,
    refusal,
)

REFUSED = [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254",
    "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
    "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1", "198.18.0.1",
    "192.0.2.1", "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:8.8.8.8",
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address (is_global on 3.11)
    "64:ff9b::808:808", "64:ff9b:1::a00:1",
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address (is_global on 3.11)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


@given(st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                        "127.0.0.0/8", "169.254.0.0/16", "fc00::/7", "64:ff9b::/96",
                        "2002::/16", "::ffff:0:0/96"]), st.integers(min_value=0))
def test_every_address_of_a_refused_range_is_refused(net: str, offset: int) -> None:
    network = ipaddress.ip_network(net)
    assert refusal(network[offset % network.num_addresses]) is not None


def test_the_reason_names_the_range() -> None:
    assert refusal("169.254.169.254") == "link-local (cloud metadata)"
    assert refusal("100.64.1.1") == "carrier-grade NAT"
    assert refusal("64:ff9b::a9fe:a9fe") == "NAT64"


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
    session = make_session(Settings(max_per_host=7, prefetch=50))
    try:
        assert session.connector is not None
        assert session.connector.limit_per_host == 7
        assert session.connector.limit == 50
    finally:
        await session.close()
