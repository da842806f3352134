"""The deliverer's one HTTP client: pooled, capped per host, SSRF-vetting, cookie-less, with
no proxy from the environment; and the hook that tells a paced POST its request has left."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver

from services.deliverer.settings import Settings
from services.deliverer.ssrf import VettingResolver


@dataclass(frozen=True)
class HttpClient:
    """One connection pool, two sessions on it: :attr:`plain` for most POSTs and
    :attr:`paced` for a rate-limited endpoint's, whose turn must learn when its request's
    headers are written (aiohttp's ``on_request_headers_sent``, :func:`_call_written`).

    Why two: a session with a trace configuration runs every request through it — a
    ``Trace`` and its context built, and half a dozen signals awaited (request start and
    end, connection reuse or creation, headers and chunks sent) — whether or not a hook
    listens; the POSTs of endpoints without a rate limit, nearly all of them, need none.
    Both sessions have the same options and the same connector, so the same pool, limits and
    SSRF-vetting resolver; :attr:`plain` owns the connector."""

    plain: aiohttp.ClientSession
    paced: aiohttp.ClientSession

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The one connection pool."""
        return self.plain.connector

    def session(self, traced: bool) -> aiohttp.ClientSession:
        """:attr:`paced` if the POST needs to know when its headers are written."""
        return self.paced if traced else self.plain

    async def close(self) -> None:
        await self.paced.close()  # not the connector's owner: leaves the pool open
        await self.plain.close()


def make_client(settings: Settings, resolver: AbstractResolver | None = None) -> HttpClient:
    """The one HTTP client: pooled, capped per host, SSRF-vetting, cookie-less, no env proxy.

    ``resolver`` answers the name look-ups the SSRF guard vets (aiohttp's default resolver
    unless given: the tests give one whose answer changes, as a rebound name's does). With
    DIHYA_DELIVERER_PROXY_URL the pool only connects to the proxy, which is not vetted: the
    endpoint's name is vetted by the :class:`~services.deliverer.proxy.ProxyRouter` instead."""
    connector = aiohttp.TCPConnector(
        limit=settings.prefetch,
        limit_per_host=settings.max_per_host,
        resolver=(None if settings.proxy_url is not None
                  else VettingResolver(settings.allowed, resolver)),
    )
    written = aiohttp.TraceConfig()
    written.on_request_headers_sent.append(_call_written)
    return HttpClient(plain=_session(connector, owner=True),
                      paced=_session(connector, owner=False, trace_configs=[written]))


def _session(connector: aiohttp.BaseConnector, *, owner: bool,
             trace_configs: list[aiohttp.TraceConfig] | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=owner,
        trace_configs=trace_configs,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,  # with no Accept-Encoding sent, the excerpt stays readable
        skip_auto_headers=("Accept-Encoding",),
        trust_env=False,
    )


WRITTEN = "written"
"""Key of the callback in a POST's ``trace_request_ctx`` (see
:meth:`~services.deliverer.consumer.Deliverer.post`)."""


async def _call_written(session: aiohttp.ClientSession, context: SimpleNamespace,
                        params: aiohttp.TraceRequestHeadersSentParams) -> None:
    """aiohttp's ``on_request_headers_sent``: tells a paced POST's turn it has left."""
    callback = (context.trace_request_ctx or {}).get(WRITTEN)
    if callback is not None:
        callback()
