"""Egress through an HTTP proxy (``DIHYA_DELIVERER_PROXY_URL``), the SSRF guard kept.

Receivers that allow-list source addresses need deliveries to leave from a few fixed ones: an
egress proxy (smokescreen, Squid, tinyproxy…) gives that. The proxy must not become the one
that decides where a delivery goes, or it would resolve the endpoint's name again, past the
guard (a rebound name, an internal address). So the deliverer still resolves and vets the name
itself (:class:`~services.deliverer.ssrf.VettingResolver`) and asks the proxy for the *vetted
address*:

* ``https://`` — ``CONNECT <vetted IP>:<port>``, then TLS inside the tunnel with SNI and
  certificate check on the endpoint's host name (aiohttp's ``server_hostname``), and
  ``Host: <name>``;
* ``http://`` — the request in absolute form to the vetted IP (``POST http://<IP>:<port>/…``,
  how HTTP proxies forward plain http), with ``Host: <name>``.

The connection pool then only ever connects to the proxy, which the operator configured and
trusts: its own address is not vetted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp.abc import AbstractResolver
from yarl import URL

from shared.egress import ip_literal


@dataclass(frozen=True)
class Route:
    """How to send one request through the proxy."""

    url: URL
    headers: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)


class ProxyRouter:
    """Turns an endpoint URL into a request to its vetted address through the proxy."""

    def __init__(self, proxy_url: str, vetting: AbstractResolver) -> None:
        self._proxy = URL(proxy_url)
        self._vetting = vetting

    async def route(self, url: str) -> Route:
        """The request for ``url``: raises what the vetting resolver raises for a refused or
        unresolvable name (``BlockedAddressError``, ``OSError``). IP literals are vetted
        before (``shared.egress.check_url``)."""
        target = URL(url)
        name = target.raw_host or ""
        port = target.port or (443 if target.scheme == "https" else 80)
        literal = ip_literal(name)
        if literal is not None:
            address = str(literal)
        else:
            answers = await self._vetting.resolve(name, port, socket.AF_UNSPEC)
            address = answers[0]["host"]
        host_header = name if target.is_default_port() else f"{name}:{port}"
        options: dict[str, Any] = {"proxy": self._proxy}
        if target.scheme == "https":
            options["server_hostname"] = name  # SNI and the certificate check keep the name
        return Route(target.with_host(address), {"Host": host_header}, options)
