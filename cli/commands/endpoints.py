"""``dihya endpoints``: register, list, show, change, delete, rotate and test webhook endpoints."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cli import output
from cli.client import Client, seg
from cli.commands import Commands, confirm, value
from cli.context import Ctx
from cli.errors import ApiError, CliError, Exit, UnreachableError, UsageError
from cli.i18n import LANGS, TIFINAGH, Messages, catalog
from cli.values import (
    parse_header,
    parse_rate_limit,
    parse_schedule,
    rate_limit_text,
    schedule_text,
)
from shared.subscriptions import selects  # the filter contract ingest applies

TEST_EVENT = "dihya.test"
"""The event type ``endpoints test`` publishes. Only endpoints subscribed to it (or to a
pattern matching it, such as ``#``) receive it."""
POLL_INTERVAL = 0.25
"""Seconds between two looks at the audit log while waiting for the test attempt."""
OUTCOME_KINDS = ("delivery.attempted", "delivery.held", "delivery.parked",
                 "delivery.dead_lettered")
"""Audit records that end the wait: an attempt, or the reason there was none."""


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("endpoints", "help.endpoints")
    schedule = value(t, parse_schedule, "hint.schedule")
    header = value(t, parse_header, "hint.header")
    rate = value(t, parse_rate_limit, "hint.rate_limit")

    p = cmds.command("create", "help.endpoints.create", create)
    p.add_argument("url", help=t("help.arg.url"))
    p.add_argument("-e", "--event", dest="events", action="append", required=True,
                   metavar="PATTERN", help=t("help.arg.events"))
    p.add_argument("--description", help=t("help.arg.description"))
    p.add_argument("--secret", help=t("help.arg.secret"))
    p.add_argument("--retry-schedule", type=schedule, metavar="DELAYS",
                   help=t("help.arg.retry_schedule"))
    p.add_argument("--signature-scheme", choices=("hmac-sha256", "ed25519"),
                   help=t("help.arg.signature_scheme"))
    p.add_argument("--header", dest="headers", action="append", type=header,
                   metavar="NAME=VALUE", help=t("help.arg.header"))
    p.add_argument("--rate-limit", type=rate, metavar="N[/BURST]",
                   help=t("help.arg.rate_limit"))
    p.add_argument("--ordering", choices=("fifo",), help=t("help.arg.ordering"))
    p.add_argument("--ordering-key", metavar="PATH", help=t("help.arg.ordering_key"))
    p.add_argument("--tenant", help=t("help.arg.tenant"))

    p = cmds.command("list", "help.endpoints.list", list_)
    _paging(p, t)
    p.add_argument("--tenant", help=t("help.arg.tenant"))

    p = cmds.command("show", "help.endpoints.show", show)
    p.add_argument("id", help=t("help.arg.endpoint_id"))

    p = cmds.command("update", "help.endpoints.update", update)
    p.add_argument("id", help=t("help.arg.endpoint_id"))
    p.add_argument("--url", help=t("help.arg.url"))
    p.add_argument("-e", "--event", dest="events", action="append", metavar="PATTERN",
                   help=t("help.arg.events_replace"))
    desc = p.add_mutually_exclusive_group()
    desc.add_argument("--description", help=t("help.arg.description"))
    desc.add_argument("--no-description", action="store_true",
                      help=t("help.arg.no_description"))
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="status", action="store_const", const="enabled",
                       help=t("help.arg.enable"))
    state.add_argument("--disable", dest="status", action="store_const", const="disabled",
                       help=t("help.arg.disable"))
    p.add_argument("--retry-schedule", type=schedule, default=argparse.SUPPRESS,
                   metavar="DELAYS", help=t("help.arg.retry_schedule_update"))
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--header", dest="headers", action="append", type=header,
                       metavar="NAME=VALUE", help=t("help.arg.header_update"))
    heads.add_argument("--no-headers", action="store_true", help=t("help.arg.no_headers"))
    p.add_argument("--rate-limit", type=rate, default=argparse.SUPPRESS, metavar="N[/BURST]",
                   help=t("help.arg.rate_limit_update"))
    p.add_argument("--ordering", choices=("fifo", "none"), default=argparse.SUPPRESS,
                   help=t("help.arg.ordering_update"))
    p.add_argument("--ordering-key", default=argparse.SUPPRESS, metavar="PATH",
                   help=t("help.arg.ordering_key"))

    p = cmds.command("delete", "help.endpoints.delete", delete)
    p.add_argument("id", help=t("help.arg.endpoint_id"))
    p.add_argument("-y", "--yes", action="store_true", help=t("help.arg.yes"))

    p = cmds.command("rotate-secret", "help.endpoints.rotate", rotate)
    p.add_argument("id", help=t("help.arg.endpoint_id"))
    p.add_argument("--overlap", type=int, default=None, metavar="SECONDS",
                   help=t("help.arg.overlap"))
    p.add_argument("--secret", help=t("help.arg.secret"))

    p = cmds.command("test", "help.endpoints.test", probe)
    p.add_argument("id", help=t("help.arg.endpoint_id"))
    p.add_argument("--event", dest="event_type", metavar="TYPE", help=t("help.arg.test_event"))
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help=t("help.arg.wait"))
    p.add_argument("--keep-subscription", action="store_true",
                   help=t("help.arg.keep_subscription"))


def _paging(p: argparse.ArgumentParser, t: Messages) -> None:
    p.add_argument("--limit", type=int, default=100, help=t("help.arg.limit"))
    p.add_argument("--after", metavar="ID", help=t("help.arg.after"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))


def pages(client: Client, path: str, args: argparse.Namespace,
          extra: dict[str, str] | None = None) -> dict[str, Any]:
    """One page of a list (``--limit``, ``--after``), or every page with ``--all``; the
    result has the API's shape: ``{"items": [...], "next": ...}``."""
    items: list[Any] = []
    after: str | None = args.after
    while True:
        query = {"limit": str(args.limit), **(extra or {})}
        if after:
            query["after"] = after
        page = client.get(path, query)
        items += page["items"]
        after = page.get("next")
        if not args.all or not after:
            return {"items": items, "next": after}


def more_hint(ctx: Ctx, page: dict[str, Any]) -> None:
    if page.get("next"):
        ctx.note(ctx.t("list.more", after=page["next"]))


def status_text(t: Messages, status: str) -> str:
    key = f"status.{status}"
    return t(key) if t.has(key) else status


def describe(t: Messages, ep: dict[str, Any]) -> list[tuple[str, Any]]:
    """An endpoint as labelled lines."""
    rows: list[tuple[str, Any]] = [
        (t("field.id"), ep["id"]),
        (t("field.url"), ep["url"]),
        (t("field.status"), status_text(t, ep["status"])),
        (t("field.events"), ep["events"]),
        (t("field.description"), ep.get("description")),
        (t("field.retry_schedule"), schedule_text(ep.get("retry_schedule"))
         or t("endpoint.default_schedule")),
        (t("field.created_at"), output.short_time(ep.get("created_at"))),
        (t("field.updated_at"), output.short_time(ep.get("updated_at"))),
    ]
    rows.append((t("field.signature_scheme"), ep.get("signature_scheme", "hmac-sha256")))
    if ep.get("public_keys"):
        rows.append((t("field.public_keys"), [k["key"] for k in ep["public_keys"]]))
    limit = rate_limit_text(ep.get("rate_limit"))
    rows.append((t("field.rate_limit"), t("endpoint.no_rate_limit") if limit is None
                 else t("endpoint.rate_limit_text", rate=limit[0], burst=limit[1])))
    if ep.get("ordering") is None:
        rows.append((t("field.ordering"), t("endpoint.no_ordering")))
    elif ep.get("ordering_key") is None:
        rows.append((t("field.ordering"), t("endpoint.ordering_whole")))
    else:
        rows.append((t("field.ordering"), t("endpoint.ordering_text", path=ep["ordering_key"])))
    if ep.get("headers"):
        rows.append((t("field.headers"), [f"{n}: {v}" for n, v in ep["headers"].items()]))
    if ep.get("disabled_reason"):
        rows.append((t("field.disabled_reason"), ep["disabled_reason"]))
    if ep.get("failing_since"):
        rows.append((t("field.failing_since"), output.short_time(ep["failing_since"])))
    return rows


def create(ctx: Ctx, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url, "events": args.events}
    if args.description is not None:
        body["description"] = args.description
    if args.secret is not None:
        body["secret"] = args.secret
    if args.retry_schedule is not None:
        body["retry_schedule"] = args.retry_schedule
    if args.signature_scheme is not None:
        body["signature_scheme"] = args.signature_scheme
    if args.headers:
        body["headers"] = dict(args.headers)
    if args.rate_limit is not None:
        body["rate_limit"] = args.rate_limit
    if args.ordering is not None:
        body["ordering"] = args.ordering
    if args.ordering_key is not None:
        body["ordering_key"] = args.ordering_key
    if args.tenant is not None:
        body["tenant"] = args.tenant
    ep = ctx.ingest().request("POST", "/v1/endpoints", body=body).data

    def human() -> None:
        t = ctx.t
        ctx.say(t("endpoint.created", id=ep["id"]))
        if ep.get("secret") is None:  # ed25519: nothing secret to show
            ctx.say(output.pairs(describe(t, ep)))
            ctx.note(t("key.public_only"))
            return
        ctx.say(output.pairs([*describe(t, ep), (t("field.secret"), ep["secret"])]))
        ctx.note(t("secret.once"))

    ctx.emit(ep, human)
    return Exit.OK


def list_(ctx: Ctx, args: argparse.Namespace) -> int:
    page = pages(ctx.ingest(), "/v1/endpoints", args,
                 {"tenant": args.tenant} if args.tenant else None)

    def human() -> None:
        t = ctx.t
        if not page["items"]:
            ctx.say(t("endpoint.none"))
            return
        ctx.say(output.table(
            [t("col.id"), t("col.status"), t("col.url"), t("col.events"), t("col.description")],
            [[e["id"], status_text(t, e["status"]), e["url"], e["events"], e.get("description")]
             for e in page["items"]]))
        more_hint(ctx, page)

    ctx.emit(page, human)
    return Exit.OK


def show(ctx: Ctx, args: argparse.Namespace) -> int:
    ep = ctx.ingest().get(f"/v1/endpoints/{seg(args.id)}")
    ctx.emit(ep, lambda: ctx.say(output.pairs(describe(ctx.t, ep))))
    return Exit.OK


def update(ctx: Ctx, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.url is not None:
        body["url"] = args.url
    if args.events:
        body["events"] = args.events
    if args.no_description:
        body["description"] = None
    elif args.description is not None:
        body["description"] = args.description
    if args.status is not None:
        body["status"] = args.status
    if "retry_schedule" in args:
        body["retry_schedule"] = args.retry_schedule
    if args.headers:
        body["headers"] = dict(args.headers)
    elif args.no_headers:
        body["headers"] = {}
    if "rate_limit" in args:
        body["rate_limit"] = args.rate_limit
    for name in ("ordering", "ordering_key"):  # 'none': back to no order / one key
        if name in args:
            body[name] = None if getattr(args, name) == "none" else getattr(args, name)
    if not body:
        raise UsageError(ctx.t("endpoint.nothing_to_update"))
    ep = ctx.ingest().request("PATCH", f"/v1/endpoints/{seg(args.id)}", body=body).data

    def human() -> None:
        ctx.say(ctx.t("endpoint.updated", id=ep["id"]))
        ctx.say(output.pairs(describe(ctx.t, ep)))
        if ep.get("held_deliveries"):
            ctx.note(ctx.t("endpoint.held", count=ep["held_deliveries"], id=ep["id"]))

    ctx.emit(ep, human)
    return Exit.OK


def delete(ctx: Ctx, args: argparse.Namespace) -> int:
    confirm(ctx, args.yes, ctx.t("endpoint.confirm_delete", id=args.id))
    ctx.ingest().request("DELETE", f"/v1/endpoints/{seg(args.id)}")
    ctx.emit({"id": args.id, "deleted": True},
             lambda: ctx.say(ctx.t("endpoint.deleted", id=args.id)))
    return Exit.OK


def rotate(ctx: Ctx, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.overlap is not None:
        body["overlap_seconds"] = args.overlap
    if args.secret is not None:
        body["secret"] = args.secret
    out = ctx.ingest().request("POST", f"/v1/endpoints/{seg(args.id)}/secret/rotate",
                               body=body).data

    def human() -> None:
        t = ctx.t
        ctx.say(t("secret.rotated", id=out["id"]))
        if out.get("secret") is None:  # ed25519: the new public key
            ctx.say(output.pairs([(t("field.public_key"), out.get("public_key")),
                                  (t("field.previous_valid_until"),
                                   output.short_time(out["previous_valid_until"]))]))
            return
        ctx.say(output.pairs([(t("field.secret"), out["secret"]),
                              (t("field.previous_valid_until"),
                               output.short_time(out["previous_valid_until"]))]))
        ctx.note(t("secret.once"))

    ctx.emit(out, human)
    return Exit.OK


# -- test -----------------------------------------------------------------------------------

def probe_event(event_type: str, endpoint_id: str, t: Messages) -> dict[str, Any]:
    """The event ``endpoints test`` publishes: marked as a test, its ``details`` in the four
    languages (the receiver shows whichever its user reads), Tamazight in the chosen script."""
    tzm = TIFINAGH if t.tzm_script == "tifinagh" else "tzm"
    return {"event": event_type, "lang": t.lang,
            "data": {"test": True, "endpoint_id": endpoint_id,
                     "details": {code: catalog(tzm if code == "tzm" else code)["test.details"]
                                 for code in LANGS}}}


def wait_outcome(audit: Client, query: dict[str, str], timeout: float,
                 attempt: int | None = None, sleep: Any = time.sleep,
                 clock: Any = time.monotonic) -> dict[str, Any] | None:
    """The first audit record matching ``query`` (an event and endpoint, or a delivery) that
    tells what became of it: an attempt (number ``attempt`` when given), or why there was none
    (held, parked). None after ``timeout`` seconds."""
    deadline = clock() + timeout
    while True:
        page = audit.get("/v1/audit/records", {**query, "limit": "100"})
        for record in page["records"]:
            if record["kind"] in OUTCOME_KINDS and (
                    attempt is None or record.get("attempt") in (None, attempt)):
                return dict(record)
        if clock() >= deadline:
            return None
        sleep(POLL_INTERVAL)


def probe(ctx: Ctx, args: argparse.Namespace) -> int:
    t, ingest = ctx.t, ctx.ingest()
    path = f"/v1/endpoints/{seg(args.id)}"
    ep = ingest.get(path)
    if ep["status"] != "enabled":
        raise CliError(t("test.disabled", id=ep["id"]), Exit.API_ERROR)
    event_type = args.event_type or TEST_EVENT
    added = False
    if not selects(ep["events"], event_type):
        if args.event_type:
            raise UsageError(t("test.not_subscribed", id=ep["id"], type=event_type,
                               events=", ".join(ep["events"])))
        ingest.request("PATCH", path, body={"events": [*ep["events"], TEST_EVENT]})
        added = True
        ctx.note(t("test.subscription_added", id=ep["id"], type=TEST_EVENT))
    try:
        accepted = ingest.request("POST", "/v1/events",
                                  body=probe_event(event_type, ep["id"], t)).data
        ctx.note(t("test.published", event_id=accepted["id"], type=event_type, url=ep["url"]))
        ctx.note(t("test.waiting", seconds=f"{args.wait:g}"))
        record = wait_outcome(ctx.audit(), {"event_id": accepted["id"],
                                            "endpoint_id": ep["id"]}, args.wait)
    finally:
        if added and not args.keep_subscription:
            _unsubscribe(ctx, ingest, path, ep["id"])
    delivered = bool(record and record["kind"] == "delivery.attempted"
                     and record.get("outcome") == "delivered")
    result = {"endpoint_id": ep["id"], "event": accepted, "subscription_added": added,
              "delivered": delivered, "record": record}
    timed_out = t("test.timeout", seconds=f"{args.wait:g}", event_id=accepted["id"])
    ctx.emit(result, lambda: show_attempt(ctx, record, timed_out))
    return Exit.OK if delivered else Exit.CHECK_FAILED


def _unsubscribe(ctx: Ctx, ingest: Client, path: str, endpoint_id: str) -> None:
    """Take back the test subscription (only it: other changes made meanwhile stay)."""
    try:
        current = ingest.get(path)
        events = [e for e in current["events"] if e != TEST_EVENT]
        if events and events != current["events"]:
            ingest.request("PATCH", path, body={"events": events})
            ctx.note(ctx.t("test.subscription_removed", id=endpoint_id, type=TEST_EVENT))
    except (ApiError, UnreachableError):
        ctx.note(ctx.t("test.subscription_kept", id=endpoint_id, type=TEST_EVENT))


def show_attempt(ctx: Ctx, record: dict[str, Any] | None, timed_out: str) -> None:
    """An attempt as ``endpoints test`` shows it (``timed_out``: what to say when there was
    none in time)."""
    t = ctx.t
    if record is None:
        ctx.say("✘ " + timed_out)
        return
    if record["kind"] != "delivery.attempted":
        ctx.say("✘ " + t("test.not_attempted", kind=record["kind"],
                         reason=record.get("reason") or "-",
                         event_id=record.get("event_id") or "-"))
        return
    details = record.get("details") or {}
    duration = record.get("duration_ms")
    rows: list[tuple[str, Any]] = [
        (t("field.attempt"), record.get("attempt")),
        (t("field.delivery_id"), record.get("delivery_id")),
        (t("field.status_code"), record.get("status_code")),
        (t("field.duration"), None if duration is None else f"{duration:.1f} ms"),
        (t("field.outcome"), status_text(t, str(record.get("outcome")))),
    ]
    if record.get("error"):
        rows.append((t("field.error"), record["error"]))
    if details.get("response_excerpt"):
        rows.append((t("field.response"), output.clip(str(details["response_excerpt"]), 200)))
    if details.get("next") == "retry":
        rows.append((t("field.next"), t("test.next_retry",
                                        seconds=f"{details.get('retry_in_ms', 0) / 1000:g}")))
    elif details.get("next") == "dead_letter":
        rows.append((t("field.next"), t("test.next_dead_letter")))
    ctx.say(output.pairs(rows))
    if record.get("outcome") == "delivered":
        ctx.say("✔ " + t("test.delivered", status=record.get("status_code")))
        ctx.say(t("test.delivered_meaning"))
    else:
        status = record.get("status_code")
        error = record.get("error")
        if not error or error == f"HTTP {status}":  # say something the status does not
            error = record.get("reason")
        ctx.say("✘ " + t("test.failed", status=status or "-", error=error or "-"))
