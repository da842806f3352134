"""Export formats of the audit log (pure): JSON Lines, CSV, and the GDPR subject export.

* **JSON Lines** (``application/x-ndjson``) is the exact format: one API record per line, the
  same object ``GET /v1/audit/records`` returns, so the hash chain re-verifies from the file
  alone (see :mod:`services.audit.decisions` for the canonical form).
* **CSV** (``text/csv``, RFC 4180 quoting, UTF-8, CRLF) is for spreadsheets: one column per
  record field, ``details`` and ``personal`` as JSON text, null as an empty cell. A text cell
  that starts with ``= + - @`` (or a tab / carriage return) is prefixed with ``'`` so that a
  spreadsheet does not run it as a formula — such values can come from a receiver's response
  (CSV injection). Re-verify the chain from JSON Lines, not CSV: CSV cannot tell null from
  empty text and the formula guard alters cells.
* **Subject export** (Art. 15 access / Art. 20 portability): one JSON document with every
  record about the subject, plus what Art. 15 asks for in plain terms: which events, when, for
  what purpose (event type), to which recipients (endpoint URLs), and the personal data stored.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from services.audit import decisions
from services.audit.decisions import QueryError, RecordQuery

Format = Literal["jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv")
CONTENT_TYPES: dict[Format, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}

EXPORT_PARAMS: tuple[str, ...] = (*decisions.FILTER_PARAMS, "since", "until", "format")
CSV_COLUMNS: tuple[str, ...] = (
    *decisions.RECORD_FIELDS, *decisions.SEALED_FIELDS, *decisions.VIEW_FIELDS, "prev_hash", "hash",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def parse_export(pairs: Iterable[tuple[str, str]]) -> tuple[RecordQuery, Format]:
    """The filters of ``/records`` (no ``limit`` / ``cursor``: an export has no pages) and the
    format; :class:`QueryError` names every bad parameter."""
    problems: list[dict[str, str]] = []
    rest: list[tuple[str, str]] = []
    fmt: str | None = None
    for name, value in pairs:
        if name == "format":
            if fmt is not None:
                problems.append({"field": "format", "message": "given more than once"})
            fmt = value
        elif name not in EXPORT_PARAMS:
            problems.append({"field": name, "message": "unknown parameter; expected one of: "
                                                       + ", ".join(EXPORT_PARAMS)})
        else:
            rest.append((name, value))
    if fmt is None:
        fmt = "jsonl"
    elif fmt not in FORMATS:
        problems.append({"field": "format", "message": f"must be one of: {', '.join(FORMATS)}"})
    try:
        query = decisions.parse_query(rest, page_limit=1)
    except QueryError as exc:
        problems += exc.fields
    if problems:
        raise QueryError(problems)
    return query, "csv" if fmt == "csv" else "jsonl"


def jsonl(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Records as JSON Lines (each line ends with ``\\n``)."""
    return b"".join(orjson.dumps(decisions.to_json(r)) + b"\n" for r in records)


def csv_header() -> bytes:
    return _csv_lines([list(CSV_COLUMNS)])


def csv_rows(records: Iterable[Mapping[str, Any]]) -> bytes:
    return _csv_lines([[_cell(record.get(name)) for name in CSV_COLUMNS]
                       for record in records])


def _csv_lines(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return decisions.iso(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


# --------------------------------------------------------------------------- subject export

SUBJECT_EXPORT_TYPE = "dihya.audit.subject_export.v1"


@dataclass
class SubjectSummary:
    """What Art. 15 asks for, gathered while the subject's records stream past (memory grows
    with the subject's events, not with the log)."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipients: set[str] = field(default_factory=set)

    def feed(self, record: Mapping[str, Any]) -> None:
        event_id = record.get("event_id")
        if not event_id:
            return
        event = self.events.setdefault(event_id, {
            "event_id": event_id, "event_type": None, "first_recorded_at": None,
            "deliveries": [],
        })
        if event["event_type"] is None and record.get("event_type"):
            event["event_type"] = record["event_type"]
        when = decisions.iso(record["occurred_at"])
        if event["first_recorded_at"] is None or when < event["first_recorded_at"]:
            event["first_recorded_at"] = when
        if record.get("url") and record.get("kind") in ("delivery.attempted",
                                                         "delivery.dead_lettered"):
            self.recipients.add(record["url"])
            event["deliveries"].append({
                "kind": record["kind"], "at": when, "endpoint_id": record.get("endpoint_id"),
                "url": record["url"], "delivery_id": record.get("delivery_id"),
                "attempt": record.get("attempt"), "outcome": record.get("outcome"),
                "status_code": record.get("status_code"),
            })

    def tail(self) -> bytes:
        """The end of the document: closes ``records`` and adds the summary."""
        events = sorted(self.events.values(), key=lambda e: e["first_recorded_at"] or "")
        return (b'],"events":' + orjson.dumps(events) + b',"recipients":'
                + orjson.dumps(sorted(self.recipients)) + b"}")


def subject_head(subject: str, generated_at: datetime) -> bytes:
    """The start of the subject export document, up to the opening of ``records``."""
    head = orjson.dumps({"type": SUBJECT_EXPORT_TYPE, "subject": subject,
                         "generated_at": decisions.iso(generated_at)})
    return head[:-1] + b',"records":['


def subject_records(records: Iterable[Mapping[str, Any]], first: bool) -> bytes:
    """Records as the comma-separated items of the ``records`` array."""
    parts = [orjson.dumps(decisions.to_json(r)) for r in records]
    if not parts:
        return b""
    return (b"" if first else b",") + b",".join(parts)
