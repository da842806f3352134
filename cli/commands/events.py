"""``dihya events publish``: send one event (the guide's payload) to the ingest API;
``dihya events show``: an event's payload as delivered and every attempt per endpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from cli import output
from cli.client import seg
from cli.commands import Commands
from cli.commands.endpoints import status_text
from cli.context import Ctx
from cli.errors import ApiError, Exit, UsageError

MAX_INPUT = 16 * 1024 * 1024
"""Bytes read from the file or stdin at most (the API refuses far less: 256 KiB by default)."""


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("events", "help.events")
    p = cmds.command("publish", "help.events.publish", publish)
    p.add_argument("file", nargs="?", default="-", help=t("help.arg.event_file"))
    p.add_argument("--idempotency-key", metavar="KEY", help=t("help.arg.idempotency_key"))
    p.add_argument("--id", metavar="EVENT_ID", help=t("help.arg.publish_id"))
    p.add_argument("--tenant", help=t("help.arg.tenant"))

    p = cmds.command("show", "help.events.show", show)
    p.add_argument("id", help=t("help.arg.event_id"))
    p.add_argument("--headers", action="store_true", help=t("help.arg.show_headers"))


def read_event(ctx: Ctx, source: str) -> Any:
    """The JSON document in ``source`` (a path, or ``-`` for standard input)."""
    name = ctx.t("events.stdin") if source == "-" else source
    try:
        if source == "-":
            if ctx.interactive():
                ctx.note(ctx.t("events.reading_stdin"))
            buffer = getattr(ctx.stdin, "buffer", None)
            raw = bytes(buffer.read(MAX_INPUT + 1)) if buffer is not None else \
                ctx.stdin.read(MAX_INPUT + 1).encode("utf-8")
        else:
            with Path(source).open("rb") as fh:
                raw = fh.read(MAX_INPUT + 1)
    except OSError as exc:
        raise UsageError(ctx.t("events.unreadable", source=name, error=exc.strerror or exc)) \
            from None
    if len(raw) > MAX_INPUT:
        raise UsageError(ctx.t("events.too_large", source=name))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageError(ctx.t("events.bad_json", source=name, error=exc)) from None


def publish(ctx: Ctx, args: argparse.Namespace) -> int:
    event = read_event(ctx, args.file)
    if args.id is not None and isinstance(event, dict):
        event["id"] = args.id
    if args.tenant is not None and isinstance(event, dict):
        event["tenant"] = args.tenant  # the option wins over the file's own
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    try:
        resp = ctx.ingest().request("POST", "/v1/events", body=event, headers=headers)
    except ApiError as exc:
        if exc.code == "broker_unconfirmed":
            exc.advice = unconfirmed_advice(ctx, exc, args)
        raise
    accepted = resp.data
    replayed = resp.headers.get("idempotent-replayed") == "true"

    def human() -> None:
        ctx.say(ctx.t("events.accepted", id=accepted["id"], type=accepted["event"]))
        if replayed:
            ctx.note(ctx.t("events.replayed"))

    ctx.emit(accepted, human)
    return Exit.OK


def unconfirmed_advice(ctx: Ctx, exc: ApiError, args: argparse.Namespace) -> str:
    """What to do after a ``broker_unconfirmed`` 503: the event may or may not have been
    accepted; the retry must carry the same key, or else the same id (never a new event)."""
    event_id = str(exc.detail("event_id") or "?")
    if args.idempotency_key:
        return ctx.t("events.unconfirmed_keyed", id=event_id,
                     idempotency_key=args.idempotency_key)
    return ctx.t("events.unconfirmed", id=event_id, source=args.file)


SIGNATURE_HEADERS = frozenset({"webhook-signature", "x-dihya-signature"})
"""Request headers whose values are shortened when shown: enough to compare, not to copy."""


def shorten_signature(name: str, value: str) -> str:
    """A signature header's value cut to its first characters (``v1,g0hM9SsE…``)."""
    if name.lower() not in SIGNATURE_HEADERS:
        return value
    return " ".join(part[:12] + "…" if len(part) > 12 else part for part in value.split())


def show(ctx: Ctx, args: argparse.Namespace) -> int:
    event = ctx.ingest().get(f"/v1/events/{seg(args.id)}")
    ctx.emit(event, lambda: _show_event(ctx, event, args.headers))
    return Exit.OK


def _show_event(ctx: Ctx, event: dict[str, Any], headers: bool) -> None:
    t = ctx.t
    ctx.say(output.pairs([(t("field.id"), event["id"]), (t("field.event"), event["event"]),
                          (t("field.received_at"), output.short_time(event["received_at"]))]))
    ctx.say("")
    ctx.say(t("events.payload"))
    ctx.say(output.dumps(event.get("payload")))
    deliveries = event.get("deliveries") or []
    ctx.say("")
    if not deliveries:
        ctx.say(t("events.no_deliveries"))
        return
    for d in deliveries:
        ctx.say(output.pairs([(t("field.delivery_id"), d["id"]),
                              (t("field.endpoint"), d["endpoint_id"]),
                              (t("field.url"), d["url"]),
                              (t("field.status"), status_text(t, d["status"])),
                              (t("field.next_retry"), output.short_time(d.get("next_retry_at")))]))
        attempts = d.get("attempts") or []
        if attempts:
            ctx.say(output.table(
                [t("col.attempt"), t("col.time"), t("col.outcome"), t("col.status_code"),
                 t("col.ms"), t("col.error")],
                [[a["attempt"], output.short_time(a["at"]), status_text(t, str(a["outcome"])),
                  a.get("status_code"), a.get("latency_ms"), a.get("error")]
                 for a in attempts]))
            last = attempts[-1]
            if last.get("response_excerpt"):
                ctx.say(output.pairs([(t("field.response"),
                                       output.clip(str(last["response_excerpt"]), 200))]))
            if headers:
                for a in attempts:
                    _show_headers(ctx, a)
        ctx.say("")


def _show_headers(ctx: Ctx, attempt: dict[str, Any]) -> None:
    t = ctx.t
    ctx.say(t("events.attempt_headers", attempt=attempt["attempt"]))
    for label, found in ((t("events.request_headers"), attempt.get("request_headers")),
                         (t("events.response_headers"), attempt.get("response_headers"))):
        ctx.say(f"  {label}")
        for name, value in (found or {}).items():
            ctx.say(f"    {name}: {shorten_signature(name, str(value))}")
