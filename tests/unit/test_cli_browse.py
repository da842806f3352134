"""``dihya deliveries list``, ``deliveries resend``, ``deliveries retry --wait`` and ``events
show`` against a small aiohttp server on 127.0.0.1 that answers with the ingest API's agreed
shapes (``GET /v1/deliveries``, ``GET /v1/events/{id}``, ``POST /v1/deliveries/{id}/resend``)
and the audit API's records."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from cli.commands.events import shorten_signature
from cli.errors import Exit
from tests.unit.test_cli_client import Serve, dihya, server

__all__ = ["server"]  # the fixture, used by name

DELIVERY = {"id": "dlv_1", "event_id": "evt_1", "event": "template.created",
            "endpoint_id": "ep_1", "url": "https://r.example/hook", "status": "failed",
            "next_retry_at": None, "attempts_count": 3,
            "last_attempt_at": "2026-12-06T10:00:02.123456Z"}
ATTEMPT = {"attempt": 1, "at": "2026-12-06T10:00:00Z", "outcome": "failed",
           "status_code": 500, "latency_ms": 12.5,
           "request_headers": {"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJEL=",
                               "content-type": "application/json"},
           "response_headers": {"content-type": "text/plain"},
           "response_excerpt": "boom", "error": "HTTP 500"}
EVENT = {"id": "evt_1", "event": "template.created", "received_at": "2026-12-06T10:00:00Z",
         "payload": {"event": "template.created",
                     "data": {"details": {"en": "A template was created",
                                          "tzm": "Yettwarna template amaynut"}}},
         "deliveries": [{"id": "dlv_1", "endpoint_id": "ep_1", "url": "https://r.example/hook",
                         "status": "failed", "next_retry_at": "2026-12-06T10:05:00Z",
                         "attempts": [ATTEMPT]}]}


async def test_deliveries_list_filters_and_follows_the_cursor(server: Serve) -> None:
    seen: list[dict[str, str]] = []

    async def deliveries(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        if request.query.get("cursor") == "c2":
            return web.json_response({"items": [{**DELIVERY, "id": "dlv_2"}],
                                      "next_cursor": None})
        return web.json_response({"items": [DELIVERY], "next_cursor": "c2"})

    url = await server(("GET", "/v1/deliveries", deliveries))
    code, out, err = await dihya("--ingest-url", url, "deliveries", "list", "--status", "failed",
                                 "--endpoint", "ep_1", "--event", "evt_1")
    assert code == Exit.OK, err
    assert seen[0] == {"status": "failed", "endpoint": "ep_1", "event": "evt_1", "limit": "50"}
    assert "dlv_1" in out and "template.created" in out and "2026-12-06 10:00:02Z" in out
    assert "--cursor c2" in err
    code, out, _ = await dihya("--ingest-url", url, "deliveries", "list", "--all", "--json")
    assert [d["id"] for d in orjson.loads(out)["items"]] == ["dlv_1", "dlv_2"]
    assert seen[-1]["cursor"] == "c2" and "status" not in seen[-1]


async def test_events_show_prints_payload_and_every_attempt(server: Serve) -> None:
    async def event(request: web.Request) -> web.Response:
        if request.match_info["id"] != "evt_1":
            return web.json_response({"error": {"code": "not_found",
                                                "message": "No event evt_x."}}, status=404)
        return web.json_response(EVENT)

    url = await server(("GET", "/v1/events/{id}", event))
    code, out, err = await dihya("--ingest-url", url, "events", "show", "evt_1", "--headers")
    assert code == Exit.OK, err
    assert '"tzm": "Yettwarna template amaynut"' in out, "the payload, pretty-printed"
    assert "dlv_1" in out and "500" in out and "12.5" in out and "boom" in out
    assert "webhook-signature: v1,g0hM9SsE+…" in out
    assert "OTPJTGt" not in out, "signature values are shortened"
    code, _, err = await dihya("--ingest-url", url, "events", "show", "evt_x")
    assert code == Exit.NOT_FOUND


def test_only_signature_values_are_shortened() -> None:
    assert shorten_signature("X-Dihya-Signature", "a" * 64) == "a" * 12 + "…"
    assert shorten_signature("webhook-signature", "v1,abcdefghijklmnop v1,xy") == \
        "v1,abcdefghi… v1,xy"
    assert shorten_signature("content-type", "application/json; charset=utf-8") == \
        "application/json; charset=utf-8"


def audit_routes(records: list[dict[str, Any]], asked: list[dict[str, str]]) -> Any:
    async def query(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.json_response({"records": records if len(asked) > 1 else [],
                                  "next_cursor": None})
    return query


async def test_resend_then_wait_shows_the_attempt_it_caused(server: Serve) -> None:
    async def resend(request: web.Request) -> web.Response:
        return web.json_response({"delivery_id": request.match_info["id"], "attempt": 4},
                                 status=202)

    asked: list[dict[str, str]] = []
    older = {"kind": "delivery.attempted", "delivery_id": "dlv_1", "attempt": 3,
             "outcome": "failed", "status_code": 500}
    newer = {"kind": "delivery.attempted", "delivery_id": "dlv_1", "attempt": 4,
             "event_id": "evt_1", "outcome": "delivered", "status_code": 200,
             "duration_ms": 7.5, "details": {}}
    ingest = await server(("POST", "/v1/deliveries/{id}/resend", resend))
    audit = await server(("GET", "/v1/audit/records", audit_routes([older, newer], asked)))
    code, out, err = await dihya("--ingest-url", ingest, "--audit-url", audit,
                                 "deliveries", "resend", "dlv_1", "--wait", "5")
    assert code == Exit.OK, (out, err)
    assert "Delivery dlv_1 sent again (attempt 4)." in err
    assert "✔ Delivered: the receiver answered 200." in out
    assert "7.5 ms" in out, "attempt 4's record, not attempt 3's"
    assert asked[-1]["delivery_id"] == "dlv_1"

    code, out, _ = await dihya("--ingest-url", ingest, "deliveries", "resend", "dlv_1")
    assert code == Exit.OK and "Delivery dlv_1 sent again (attempt 4)." in out


async def test_retry_wait_reports_a_failed_attempt_with_exit_6(server: Serve) -> None:
    async def retry(request: web.Request) -> web.Response:
        return web.json_response({"delivery_id": "dlv_1", "endpoint_id": "ep_1",
                                  "attempt": 2, "status": "retried"}, status=202)

    asked: list[dict[str, str]] = []
    failed = {"kind": "delivery.attempted", "delivery_id": "dlv_1", "attempt": 2,
              "outcome": "failed", "status_code": 503, "error": "HTTP 503",
              "reason": "server_error", "details": {"next": "dead_letter"}}
    ingest = await server(("POST", "/v1/deliveries/{id}/retry", retry))
    audit = await server(("GET", "/v1/audit/records", audit_routes([failed], asked)))
    code, out, _ = await dihya("--ingest-url", ingest, "--audit-url", audit,
                               "deliveries", "retry", "dlv_1", "--wait", "--json")
    assert code == Exit.CHECK_FAILED
    assert orjson.loads(out)["delivered"] is False
    silent = await server(("GET", "/v1/audit/records", audit_routes([], [])))
    code, out, _ = await dihya("--ingest-url", ingest, "--audit-url", silent,
                               "deliveries", "retry", "dlv_1", "--wait", "0")
    assert code == Exit.CHECK_FAILED
    assert "No attempt 2 was recorded within 0 s" in out
