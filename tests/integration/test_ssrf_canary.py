"""SSRF: not one connection reaches a canary listener on loopback, whatever the URL's disguise.

Ingest refuses every such endpoint at registration (422, saying why); the deliverer, given the
same URLs as jobs (as if DNS had changed since registration), refuses each attempt with reason
``ssrf_blocked``, audits it and parks the job — and the canary counts zero connections. Only
forms that would land on this machine's loopback are sent to the deliverer; the rest of the
corpus (metadata, private, CGNAT, NAT64, 6to4, Teredo, ULA) is checked at registration and by
the unit tests, so a failing guard could never send traffic off this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr

from services.ingest.app import start as start_ingest
from services.ingest.settings import Settings as IngestSettings
from shared import topology
from shared.broker import Publisher
from tests.conftest import free_port
from tests.integration.test_deliverer_service import (  # fixtures: amqp … receiver
    Observer,
    Receiver,
    amqp,
    audit,
    channel,
    dead,
    deliverer,
    fact,
    fact_of,
    hand_over,
    make_job,
    publisher,
    receiver,
    signed_for,
)

__all__ = ["amqp", "audit", "channel", "dead", "publisher", "receiver"]  # fixtures used here

pytestmark = pytest.mark.integration

ADMIN = "ssrf-admin-token-0123456789abcdef"


class Canary:
    """Listens on ``host`` (and ::1 for 127.0.0.1); counts every TCP connection reaching it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.connections = 0
        self.host = host
        self.port = free_port()

    async def _on_connect(self, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Canary]:
        servers = [await asyncio.start_server(self._on_connect, self.host, self.port)]
        if self.host == "127.0.0.1":
            with contextlib.suppress(OSError):  # no IPv6 loopback on this host
                servers.append(await asyncio.start_server(self._on_connect, "::1", self.port))
        try:
            yield self
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()


def loopback_forms(port: int) -> list[str]:
    return [f"http://{host}:{port}/hook" for host in (
        "127.0.0.1", "localhost", "2130706433", "0x7f.1", "0x7f000001", "017700000001",
        "127.1", "127.0.0.2", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]",  # noqa: S104
        "[0:0:0:0:0:ffff:7f00:1]", "[::]", "[::127.0.0.1]", "[::ffff:0:127.0.0.1]")]


def elsewhere_forms() -> list[str]:
    return [f"http://{host}/hook" for host in (
        "169.254.169.254", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
        "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::1]", "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
        "[fc00::1]", "[fe80::1]", "224.0.0.1", "[::a9fe:a9fe]", "[::ffff:0:a9fe:a9fe]",
        "192.88.99.1", "[3fff::1]", "[5f00::1]")]


async def test_registration_refuses_the_whole_corpus(amqp_url: str, tmp_path: object) -> None:
    port = free_port()
    canary = Canary()
    async with canary.running():
        stop = await start_ingest(IngestSettings(
            amqp_url=SecretStr(amqp_url), admin_token=SecretStr(ADMIN), port=port,
            database_url=f"sqlite:///{tmp_path}/ingest.db", default_tenant="default"))
        try:
            async with aiohttp.ClientSession() as http:
                for url in loopback_forms(canary.port) + elsewhere_forms():
                    async with http.post(f"http://127.0.0.1:{port}/v1/endpoints",
                                         json={"url": url, "events": ["a.b"]},
                                         headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
                        body = await resp.json()
                        assert resp.status == 422, (url, body)
                        [problem] = body["error"]["fields"]
                        assert problem["field"] == "url"
                        assert "refused" in problem["message"], (url, problem)
                        # the refusal names the setting that would allow it (issue #19)
                        assert "DIHYA_ALLOWED_NETWORKS" in problem["message"], (url, problem)
        finally:
            await stop()
    assert canary.connections == 0


async def test_delivery_time_refuses_and_no_connection_reaches_the_canary(
        amqp_url: str, publisher: Publisher, audit: Observer, dead: Observer) -> None:
    canary = Canary()
    async with canary.running(), deliverer(amqp_url, allowed_networks=""):
        jobs = [make_job(url) for url in loopback_forms(canary.port)]
        for job in jobs:
            await hand_over(publisher, signed_for(job))
        for job in jobs:
            got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
            assert (got.outcome, got.error and got.error.split(":")[0]) == (
                "failed", "ssrf_blocked"), (job.url, got.error)
            parked = await dead.next(lambda m, j=job: j.delivery_id.encode() in m.body)
            assert parked.headers[topology.REASON_HEADER] == "ssrf_blocked"
    assert canary.connections == 0, "a refused destination was connected to"


class RebindingResolver(AbstractResolver):
    """A name server whose answer changes after the first look-up, as a rebound name's does:
    ``first`` once, then ``then`` for every look-up (whatever the name)."""

    def __init__(self, first: str, then: str) -> None:
        self.answers = [first]
        self.then = then
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.lookups.append(host)
        address = self.answers.pop() if self.answers else self.then
        return [ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


async def test_a_name_rebound_to_a_refused_address_is_refused_saying_so(
        amqp_url: str, publisher: Publisher, audit: Observer, dead: Observer,
        receiver: Receiver) -> None:
    """DNS rebinding at delivery time: ``rebind.test`` first answers 127.0.0.1 (allow-listed
    here: it stands for the public address the name had when the endpoint was registered),
    then 127.0.0.2 (not allowed). The first job is delivered to the real receiver; the second
    is refused before any connection, and its error says what happened — the name resolved,
    to a refused address — not aiohttp's "Cannot connect to host" of a DNS outage. The second
    URL has another port, so aiohttp's DNS cache (keyed by host and port) asks again."""
    canary = Canary("127.0.0.2")
    receiver.scripts["hook"] = [web.Response(status=204)]
    resolver = RebindingResolver("127.0.0.1", "127.0.0.2")
    async with canary.running(), deliverer(amqp_url, allowed_networks="127.0.0.1/32",
                                           resolver=resolver):
        before = make_job(f"http://rebind.test:{receiver.port}/hook")
        await hand_over(publisher, signed_for(before))
        got = await fact(audit, fact_of("delivery.attempted", before.delivery_id))
        assert (got.outcome, got.status_code) == ("delivered", 204), got.error
        assert len(receiver.hits_on("hook")) == 1

        after = make_job(f"http://rebind.test:{canary.port}/hook")
        await hand_over(publisher, signed_for(after))
        got = await fact(audit, fact_of("delivery.attempted", after.delivery_id))
        parked = await dead.next(lambda m: after.delivery_id.encode() in m.body)
    assert resolver.lookups == ["rebind.test", "rebind.test"]
    assert got.outcome == "failed" and got.error is not None
    assert got.error.startswith(
        "ssrf_blocked: refused destination: rebind.test resolved to 127.0.0.2 at delivery "
        "time, which is refused: loopback. Not a DNS failure"), got.error
    for misleading in ("ClientConnector", "Cannot connect to host", "DNSError"):
        assert misleading not in got.error
    assert parked.headers[topology.REASON_HEADER] == "ssrf_blocked"
    assert canary.connections == 0, "the rebound address was connected to"
