"""The deliverer's SSRF guard: only public destinations, unless allow-listed."""

from __future__ import annotations

import pytest

from services.deliverer.app import make_session
from services.deliverer.settings import Settings
from services.deliverer.ssrf import (
    BlockedAddressError,
    VettingResolver,
    is_allowed,
    parse_networks,
    vet_url,
)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
    "255.255.255.255", "224.0.0.1", "::1", "::", "fe80::1", "fe80::1%eth0",
    "fc00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "64:ff9b:1::a00:1",
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_allowed(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "64:ff9b::808:808", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_allowed(address)


def test_allow_list_opens_chosen_networks_only() -> None:
    allowed = parse_networks("127.0.0.0/8, 10.20.0.0/16,::1")
    assert is_allowed("127.0.0.1", allowed)
    assert is_allowed("10.20.3.4", allowed)
    assert is_allowed("::1", allowed)
    assert not is_allowed("10.21.0.1", allowed)
    assert not is_allowed("169.254.169.254", allowed)
    assert parse_networks("") == ()


def test_vet_url() -> None:
    vet_url("https://hooks.example.com/x")  # a name: left to the resolver
    vet_url("http://8.8.8.8/x")
    for url in ("http://127.0.0.1:8080/x", "http://[::1]/x", "http://[::ffff:10.0.0.1]/x"):
        with pytest.raises(BlockedAddressError):
            vet_url(url)
    vet_url("http://127.0.0.1:8080/x", parse_networks("127.0.0.1"))
    for url in ("ftp://example.com/x", "/relative", "file:///etc/passwd"):
        with pytest.raises(ValueError, match="http"):
            vet_url(url)


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
