"""``dihya event-types list``: the event types ingest knows (its event-type catalog), each
described in the user's language, and what ingest does with a type it does not know."""

from __future__ import annotations

import argparse
from typing import Any

from cli import output
from cli.commands import Commands
from cli.context import Ctx
from cli.errors import Exit
from cli.i18n import DEFAULT


def register(root: Commands) -> None:
    cmds = root.group("event-types", "help.event_types")
    cmds.command("list", "help.event_types.list", list_)


def described(item: dict[str, Any], lang: str) -> str:
    """The type's description in ``lang`` (English if the server has none in it)."""
    texts = item.get("description") or {}
    return str(texts.get(lang) or texts.get(DEFAULT) or "")


def unreviewed(item: dict[str, Any], lang: str) -> bool:
    """Do the type's texts in ``lang`` await a native speaker's review (the catalog says)?"""
    return lang in (item.get("awaiting_native_review") or ())


def list_(ctx: Ctx, args: argparse.Namespace) -> int:
    catalog = ctx.ingest().get("/v1/event-types")

    def human() -> None:
        t = ctx.t
        items = catalog["items"]
        if not items:
            ctx.say(t("event_types.none"))
        else:
            ctx.say(output.table(
                [t("col.type"), t("col.description"), t("col.placeholders"),
                 t("col.emitted_by")],
                [[i["event"], described(i, t.lang) + (" *" if unreviewed(i, t.lang) else ""),
                  i["placeholders"],
                  t("event_types.by_dihya") if i["internal"] else t("event_types.by_platform")]
                 for i in items]))
            if any(unreviewed(i, t.lang) for i in items):
                ctx.note(t("event_types.unreviewed"))
        policy = catalog["unknown_event_types"]
        ctx.note(t("event_types.unknown_refuse" if policy == "refuse"
                   else "event_types.unknown_accept"))

    ctx.emit(catalog, human)
    return Exit.OK
