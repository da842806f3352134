"""``dihya events publish``: send one event (the guide's payload) to the ingest API."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from cli.commands import Commands
from cli.context import Ctx
from cli.errors import Exit, UsageError

MAX_INPUT = 16 * 1024 * 1024
"""Bytes read from the file or stdin at most (the API refuses far less: 256 KiB by default)."""


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("events", "help.events")
    p = cmds.command("publish", "help.events.publish", publish)
    p.add_argument("file", nargs="?", default="-", help=t("help.arg.event_file"))
    p.add_argument("--idempotency-key", metavar="KEY", help=t("help.arg.idempotency_key"))


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
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    resp = ctx.ingest().request("POST", "/v1/events", body=event, headers=headers)
    accepted = resp.data
    replayed = resp.headers.get("idempotent-replayed") == "true"

    def human() -> None:
        ctx.say(ctx.t("events.accepted", id=accepted["id"], type=accepted["event"]))
        if replayed:
            ctx.note(ctx.t("events.replayed"))

    ctx.emit(accepted, human)
    return Exit.OK
