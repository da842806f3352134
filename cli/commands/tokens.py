"""``dihya tokens``: issue, list and revoke API tokens (admin)."""

from __future__ import annotations

import argparse

from cli import output
from cli.client import seg
from cli.commands import Commands
from cli.commands.endpoints import more_hint, pages
from cli.context import Ctx
from cli.errors import Exit

ROLES = ("admin", "publisher", "auditor", "viewer", "tenant_admin", "tenant_viewer")


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("tokens", "help.tokens")

    p = cmds.command("create", "help.tokens.create", create)
    p.add_argument("--role", required=True, choices=ROLES, help=t("help.arg.role"))
    p.add_argument("--description", help=t("help.arg.description"))
    p.add_argument("--tenant", help=t("help.arg.tenant"))

    p = cmds.command("list", "help.tokens.list", list_)
    p.add_argument("--limit", type=int, default=100, help=t("help.arg.limit"))
    p.add_argument("--after", metavar="ID", help=t("help.arg.after"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))

    p = cmds.command("revoke", "help.tokens.revoke", revoke)
    p.add_argument("id", help=t("help.arg.token_id"))


def create(ctx: Ctx, args: argparse.Namespace) -> int:
    body = {"role": args.role}
    if args.description is not None:
        body["description"] = args.description
    if args.tenant is not None:
        body["tenant"] = args.tenant
    out = ctx.ingest().request("POST", "/v1/tokens", body=body).data

    def human() -> None:
        t = ctx.t
        ctx.say(t("tokens.created", id=out["id"], role=out["role"]))
        ctx.say(output.pairs([(t("field.token"), out["token"])]))
        ctx.note(t("tokens.once"))

    ctx.emit(out, human)
    return Exit.OK


def list_(ctx: Ctx, args: argparse.Namespace) -> int:
    page = pages(ctx.ingest(), "/v1/tokens", args)

    def human() -> None:
        t = ctx.t
        if not page["items"]:
            ctx.say(t("tokens.none"))
            return
        ctx.say(output.table(
            [t("col.id"), t("col.role"), t("col.tenant"), t("col.description"),
             t("col.created_at"), t("col.revoked_at")],
            [[k["id"], k["role"], k.get("tenant"), k.get("description"),
              output.short_time(k["created_at"]), output.short_time(k.get("revoked_at"))]
             for k in page["items"]]))
        more_hint(ctx, page)

    ctx.emit(page, human)
    return Exit.OK


def revoke(ctx: Ctx, args: argparse.Namespace) -> int:
    ctx.ingest().request("DELETE", f"/v1/tokens/{seg(args.id)}")
    ctx.emit({"id": args.id, "revoked": True},
             lambda: ctx.say(ctx.t("tokens.revoked", id=args.id)))
    return Exit.OK
