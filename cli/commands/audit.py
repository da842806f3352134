"""``dihya audit``: query, export (streamed to a file, with a progress bar) and verify the audit
log; export or erase what it holds about one data subject (GDPR); run a retention purge."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from cli import output
from cli.client import Client, seg
from cli.commands import Commands, confirm, value
from cli.context import Ctx
from cli.errors import Exit, UnreachableError, UsageError
from cli.values import iso_utc, parse_when
from shared import anchor  # the offline verifier: stdlib, orjson and cryptography only

FILTERS = ("event_id", "event_type", "endpoint_id", "delivery_id", "kind", "outcome", "subject",
           "tenant")
"""The audit API's filter parameters (``--event-id`` … on the command line)."""


def register(root: Commands) -> None:
    t = root.t
    cmds = root.group("audit", "help.audit")

    p = cmds.command("query", "help.audit.query", query)
    _filters(p, root)
    p.add_argument("--limit", type=int, default=100, help=t("help.arg.limit"))
    p.add_argument("--cursor", help=t("help.arg.cursor"))
    p.add_argument("--all", action="store_true", help=t("help.arg.all"))

    p = cmds.command("export", "help.audit.export", export)
    _filters(p, root)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help=t("help.arg.output"))
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help=t("help.arg.format"))
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help=t("help.arg.progress"))
    bar.add_argument("--no-progress", dest="progress", action="store_false",
                     help=t("help.arg.no_progress"))

    p = cmds.command("verify", "help.audit.verify", verify)
    p.add_argument("--heads", metavar="FILE", help=t("help.arg.heads"))
    p.add_argument("--public-key", metavar="KEY", help=t("help.arg.public_key"))
    source = p.add_mutually_exclusive_group()
    source.add_argument("--export", metavar="FILE", help=t("help.arg.verify_export"))
    source.add_argument("--url", metavar="URL", help=t("help.arg.verify_url"))

    p = cmds.command("subject-export", "help.audit.subject_export", subject_export)
    p.add_argument("subject", help=t("help.arg.subject_id"))
    p.add_argument("-o", "--output", required=True, metavar="FILE", help=t("help.arg.output"))

    p = cmds.command("erase-subject", "help.audit.erase", erase)
    p.add_argument("subject", help=t("help.arg.subject_id"))
    p.add_argument("-y", "--yes", action="store_true", help=t("help.arg.yes"))

    p = cmds.command("purge", "help.audit.purge", purge)
    p.add_argument("-y", "--yes", action="store_true", help=t("help.arg.yes"))


def _filters(p: argparse.ArgumentParser, root: Commands) -> None:
    t = root.t
    for name in FILTERS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=t(f"help.filter.{name}"))
    when = value(t, parse_when, "hint.when")
    p.add_argument("--since", type=when, metavar="WHEN", help=t("help.arg.audit_since"))
    p.add_argument("--until", type=when, metavar="WHEN", help=t("help.arg.audit_until"))


def filter_query(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The API query parameters the filter options ask for."""
    out = [(name, getattr(args, name)) for name in FILTERS if getattr(args, name)]
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            out.append((name, iso_utc(getattr(args, name))))
    return out


def query(ctx: Ctx, args: argparse.Namespace) -> int:
    audit = ctx.audit()
    records: list[Any] = []
    cursor = args.cursor
    while True:
        params = [*filter_query(args), ("limit", str(args.limit))]
        if cursor:
            params.append(("cursor", cursor))
        page = audit.get("/v1/audit/records", params)
        records += page["records"]
        cursor = page.get("next_cursor")
        if not args.all or not cursor:
            break
    result = {"records": records, "next_cursor": cursor}

    def human() -> None:
        t = ctx.t
        if not records:
            ctx.say(t("audit.none"))
            return
        ctx.say(output.table(
            [t("col.seq"), t("col.time"), t("col.kind"), t("col.service"), t("col.event"),
             t("col.endpoint"), t("col.outcome"), t("col.status"), t("col.ms")],
            [[r["seq"], output.short_time(r["occurred_at"]), r["kind"], r["service"],
              r.get("event_id"), r.get("endpoint_id"), r.get("outcome"), r.get("status_code"),
              r.get("duration_ms")] for r in records]))
        if cursor:
            ctx.note(t("audit.more", cursor=cursor))

    ctx.emit(result, human)
    return Exit.OK


# -- export -----------------------------------------------------------------------------------

_JSONL_SEQ = re.compile(rb'"seq":(\d+)')
_CSV_SEQ = re.compile(rb"^(\d+),")


class Tally:
    """Follows a streamed export: records seen so far and the seq of the last one.

    The export is ordered by seq and stops at the head seq the server announced, so
    ``(seq - first) / (head - first)`` is an honest progress fraction even for a filtered
    export whose size nobody knows in advance."""

    def __init__(self, fmt: str) -> None:
        self.pattern = _CSV_SEQ if fmt == "csv" else _JSONL_SEQ
        self.skip_header = fmt == "csv"
        self.records = 0
        self.last_seq = 0
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if self.skip_header:
                self.skip_header = False
                continue
            match = self.pattern.search(line) if self.pattern is _JSONL_SEQ else \
                self.pattern.match(line)
            if match:
                self.records += 1
                self.last_seq = int(match.group(1))

    def fraction(self, first: int | None, head: int | None) -> float | None:
        if not head or first is None:
            return None
        if head <= first:
            return 1.0 if self.last_seq else 0.0
        return (self.last_seq - first + 1) / (head - first + 1) if self.last_seq else 0.0


@contextlib.contextmanager
def target(ctx: Ctx, path: str) -> Iterator[IO[bytes]]:
    """Write to ``path`` through a temporary file renamed at the end, so a transfer cut short
    leaves no file that looks complete; ``-`` is standard output."""
    if path == "-":
        buffer = getattr(ctx.out, "buffer", None)
        if buffer is None:
            raise UsageError(ctx.t("export.no_binary_stdout"))
        yield buffer
        buffer.flush()
        return
    final = Path(path)
    part = final.with_name(f".{final.name}.part-{os.getpid()}")
    try:
        fh = part.open("wb")
    except OSError as exc:
        raise UsageError(ctx.t("export.cannot_write", path=path, error=exc.strerror or exc)) \
            from None
    try:
        with fh:
            yield fh
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)


def _first_seq(audit: Client, params: list[tuple[str, str]]) -> int | None:
    page = audit.get("/v1/audit/records", [*params, ("limit", "1")])
    return int(page["records"][0]["seq"]) if page["records"] else None


def _show_progress(ctx: Ctx, wanted: bool | None) -> bool:
    if wanted is not None:
        return wanted
    isatty = getattr(ctx.err, "isatty", None)
    return bool(isatty and isatty()) and not ctx.json


def export(ctx: Ctx, args: argparse.Namespace) -> int:
    audit, t = ctx.audit(), ctx.t
    params = filter_query(args)
    first = _first_seq(audit, params)
    tally = Tally(args.format)
    done = 0
    bar = output.Progress(ctx.err, lambda n: t("export.progress", size=output.human_bytes(n),
                                               records=tally.records)) \
        if _show_progress(ctx, args.progress) else None
    head: int | None = None
    with target(ctx, args.output) as fh, \
            audit.stream("/v1/audit/export", [*params, ("format", args.format)]) as (hdrs, body):
        head = _head(hdrs)
        for chunk in body:
            fh.write(chunk)
            done += len(chunk)
            tally.feed(chunk)
            if bar is not None:
                bar.update(tally.fraction(first, head), done)
    if bar is not None:
        bar.finish(1.0, done)
    result = {"path": args.output, "format": args.format, "records": tally.records,
              "bytes": done, "head_seq": head}
    ctx.emit(result, lambda: ctx.note(t("export.done", records=tally.records,
                                        size=output.human_bytes(done), path=args.output,
                                        head=head if head is not None else "-")))
    return Exit.OK


def _head(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("x-dihya-audit-head-seq", "")
    return int(raw) if raw.isdigit() else None


def subject_export(ctx: Ctx, args: argparse.Namespace) -> int:
    """One document with all Dihya holds about the subject: the audit service's export, and in
    it ``payloads``, the event payloads ingest's message log still retains (asked first, so a
    failure there writes no file)."""
    payloads = ctx.ingest().get(f"/v1/subjects/{seg(args.subject)}/export")["events"]
    done = 0
    audit = ctx.audit()
    try:
        with target(ctx, args.output) as fh, \
                audit.stream(f"/v1/audit/subjects/{seg(args.subject)}/export") as (_, body):
            for chunk in with_payloads(body, payloads):
                fh.write(chunk)
                done += len(chunk)
    except ValueError as exc:  # not the document audit sends: as if cut short, no file kept
        raise UnreachableError("audit", audit.base_url, str(exc), cut=True) from None
    ctx.emit({"path": args.output, "bytes": done, "payloads": len(payloads)},
             lambda: ctx.note(ctx.t("export.subject_done", size=output.human_bytes(done),
                                    path=args.output)))
    return Exit.OK


def with_payloads(chunks: Iterable[bytes], payloads: list[Any]) -> Iterator[bytes]:
    """The audit service's subject export (one JSON object, streamed) with a ``payloads``
    member added before its closing brace: the chunks pass through, holding back only their
    last bytes. A document that does not end with ``}`` is refused (``ValueError``)."""
    held = b""  # from the last chunk with more than white space on
    for chunk in chunks:
        if chunk.strip():
            if held:
                yield held
            held = chunk
        else:
            held += chunk
    body = held.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("the audit service's subject export is not one JSON object")
    yield body[:-1] + b',"payloads":' + orjson.dumps(payloads) + b"}"


def erase(ctx: Ctx, args: argparse.Namespace) -> int:
    confirm(ctx, args.yes, ctx.t("audit.confirm_erase", subject=args.subject))
    out = ctx.audit().request("POST", f"/v1/audit/subjects/{seg(args.subject)}/erasure").data

    def human() -> None:
        ctx.say(ctx.t("audit.erased", records=out["records"], seq=out["record_seq"]))
        if out.get("legacy_records"):
            ctx.note(ctx.t("audit.erase_legacy", count=out["legacy_records"]))

    ctx.emit(out, human)
    return Exit.OK


def purge(ctx: Ctx, args: argparse.Namespace) -> int:
    confirm(ctx, args.yes, ctx.t("audit.confirm_purge"))
    out = ctx.audit().request("POST", "/v1/audit/retention/purge").data
    ctx.emit(out, lambda: ctx.say(ctx.t("audit.purged", deleted=out["deleted"],
                                        cutoff=output.short_time(out["cutoff"]))))
    return Exit.OK


# -- verify -----------------------------------------------------------------------------------

def verify(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.heads is not None or args.public_key is not None:
        return verify_offline(ctx, args)
    if args.export is not None or args.url is not None:
        raise UsageError(ctx.t("verify.needs_heads"))
    report = ctx.audit().get("/v1/audit/verify")

    def human() -> None:
        t = ctx.t
        if report["ok"]:
            ctx.say("✔ " + t("verify.ok", records=report["records"]))
        else:
            ctx.say("✘ " + t("verify.broken", seq=report.get("first_bad_seq"),
                             problem=report.get("problem"), detail=report.get("detail") or ""))
        ctx.say(output.pairs([(t("field.head_hash"), report.get("head_hash"))]))
        checkpoint = report.get("checkpoint")
        if checkpoint:
            ctx.say(t("verify.checkpoint", seq=checkpoint.get("last_seq"),
                      at=output.short_time(checkpoint.get("at")),
                      signature=t("verify.signature_ok") if checkpoint.get("signature_ok")
                      else t("verify.signature_bad")))
        head = report.get("signed_head")
        if head:
            ctx.say(t("verify.signed_head_held" if head.get("matches")
                      else "verify.signed_head_lost", seq=head.get("seq"),
                      at=output.short_time(head.get("time"))))
        ctx.note(t("verify.head_hint"))

    ctx.emit(report, human)
    return Exit.OK if report["ok"] else Exit.CHECK_FAILED


def verify_offline(ctx: Ctx, args: argparse.Namespace) -> int:
    """Check an export (a file, or the API's) against the signed heads with the public key
    alone: nothing the service or its database says is trusted (``shared.anchor``)."""
    t = ctx.t
    if args.heads is None or args.public_key is None:
        raise UsageError(t("verify.needs_heads"))
    try:
        public = anchor.public_key_from_text(_text_or_file(args.public_key))
    except (OSError, ValueError) as exc:
        raise UsageError(t("verify.bad_public_key", error=exc)) from None
    heads = list(anchor.parse_lines(_lines(ctx, args.heads)))
    verifier = anchor.OfflineVerifier(heads, public)
    if args.export is not None:
        with _opened(ctx, args.export) as fh:
            for record in anchor.parse_lines(fh):
                verifier.feed(record)
    else:
        client = ctx.audit() if args.url is None else Client(
            "audit", args.url, ctx.settings.token, ctx.settings.timeout)
        with client.stream("/v1/audit/export", [("format", "jsonl")]) as (_, body):
            for record in anchor.parse_lines(_split(body)):
                verifier.feed(record)
    verdict = verifier.verdict()

    def human() -> None:
        newest = verdict.newest_head
        if verdict.ok and newest is not None:
            ctx.say("✔ " + t("verify.anchored", records=verdict.records, heads=verdict.heads,
                             seq=newest["seq"], at=output.short_time(newest["time"])))
        else:
            ctx.say("✘ " + t("verify.tampered", seq=verdict.seq if verdict.seq is not None
                             else "-", kind=verdict.kind, detail=verdict.detail))

    ctx.emit(verdict.as_json(), human)
    return Exit.OK if verdict.ok else Exit.CHECK_FAILED


def _text_or_file(value: str) -> str:
    """A key given inline (base64, PEM) or as the path of a file holding it."""
    path = Path(value)
    return path.read_text() if path.is_file() else value


def _lines(ctx: Ctx, path: str) -> list[bytes]:
    """The lines of a heads file, or of every ``*.jsonl`` of a directory in name order (the
    daily files the service writes there sort by date)."""
    target = Path(path)
    files = sorted(target.glob("*.jsonl")) if target.is_dir() else [target]
    lines: list[bytes] = []
    for item in files:
        try:
            lines += item.read_bytes().splitlines()
        except OSError as exc:
            raise UsageError(ctx.t("verify.cannot_read", path=item,
                                   error=exc.strerror or exc)) from None
    return lines


@contextlib.contextmanager
def _opened(ctx: Ctx, path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        buffer = getattr(ctx.stdin, "buffer", None)
        if buffer is None:
            raise UsageError(ctx.t("verify.cannot_read", path=path, error="not binary"))
        yield buffer
        return
    try:
        fh = Path(path).open("rb")  # noqa: SIM115 - closed by the `with` below; the try is for open alone
    except OSError as exc:
        raise UsageError(ctx.t("verify.cannot_read", path=path,
                               error=exc.strerror or exc)) from None
    with fh:
        yield fh


def _split(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a streamed body, whatever the chunk boundaries."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
