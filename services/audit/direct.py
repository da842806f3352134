"""The batch append on SQLite through plain ``sqlite3`` (see :class:`shared.db.DirectSQLite`).

Why: through SQLAlchemy's async engine, storing a batch of facts cost about 100 µs of CPU per
fact here (statement compilation and parameter processing per row, greenlet and thread hops
for each of the batch's six statements); the same transaction as plain SQL on the writer
thread costs 60 µs, most of it the hash chain and sealing — and audit stores two facts per
delivery.

The steps and their order are :meth:`AuditStore._append`'s, with the same pure decisions
(:func:`decisions.fresh_facts`, :func:`sealing.plan`, :func:`decisions.append`); the rows are
written as SQLAlchemy writes them on SQLite (datetimes as UTC wall-clock text, details as
``json.dumps``), so the engine reads, verifies and exports them like its own — a test checks
the two paths store identical rows. PostgreSQL, erasure and purge stay on the engine.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from services.audit import decisions
from services.audit.decisions import AnyFact, Appended, Record, sealing
from shared.db import sqlite_timestamp

IN_CHUNK = 500
"""Most values in one ``IN (…)`` list (SQLite allows 32,766 variables; this keeps it short)."""

RECORD_COLUMNS = (
    "seq", "fact_id", "kind", "occurred_at", "recorded_at", "service", "actor", "event_id",
    "event_type", "endpoint_id", "delivery_id", "attempt", "url", "outcome", "status_code",
    "duration_ms", "error", "reason", "subject", "details", "prev_hash", "hash",
    "subject_ref", "sealed", "tenant",
)
_INSERT = (f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) "  # noqa: S608 (constants)
           f"VALUES ({', '.join('?' * len(RECORD_COLUMNS))})")


def append(conn: sqlite3.Connection, facts: Sequence[AnyFact], now: datetime, *,
           index_key: bytes, paths: tuple[sealing.Path, ...]) -> Appended:
    """Store ``facts`` chained after the head, inside the caller's write transaction."""
    existing = _existing_ids(conn, {f.id for f in facts})
    fresh = decisions.fresh_facts(facts, existing)
    seals = _seals(conn, fresh, now, index_key, paths) if fresh else {}
    head_seq, head_hash = _head(conn)
    attempts = _attempts_recorded(conn, fresh)
    result = decisions.append(facts, existing_ids=existing, head_seq=head_seq,
                             head_hash=head_hash, recorded_at=now, seals=seals, paths=paths,
                             attempts_recorded=attempts)
    if result.records:
        conn.executemany(_INSERT, [_row(r) for r in result.records])
    return result


def _row(record: Record) -> tuple[Any, ...]:
    values = dict(record, fact_id=record["id"])
    for name in ("occurred_at", "recorded_at"):
        values[name] = sqlite_timestamp(values[name])
    values["details"] = json.dumps(values["details"])  # SQLAlchemy's JSON type on SQLite
    return tuple(values.get(name) for name in RECORD_COLUMNS)


def _select_in(conn: sqlite3.Connection, sql: str, values: Iterable[str]
               ) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` for all of ``values``, asked in chunks: its ``{}`` becomes the
    chunk's placeholders (values are always bound, never formatted in)."""
    ordered = sorted(values)
    for start in range(0, len(ordered), IN_CHUNK):
        chunk = ordered[start:start + IN_CHUNK]
        yield from conn.execute(sql.format(", ".join("?" * len(chunk))), chunk)


def _existing_ids(conn: sqlite3.Connection, ids: set[str]) -> set[str]:
    return {row[0] for row in _select_in(
        conn, "SELECT fact_id FROM records WHERE fact_id IN ({})", ids)}


def _attempts_recorded(conn: sqlite3.Connection, fresh: Sequence[AnyFact]
                       ) -> set[decisions.AttemptKey]:
    """As :meth:`AuditStore._attempts_recorded`: the attempts of ``fresh`` already stored."""
    wanted = {key for key in map(decisions.attempt_key, fresh) if key is not None}
    if not wanted:
        return set()
    rows = _select_in(conn, "SELECT delivery_id, attempt FROM records "
                      "WHERE kind = 'delivery.attempted' AND delivery_id IN ({})",
                      {delivery for delivery, _ in wanted})
    return {(row[0], row[1]) for row in rows} & wanted


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    """As :meth:`AuditStore._head`: the newest record, else the newest checkpoint."""
    row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        row = conn.execute(
            "SELECT last_seq, last_hash FROM checkpoints ORDER BY last_seq DESC LIMIT 1"
        ).fetchone()
    return (int(row[0]), row[1]) if row is not None else (0, decisions.GENESIS_HASH)


def _seals(conn: sqlite3.Connection, fresh: Sequence[AnyFact], now: datetime,
           index_key: bytes, paths: tuple[sealing.Path, ...]) -> dict[str, sealing.Sealing]:
    """As :meth:`AuditStore._seals`."""
    needed = sealing.links_needed(fresh, paths)
    decided = sealing.plan(fresh, paths, _stored_links(conn, needed) if needed else {})
    if not decided:
        return {}
    subjects = {d.subject for d in decided.values() if isinstance(d, sealing.Own)}
    refs = {d.ref for d in decided.values() if isinstance(d, sealing.Linked)}
    return sealing.seals_for(decided, _keys_for_subjects(conn, subjects, now, index_key),
                             _keys_for_refs(conn, refs))


def _stored_links(conn: sqlite3.Connection, event_ids: Iterable[str]) -> dict[str, str]:
    """Event id → pseudonym of the subject its earliest sealed record is about."""
    links: dict[str, tuple[int, str]] = {}
    for event_id, ref, first in _select_in(
            conn, "SELECT event_id, subject_ref, min(seq) FROM records WHERE event_id IN ({}) "
            "AND subject_ref IS NOT NULL GROUP BY event_id, subject_ref", event_ids):
        if event_id not in links or first < links[event_id][0]:
            links[event_id] = (first, ref)
    return {event_id: ref for event_id, (_, ref) in links.items()}


def _keys_for_subjects(conn: sqlite3.Connection, subjects: set[str], now: datetime,
                       index_key: bytes) -> dict[str, tuple[str, bytes]]:
    """Subject id → (pseudonym, key), creating both for a subject seen the first time."""
    lookups = {sealing.lookup_hash(index_key, s): s for s in subjects}
    found: dict[str, tuple[str, bytes]] = {}
    for ref, lookup, key in _select_in(
            conn, "SELECT ref, lookup, key FROM subject_keys WHERE lookup IN ({})", lookups):
        found[lookups[lookup]] = (ref, sealing.decode_key(key, "key"))
    created = sealing.keys_to_create(lookups, found)
    if created:
        conn.executemany(
            "INSERT INTO subject_keys (ref, lookup, key, created_at) VALUES (?, ?, ?, ?)",
            [(ref, lookup, sealing.encode_key(key), sqlite_timestamp(now))
             for ref, lookup, key in created.values()])
    return found | {subject: (ref, key) for subject, (ref, _, key) in created.items()}


def _keys_for_refs(conn: sqlite3.Connection, refs: Iterable[str]) -> Mapping[str, bytes]:
    """Pseudonym → key, for the pseudonyms whose key still exists (not erased)."""
    return {ref: sealing.decode_key(key, "key") for ref, key in _select_in(
        conn, "SELECT ref, key FROM subject_keys WHERE ref IN ({})", refs)}
