"""``dihya tenants``: create, list, show, export and offboard tenants (admin)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from cli import output
from cli.client import seg
from cli.commands import Commands, confirm
from cli.commands.audit import target
from cli.commands.endpoints import more_hint, pages
from cli.context import Ctx
from cli.errors import Exit, UnreachableError


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("tenants", "help.tenants")

    p = cmds.command("create", "help.tenants.create", create)
    p.add_argument("name", help=t("help.arg.tenant_name"))
    p.add_argument("--external-id", metavar="ID", help=t("help.arg.external_id"))

    p = cmds.command("list", "help.tenants.list", list_)
    p.add_argument("--limit", type=int, default=100, help=t("help.arg.limit"))
    p.add_argument("--after", metavar="ID", help=t("help.arg.after"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))

    p = cmds.command("show", "help.tenants.show", show)
    p.add_argument("id", help=t("help.arg.tenant_ref"))

    p = cmds.command("export", "help.tenants.export", export)
    p.add_argument("id", help=t("help.arg.tenant_ref"))
    p.add_argument("-o", "--output", required=True, metavar="FILE", help=t("help.arg.output"))

    p = cmds.command("delete", "help.tenants.delete", delete)
    p.add_argument("id", help=t("help.arg.tenant_ref"))
    p.add_argument("-y", "--yes", action="store_true", help=t("help.arg.yes"))


def _pairs(ctx: Ctx, tenant: dict[str, Any]) -> list[tuple[str, Any]]:
    t = ctx.t
    return [(t("col.id"), tenant["id"]), (t("col.name"), tenant["name"]),
            (t("col.external_id"), tenant.get("external_id")),
            (t("col.created_at"), output.short_time(tenant["created_at"]))]


def create(ctx: Ctx, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.external_id is not None:
        body["external_id"] = args.external_id
    out = ctx.ingest().request("POST", "/v1/tenants", body=body).data

    def human() -> None:
        ctx.say(ctx.t("tenants.created", id=out["id"]))
        ctx.say(output.pairs(_pairs(ctx, out)))

    ctx.emit(out, human)
    return Exit.OK


def list_(ctx: Ctx, args: argparse.Namespace) -> int:
    page = pages(ctx.ingest(), "/v1/tenants", args)

    def human() -> None:
        t = ctx.t
        if not page["items"]:
            ctx.say(t("tenants.none"))
            return
        ctx.say(output.table(
            [t("col.id"), t("col.name"), t("col.external_id"), t("col.created_at")],
            [[x["id"], x["name"], x.get("external_id"), output.short_time(x["created_at"])]
             for x in page["items"]]))
        more_hint(ctx, page)

    ctx.emit(page, human)
    return Exit.OK


def show(ctx: Ctx, args: argparse.Namespace) -> int:
    tenant = ctx.ingest().get(f"/v1/tenants/{seg(args.id)}")
    ctx.emit(tenant, lambda: ctx.say(output.pairs(_pairs(ctx, tenant))))
    return Exit.OK


def delete(ctx: Ctx, args: argparse.Namespace) -> int:
    confirm(ctx, args.yes, ctx.t("tenants.confirm_delete", id=args.id))
    out = ctx.ingest().request("DELETE", f"/v1/tenants/{seg(args.id)}").data
    ctx.emit(out, lambda: ctx.say(ctx.t("tenants.deleted", id=out["id"],
                                        endpoints=out["endpoints"],
                                        tokens=out["tokens_revoked"])))
    return Exit.OK


def export(ctx: Ctx, args: argparse.Namespace) -> int:
    """One JSON Lines file with all Dihya holds of a tenant: ingest's export (the tenant, its
    endpoints, deliveries and logged events), then the audit service's records of the tenant,
    each as ``{"type": "audit_record", "record": {…}}`` (the record as exported, so its hash
    still checks). Ingest is read first; if either part fails, no file is left."""
    ingest, audit = ctx.ingest(), ctx.audit()
    tenant: str | None = None
    lines = records = size = 0
    with target(ctx, args.output) as fh:
        with ingest.stream(f"/v1/tenants/{seg(args.id)}/export") as (_, body):
            for line in lines_of(body):
                tenant = tenant or str(orjson.loads(line)["id"])  # the first: the tenant
                fh.write(line + b"\n")
                lines, size = lines + 1, size + len(line) + 1
        if tenant is None:
            raise UnreachableError("ingest", ingest.base_url, "an empty tenant export",
                                   cut=True)
        with audit.stream("/v1/audit/export", [("tenant", tenant), ("format", "jsonl")]
                          ) as (_, body):
            for line in lines_of(body):
                wrapped = audit_record_line(line)
                fh.write(wrapped)
                lines, records, size = lines + 1, records + 1, size + len(wrapped)
    out = {"path": args.output, "tenant": tenant, "lines": lines, "audit_records": records,
           "bytes": size}
    ctx.emit(out, lambda: ctx.note(ctx.t("tenants.exported", id=tenant, lines=lines,
                                         records=records, size=output.human_bytes(size),
                                         path=args.output)))
    return Exit.OK


def lines_of(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of a streamed JSON Lines body (without their newline), whatever
    its chunking."""
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from (part for part in parts if part.strip())
    if rest.strip():
        yield rest


def audit_record_line(record: bytes) -> bytes:
    """An audit export's line as a line of the tenant's export (the record's bytes as sent)."""
    return b'{"type":"audit_record","record":' + record.strip() + b"}\n"
