"""The CLI's HTTP client against a scripted aiohttp server on 127.0.0.1: what it makes of cut
transfers, non-JSON errors, slow servers and the headers it sends."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from cli.errors import Exit
from cli.main import run

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def server() -> AsyncIterator[Serve]:
    """``await server(("GET", "/path", handler), …)`` → the base URL of a fresh server."""
    runners: list[web.AppRunner] = []

    async def serve(*routes: tuple[str, str, Handler]) -> str:
        app = web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def dihya(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), env={"HOME": "/nonexistent",
                                                         "DIHYA_TOKEN": "tok_1"},
                                   stdout=out, stderr=err, stdin=io.StringIO())
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_an_export_cut_short_fails_and_leaves_no_file(
        server: Serve, tmp_path: Path, how: str) -> None:
    """``close``: the body ends without its last chunk. ``abort`` (what the audit service
    does when a page read fails): a reset, which may come before or after the first bytes."""
    async def records(request: web.Request) -> web.Response:
        return web.json_response({"records": [{"seq": 1}], "next_cursor": None})

    async def export(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Dihya-Audit-Head-Seq": "3"})
        response.content_type = "application/x-ndjson"
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"seq":1}\n')
        assert request.transport is not None
        getattr(request.transport, how)()
        return response

    url = await server(("GET", "/v1/audit/records", records),
                       ("GET", "/v1/audit/export", export))
    target = tmp_path / "out.jsonl"
    code, _, err = await dihya("--audit-url", url, "audit", "export", "-o", str(target))
    assert code == Exit.UNAVAILABLE
    if how == "close":
        assert "stopped the transfer half-way (the transfer was cut short)" in err
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_a_non_json_error_page_is_reported_as_text(
        server: Serve) -> None:
    async def proxy(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>",
                            content_type="text/html")

    base = await server(("GET", "/v1/endpoints", proxy))
    code, out, err = await dihya("--ingest-url", base, "endpoints", "list", "--json")
    assert code == Exit.UNAVAILABLE
    assert "HTTP 502" in err and "Bad Gateway" in err
    assert out == ""  # no API error body to relay


async def test_a_slow_api_times_out(server: Serve
                                    ) -> None:
    released = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await released.wait()
        return web.json_response({"items": [], "next": None})

    base = await server(("GET", "/v1/tokens", slow))
    code, _, err = await dihya("--ingest-url", base, "--timeout", "0.3", "tokens", "list")
    released.set()
    assert code == Exit.UNAVAILABLE
    assert "timed out" in err


async def test_requests_carry_the_token_json_and_encoded_ids(
        server: Serve) -> None:
    seen: list[tuple[str, str, str, bytes]] = []

    async def update(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], request.headers["Content-Type"],
                     request.raw_path, await request.read()))
        return web.json_response({"id": "a/b", "url": "https://h", "events": ["x"],
                                  "description": None, "status": "enabled",
                                  "created_at": "2025-05-20T12:00:00Z",
                                  "updated_at": "2025-05-20T12:00:00Z",
                                  "retry_schedule": None, "held_deliveries": 2})

    base = await server(("PATCH", "/v1/endpoints/{id}", update))
    code, out, err = await dihya("--ingest-url", base, "endpoints", "update", "a/b",
                                 "--no-description", "--retry-schedule", "default")
    assert code == Exit.OK, err
    auth, ctype, path, body = seen[0]
    assert (auth, ctype, path) == ("Bearer tok_1", "application/json", "/v1/endpoints/a%2Fb")
    assert orjson.loads(body) == {"description": None, "retry_schedule": None}
    assert "dihya deliveries recover a/b" in err  # the held deliveries hint
    assert "the deployment's" in out


async def test_a_broken_chain_exits_6_and_says_where(server: Serve) -> None:
    async def verify(request: web.Request) -> web.Response:
        return web.json_response({
            "ok": False, "records": 41, "first_bad_seq": 42, "problem": "hash_mismatch",
            "detail": "the record's content does not match its hash: it was modified.",
            "head_hash": "ab" * 32, "checkpoint": None})

    base = await server(("GET", "/v1/audit/verify", verify))
    code, out, _ = await dihya("--audit-url", base, "audit", "verify")
    assert code == Exit.CHECK_FAILED
    assert out.startswith("✘ The audit chain is BROKEN at record seq 42: hash_mismatch.")
    assert "ab" * 32 in out


async def test_endpoint_test_without_an_attempt_exits_6(server: Serve) -> None:
    """The services that sign and deliver are down: the event is accepted, no attempt comes."""
    endpoint = {"id": "ep_1", "url": "https://h/x", "events": ["#"], "status": "enabled"}
    patches: list[bytes] = []

    async def get(request: web.Request) -> web.Response:
        return web.json_response(endpoint)

    async def patch(request: web.Request) -> web.Response:
        patches.append(await request.read())
        return web.json_response(endpoint)

    async def publish(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        assert body["event"] == "dihya.test" and body["lang"] == "en"
        return web.json_response({"id": "evt_1", "event": "dihya.test"}, status=202)

    async def records(request: web.Request) -> web.Response:
        assert request.query["event_id"] == "evt_1" and request.query["endpoint_id"] == "ep_1"
        return web.json_response({"records": [{"kind": "event.accepted", "seq": 1}],
                                  "next_cursor": None})

    base = await server(("GET", "/v1/endpoints/{id}", get),
                        ("PATCH", "/v1/endpoints/{id}", patch),
                        ("POST", "/v1/events", publish),
                        ("GET", "/v1/audit/records", records))
    code, out, _ = await dihya("--ingest-url", base, "--audit-url", base, "endpoints", "test",
                               "ep_1", "--wait", "0.3", "--json")
    assert code == Exit.CHECK_FAILED
    result = orjson.loads(out)
    assert (result["delivered"], result["record"], result["subscription_added"]) == \
        (False, None, False)
    assert patches == [], "`#` already matches dihya.test: nothing to subscribe"


@pytest.mark.parametrize("keyed", [True, False])
async def test_an_unconfirmed_publish_says_it_may_have_been_accepted_and_how_to_retry(
        server: Serve, tmp_path: Path, keyed: bool) -> None:
    """Ingest's ``broker_unconfirmed`` 503: the CLI does not say "nothing was changed"; it
    names the event id and the retry that keeps it one event (the same key, else ``--id``),
    and ``--id`` sends that id in the body."""
    bodies: list[dict[str, object]] = []

    async def events(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        if "id" not in body:  # the broker lost every confirm until the id is given
            return web.json_response({"error": {
                "code": "broker_unconfirmed", "event_id": "evt_7", "fields": [],
                "message": "The message broker did not confirm event evt_7: it may or may "
                           "not have been accepted; retry with `error.event_id` as the "
                           "body's `id` (or with an Idempotency-Key), and it is delivered "
                           "once."}}, status=503)
        return web.json_response({"id": body.get("id"), "event": body["event"]}, status=202)

    url = await server(("POST", "/v1/events", events))
    path = tmp_path / "e.json"
    path.write_bytes(orjson.dumps({"event": "order.paid", "data": {}}))
    key = ("--idempotency-key", "k-1") if keyed else ()
    code, _, err = await dihya("--ingest-url", url, "events", "publish", str(path), *key)
    assert code == Exit.UNAVAILABLE
    assert "evt_7" in err and "may or may not have been accepted" in err
    assert "Nothing was changed" not in err
    if keyed:
        assert "--idempotency-key k-1" in err
    else:
        assert f"dihya events publish {path} --id evt_7" in err
        code, out, _ = await dihya("--ingest-url", url, "events", "publish", str(path),
                                   "--id", "evt_7")
        assert code == Exit.OK and "evt_7" in out and bodies[-1]["id"] == "evt_7"
    fr_code, _, fr_err = await dihya("--lang", "fr", "--ingest-url", url, "events", "publish",
                                     str(path), *key)
    assert fr_code == Exit.UNAVAILABLE and "peut-être été accepté" in fr_err


@pytest.mark.parametrize("broken", ["ingest", "audit"])
async def test_a_subject_export_missing_a_part_writes_no_file(
        server: Serve, tmp_path: Path, broken: str) -> None:
    """The subject export is one file of two parts (audit's records, ingest's payloads): when
    either part cannot be had whole, the command fails and leaves no file."""
    async def payloads(request: web.Request) -> web.Response:
        if broken == "ingest":
            return web.json_response({"error": {"code": "storage_unavailable", "fields": [],
                                                "message": "The database is unavailable."}},
                                     status=503)
        return web.json_response({"subject": "u42", "events": []})

    async def records(request: web.Request) -> web.Response:
        body = b'{"type":"x","records":[' if broken == "audit" else b'{"records":[]}'
        return web.Response(body=body, content_type="application/json")

    url = await server(("GET", "/v1/subjects/u42/export", payloads),
                       ("GET", "/v1/audit/subjects/u42/export", records))
    target = tmp_path / "u42.json"
    code, _, err = await dihya("--ingest-url", url, "--audit-url", url, "audit",
                               "subject-export", "u42", "-o", str(target))
    assert code == Exit.UNAVAILABLE, err
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
    if broken == "audit":
        assert "not one JSON object" in err and "no file was kept" in err
