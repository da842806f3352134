"""The shared HTTP helpers: JSON errors of any status, bodies read whole, crashes hidden."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared.web import error, errors_middleware, json_response, read_json


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 415, 422, 500, 503])
def test_error_builds_any_status_with_the_json_shape(status: int) -> None:
    exc = error(status, "code", "message", [{"field": "x", "message": "bad"}])
    assert exc.status == status
    assert exc.content_type == "application/json"
    assert orjson.loads(exc.text or "")["error"]["fields"] == [{"field": "x", "message": "bad"}]


async def _client() -> TestClient[web.Request, web.Application]:
    async def echo(request: web.Request) -> web.Response:
        return json_response(await read_json(request, 300_000))

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("secret detail whsec_abc")

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_post("/echo", echo)
    app.router.add_get("/boom", boom)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_large_body_arriving_in_pieces_is_read_whole() -> None:
    client = await _client()
    try:
        payload = {"data": "x" * 250_000}

        async def pieces():  # type: ignore[no-untyped-def]
            raw = orjson.dumps(payload)
            for i in range(0, len(raw), 1000):
                yield raw[i:i + 1000]

        resp = await client.post("/echo", data=pieces(),
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 200
        assert await resp.json() == payload
        resp = await client.post("/echo", data=b"x" * 300_001,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"
    finally:
        await client.close()


async def test_plain_errors_and_crashes_become_json() -> None:
    client = await _client()
    try:
        resp = await client.get("/echo")
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
        resp = await client.get("/nowhere")
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
        resp = await client.get("/boom")
        assert resp.status == 500
        text = await resp.text()
        assert "whsec_" not in text
        assert "secret detail" not in text
    finally:
        await client.close()
