"""The deliverer's HTTP client: one pool, two sessions; only a paced POST goes through the one
whose trace hook tells its turn that the request was written (``services.deliverer.client``).

A real receiver on loopback; the deliverer's ``post`` as the handlers call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import pytest
from aiohttp import web

from services.deliverer.client import make_client
from services.deliverer.consumer import Deliverer, WaitTiers
from services.deliverer.settings import Settings
from shared.broker import FactPublisher, Publisher
from shared.contracts import DeliveryJob, Event, SignedDelivery


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A receiver answering 200; the URL of its hook and the headers of each request."""
    seen: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        seen.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", seen
    finally:
        await runner.cleanup()


async def test_a_paced_post_says_when_it_was_written_and_a_plain_one_is_the_same_request(
        receiver: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = receiver
    settings = Settings(allowed_networks="127.0.0.0/8")
    client = make_client(settings)
    # post() alone: nothing is published, so no broker behind these
    deliverer = Deliverer(settings, client, cast(Publisher, None), cast(WaitTiers, None),
                          cast(FactPublisher, None))
    now = datetime.now(UTC)
    signed = SignedDelivery(
        job=DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url=url,
                        event=Event(id="evt_1", event="a.b", timestamp=now, data={})),
        body='{"a": 1}', headers={"webhook-id": "evt_1", "X-Dihya-Delivery": "dlv_1"},
        signed_at=now)
    written: list[str] = []
    try:
        paced = await deliverer.post(signed, written=lambda: written.append("written"))
        assert (paced.status, paced.excerpt, written) == (200, b"ok", ["written"])
        plain = await deliverer.post(signed)
        assert (plain.status, plain.excerpt, written) == (200, b"ok", ["written"])
    finally:
        await client.close()
    # both sessions send the very same request: no Accept-Encoding (the excerpt stays
    # readable), no cookie, Dihya's headers
    assert len(seen) == 2 and seen[0] == seen[1]
    assert "Accept-Encoding" not in seen[0] and "Cookie" not in seen[0]
    assert seen[0]["X-Dihya-Delivery"] == "dlv_1"
