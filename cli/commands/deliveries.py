"""``dihya deliveries``: the dead-letter store — list failed deliveries, retry one, recover an
endpoint's deliveries since a time."""

from __future__ import annotations

import argparse
from typing import Any

from cli import output
from cli.client import seg
from cli.commands import Commands, value
from cli.commands.endpoints import more_hint, pages, status_text
from cli.context import Ctx
from cli.errors import Exit
from cli.values import iso_utc, parse_when


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("deliveries", "help.deliveries")

    p = cmds.command("list-failed", "help.deliveries.list", list_failed)
    p.add_argument("--endpoint", metavar="ID", help=t("help.arg.endpoint_filter"))
    p.add_argument("--status", choices=("failed", "held", "retried"), default="failed",
                   help=t("help.arg.delivery_status"))
    p.add_argument("--limit", type=int, default=100, help=t("help.arg.limit"))
    p.add_argument("--after", metavar="ID", help=t("help.arg.after"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))

    p = cmds.command("retry", "help.deliveries.retry", retry)
    p.add_argument("id", help=t("help.arg.delivery_id"))

    p = cmds.command("recover", "help.deliveries.recover", recover)
    p.add_argument("endpoint", metavar="ENDPOINT_ID", help=t("help.arg.endpoint_id"))
    p.add_argument("--since", required=True, type=value(t, parse_when, "hint.when"), metavar="WHEN",
                   help=t("help.arg.since"))


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
    ctx.emit(out, lambda: ctx.say(ctx.t("deliveries.retried", id=out["delivery_id"],
                                        attempt=out["attempt"], endpoint=out["endpoint_id"])))
    return Exit.OK


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
