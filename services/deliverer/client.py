"""The deliverer's one HTTP client: pooled, capped per host, SSRF-vetting, cookie-less, with
no proxy from the environment; and the hook that tells a paced POST its request has left."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver

from services.deliverer.settings import Settings
from services.deliverer.ssrf import VettingResolver


def make_session(settings: Settings, resolver: AbstractResolver | None = None
                 ) -> aiohttp.ClientSession:
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
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[written],
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
