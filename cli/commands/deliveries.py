"""``dihya deliveries``: every delivery (``list``, filtered by status, endpoint or event), send
one again (``resend``, whatever its status), and the dead-letter store — list failed deliveries,
retry one, recover an endpoint's deliveries since a time. ``retry`` and ``resend`` take
``--wait`` to show the attempt as ``dihya endpoints test`` does."""

from __future__ import annotations

import argparse
from typing import Any

from cli import output
from cli.client import Client, seg
from cli.commands import Commands, value
from cli.commands.endpoints import more_hint, pages, show_attempt, status_text, wait_outcome
from cli.context import Ctx
from cli.errors import Exit
from cli.i18n import Messages
from cli.values import iso_utc, parse_when


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("deliveries", "help.deliveries")

    p = cmds.command("list", "help.deliveries.all", list_)
    p.add_argument("--status", metavar="STATUS", help=t("help.arg.list_status"))
    p.add_argument("--endpoint", metavar="ID", help=t("help.arg.list_endpoint"))
    p.add_argument("--event", metavar="ID", help=t("help.arg.list_event"))
    cursor_paging(p, t)

    p = cmds.command("resend", "help.deliveries.resend", resend)
    p.add_argument("id", help=t("help.arg.delivery_id"))
    waiting(p, t)

    p = cmds.command("list-failed", "help.deliveries.list", list_failed)
    p.add_argument("--endpoint", metavar="ID", help=t("help.arg.endpoint_filter"))
    p.add_argument("--status", choices=("failed", "held", "retried"), default="failed",
                   help=t("help.arg.delivery_status"))
    p.add_argument("--limit", type=int, default=100, help=t("help.arg.limit"))
    p.add_argument("--after", metavar="ID", help=t("help.arg.after"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))

    p = cmds.command("retry", "help.deliveries.retry", retry)
    p.add_argument("id", help=t("help.arg.delivery_id"))
    waiting(p, t)

    p = cmds.command("recover", "help.deliveries.recover", recover)
    p.add_argument("endpoint", metavar="ENDPOINT_ID", help=t("help.arg.endpoint_id"))
    p.add_argument("--since", required=True, type=value(t, parse_when, "hint.when"), metavar="WHEN",
                   help=t("help.arg.since"))


def cursor_paging(p: argparse.ArgumentParser, t: Messages) -> None:
    p.add_argument("--limit", type=int, default=50, help=t("help.arg.limit_cursor"))
    p.add_argument("--cursor", help=t("help.arg.cursor"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))


def cursor_pages(client: Client, path: str, args: argparse.Namespace,
                 query: dict[str, str]) -> dict[str, Any]:
    """One page (``--limit``, ``--cursor``) or, with ``--all``, every page of a list paged by
    cursor: ``{"items": [...], "next_cursor": ...}``."""
    items: list[Any] = []
    cursor: str | None = args.cursor
    while True:
        page = client.get(path, {**query, "limit": str(args.limit),
                                 **({"cursor": cursor} if cursor else {})})
        items += page["items"]
        cursor = page.get("next_cursor")
        if not args.all or not cursor:
            return {"items": items, "next_cursor": cursor}


def waiting(p: argparse.ArgumentParser, t: Messages) -> None:
    p.add_argument("--wait", type=float, nargs="?", const=30.0, default=None,
                   metavar="SECONDS", help=t("help.arg.wait_outcome"))


def list_(ctx: Ctx, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("status", args.status), ("endpoint", args.endpoint),
                               ("event", args.event)) if v}
    page = cursor_pages(ctx.ingest(), "/v1/deliveries", args, query)

    def human() -> None:
        t = ctx.t
        if not page["items"]:
            ctx.say(t("deliveries.none_found"))
            return
        ctx.say(output.table(
            [t("col.delivery"), t("col.status"), t("col.event"), t("col.type"),
             t("col.endpoint"), t("col.url"), t("col.attempts"), t("col.last_attempt"),
             t("col.next_retry")],
            [[d["id"], status_text(t, d["status"]), d["event_id"], d["event"],
              d["endpoint_id"], d["url"], d["attempts_count"],
              output.short_time(d.get("last_attempt_at")),
              output.short_time(d.get("next_retry_at"))] for d in page["items"]]))
        if page.get("next_cursor"):
            ctx.note(t("list.more_cursor", cursor=page["next_cursor"]))

    ctx.emit(page, human)
    return Exit.OK


def resend(ctx: Ctx, args: argparse.Namespace) -> int:
    out = ctx.ingest().request("POST", f"/v1/deliveries/{seg(args.id)}/resend").data
    return _sent(ctx, args, out, ctx.t("deliveries.resent", id=out["delivery_id"],
                                       attempt=out["attempt"]))


def _sent(ctx: Ctx, args: argparse.Namespace, out: dict[str, Any], said: str) -> int:
    """What ``retry`` and ``resend`` print; with ``--wait``, the attempt they caused."""
    if args.wait is None:
        ctx.emit(out, lambda: ctx.say(said))
        return Exit.OK
    t = ctx.t
    ctx.note(said)
    ctx.note(t("deliveries.waiting", seconds=f"{args.wait:g}", attempt=out["attempt"]))
    record = wait_outcome(ctx.audit(), {"delivery_id": out["delivery_id"]}, args.wait,
                          attempt=int(out["attempt"]))
    delivered = bool(record and record["kind"] == "delivery.attempted"
                     and record.get("outcome") == "delivered")
    timed_out = t("deliveries.timeout", seconds=f"{args.wait:g}", attempt=out["attempt"],
                  id=out["delivery_id"])
    ctx.emit({**out, "delivered": delivered, "record": record},
             lambda: show_attempt(ctx, record, timed_out))
    return Exit.OK if delivered else Exit.CHECK_FAILED


def list_failed(ctx: Ctx, args: argparse.Namespace) -> int:
    """Per endpoint (``--endpoint``), or across every endpoint: the API lists deliveries per
    endpoint, so without one the CLI walks the endpoint list and gathers them."""
    ingest = ctx.ingest()
    extra = {"status": args.status}
    if args.endpoint:
        page = pages(ingest, f"/v1/endpoints/{seg(args.endpoint)}/deliveries", args, extra)
    else:
        every = argparse.Namespace(limit=1000, after=None, all=True)
        items: list[Any] = []
        for ep in pages(ingest, "/v1/endpoints", every)["items"]:
            items += pages(ingest, f"/v1/endpoints/{seg(ep['id'])}/deliveries",
                           argparse.Namespace(limit=args.limit, after=None, all=args.all),
                           extra)["items"]
        page = {"items": items, "next": None}

    def human() -> None:
        t = ctx.t
        if not page["items"]:
            ctx.say(t("deliveries.none", status=status_text(t, args.status)))
            return
        rows = []
        for d in page["items"]:
            last = d["attempts"][-1] if d.get("attempts") else {}
            rows.append([d["delivery_id"], d["endpoint_id"], d["event_id"], d["event_type"],
                         d["reason"], output.short_time(d["failed_at"]), len(d["attempts"]),
                         last.get("status_code") or last.get("error")])
        ctx.say(output.table([t("col.delivery"), t("col.endpoint"), t("col.event"),
                              t("col.type"), t("col.reason"), t("col.failed_at"),
                              t("col.attempts"), t("col.last")], rows))
        more_hint(ctx, page)
        if args.status != "retried":
            ctx.note(t("deliveries.retry_hint"))

    ctx.emit(page, human)
    return Exit.OK


def retry(ctx: Ctx, args: argparse.Namespace) -> int:
    out = ctx.ingest().request("POST", f"/v1/deliveries/{seg(args.id)}/retry").data
    return _sent(ctx, args, out, ctx.t("deliveries.retried", id=out["delivery_id"],
                                       attempt=out["attempt"], endpoint=out["endpoint_id"]))


def recover(ctx: Ctx, args: argparse.Namespace) -> int:
    since = iso_utc(args.since)
    out = ctx.ingest().request("POST", f"/v1/endpoints/{seg(args.endpoint)}/recover",
                               body={"since": since}).data

    def human() -> None:
        ctx.say(ctx.t("deliveries.recovered", count=out["count"], endpoint=out["endpoint_id"],
                      since=since))
        for delivery_id in out["delivery_ids"]:
            ctx.say(f"  {delivery_id}")

    ctx.emit(out, human)
    return Exit.OK
