"""Egress through an HTTP proxy (DIHYA_DELIVERER_PROXY_URL) with the SSRF guard kept.

A real proxy on loopback (written here: CONNECT tunnels and absolute-form forwarding, counting
every connection and request), the real deliverer on the real broker, real receivers. The
deliverer resolves and vets the endpoint's name itself and asks the proxy for the vetted
address, keeping the name in Host and in TLS (SNI).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

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
from tests.integration.test_ssrf_canary import Canary, RebindingResolver

__all__ = ["amqp", "audit", "channel", "dead", "publisher", "receiver"]  # fixtures used here

pytestmark = pytest.mark.integration


class Proxy:
    """A small HTTP proxy: ``CONNECT host:port`` tunnels, absolute-form requests forwarded
    (one request per connection). Records the request line and headers of each."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *rest = head.split("\r\n")
            method, target, _ = line.split(" ", 2)
            headers = dict(h.split(": ", 1) for h in rest if h)
            self.requests.append((method, target, headers))
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = URL(target)
                assert url.host is not None and url.port is not None
                up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
                kept = [h for h in rest if h and not h.lower().startswith(
                    ("proxy-", "connection:"))]
                up_writer.write("\r\n".join(
                    [f"{method} {url.raw_path_qs} HTTP/1.1", *kept, "Connection: close",
                     "", ""]).encode("latin-1"))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        server = await asyncio.start_server(self._on_connect, "127.0.0.1", self.port)
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def test_deliveries_go_through_the_proxy_to_the_vetted_address_unchanged(
        amqp_url: str, receiver: Receiver, publisher: Publisher, audit: Observer) -> None:
    receiver.scripts["ok"] = [web.Response(status=204)]
    proxy = Proxy()
    resolver = RebindingResolver("127.0.0.1", "127.0.0.1")
    async with proxy.running(), deliverer(amqp_url, allowed_networks="127.0.0.1/32",
                                          proxy_url=proxy.url, resolver=resolver):
        signed = [signed_for(make_job(f"http://hooks.test:{receiver.port}/ok"))
                  for _ in range(3)]
        for one in signed:
            await hand_over(publisher, one)
        for one in signed:
            got = await fact(audit, fact_of("delivery.attempted", one.job.delivery_id))
            assert (got.outcome, got.status_code) == ("delivered", 204), got.error
    hits = receiver.hits_on("ok")
    assert len(hits) == 3
    assert proxy.connections == 3 and len(proxy.requests) == 3  # every delivery, none around
    for method, target, _ in proxy.requests:
        assert (method, target) == ("POST", f"http://127.0.0.1:{receiver.port}/ok")
    by_id = {h.headers["webhook-id"]: h for h in hits}
    for one in signed:  # byte for byte what the signer signed: it still verifies
        hit = by_id[one.headers["webhook-id"]]
        assert hit.body == one.body.encode()
        assert hit.headers["Host"] == f"hooks.test:{receiver.port}"
        for name in ("webhook-signature", "webhook-timestamp", "X-Dihya-Signature"):
            assert hit.headers[name] == one.headers[name]


async def test_a_refused_destination_never_reaches_the_proxy(
        amqp_url: str, publisher: Publisher, audit: Observer, dead: Observer) -> None:
    canary = Canary("127.0.0.2")
    proxy = Proxy()
    resolver = RebindingResolver("127.0.0.2", "127.0.0.2")
    async with canary.running(), proxy.running(), deliverer(
            amqp_url, allowed_networks="127.0.0.1/32", proxy_url=proxy.url, resolver=resolver):
        jobs = [make_job(f"http://rebound.test:{canary.port}/hook"),
                make_job(f"http://127.0.0.2:{canary.port}/hook"),
                make_job("http://169.254.169.254/latest/meta-data/")]
        for job in jobs:
            await hand_over(publisher, signed_for(job))
        for job in jobs:
            got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
            assert got.outcome == "failed" and got.error is not None
            assert got.error.startswith("ssrf_blocked"), (job.url, got.error)
    assert proxy.connections == 0, "a refused destination was asked of the proxy"
    assert canary.connections == 0


def _certificate(tmp: Path, name: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


async def test_https_is_tunnelled_with_connect_to_the_vetted_ip_and_sni_keeps_the_name(
        amqp_url: str, publisher: Publisher, audit: Observer, tmp_path: Path) -> None:
    """A TLS receiver with a certificate for ``hooks.test`` that the deliverer does not trust
    (self-signed): the proxy is asked ``CONNECT 127.0.0.1:port`` — the vetted address, not the
    name — and the TLS handshake inside the tunnel names ``hooks.test`` (SNI); the certificate
    is checked (and refused here: ``tls_error``), so the tunnel does not weaken TLS."""
    names: list[str | None] = []
    context = _certificate(tmp_path, "hooks.test")
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc,return-value]  # records, never rejects
    port = free_port()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.read(1)
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", port, ssl=context)
    proxy = Proxy()
    resolver = RebindingResolver("127.0.0.1", "127.0.0.1")
    try:
        async with proxy.running(), deliverer(amqp_url, allowed_networks="127.0.0.1/32",
                                              proxy_url=proxy.url, resolver=resolver):
            job = make_job(f"https://hooks.test:{port}/hook")
            await hand_over(publisher, signed_for(job))
            got = await fact(audit, fact_of("delivery.attempted", job.delivery_id))
    finally:
        server.close()
        await server.wait_closed()
    assert got.outcome == "failed" and got.error is not None
    assert got.error.startswith("tls_error"), got.error
    assert [(m, t) for m, t, _ in proxy.requests] == [("CONNECT", f"127.0.0.1:{port}")]
    assert names == ["hooks.test"]
