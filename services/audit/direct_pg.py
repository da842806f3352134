"""The batch append on PostgreSQL through plain ``asyncpg`` (see :class:`shared.db.DirectPostgres`).

Why: through SQLAlchemy's async engine a batch cost the pool's pre-ping (three round trips),
``BEGIN``, the advisory lock, ``SET LOCAL``, six or seven statements each compiled, bound row by
row and run through greenlet switches, and a new prepared statement on the server for every
``IN (…)`` list of a length not seen before. Here each statement is constant text over arrays
(``= ANY($1)``, ``unnest``), prepared once per connection, and the records go in one statement.

The steps, their order and the lock are :meth:`AuditStore._append`'s and
:meth:`AuditStore._writing`'s (the caller takes the advisory lock first and reads the time
after it), with the same pure decisions (:func:`decisions.fresh_facts`, :func:`sealing.plan`,
:func:`decisions.append`); the rows are written as SQLAlchemy writes them on PostgreSQL (details
as ``json.dumps`` text: ``json`` keeps the text as given), so the engine reads, verifies and
exports them like its own — a test checks the two paths store identical rows. Erasure, purge
and every read stay on the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from services.audit import decisions
from services.audit.decisions import AnyFact, Appended, Record, sealing
from services.audit.direct import RECORD_COLUMNS

_TYPES = {
    "seq": "int8", "attempt": "int8", "status_code": "int8", "duration_ms": "float8",
    "occurred_at": "timestamptz", "recorded_at": "timestamptz",
}
"""Array types of the record columns that are not text (``details`` is cast to json)."""

_ARRAYS = ", ".join(f"${n}::{_TYPES.get(name, 'text')}[]"
                   for n, name in enumerate(RECORD_COLUMNS, 1))
_VALUES = ", ".join("details::json" if name == "details" else name for name in RECORD_COLUMNS)
_INSERT = (f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) "  # noqa: S608 (constants)
           f"SELECT {_VALUES} FROM unnest({_ARRAYS}) AS r({', '.join(RECORD_COLUMNS)})")
"""Every record of a batch in one statement (no ``ON CONFLICT``: see :meth:`AuditStore.append`)."""


async def append(conn: Any, facts: Sequence[AnyFact], now: datetime, *, index_key: bytes,
                 paths: tuple[sealing.Path, ...]) -> Appended:
    """Store ``facts`` chained after the head, inside the caller's transaction (which holds
    the chain's advisory lock)."""
    existing = await _existing_ids(conn, {f.id for f in facts})
    fresh = decisions.fresh_facts(facts, existing)
    seals = await _seals(conn, fresh, now, index_key, paths) if fresh else {}
    head_seq, head_hash = await _head(conn)
    attempts = await _attempts_recorded(conn, fresh)
    result = decisions.append(facts, existing_ids=existing, head_seq=head_seq,
                             head_hash=head_hash, recorded_at=now, seals=seals, paths=paths,
                             attempts_recorded=attempts)
    if result.records:
        rows = [_row(r) for r in result.records]
        await conn.execute(_INSERT, *(list(column) for column in zip(*rows, strict=True)))
    return result


def _row(record: Record) -> tuple[Any, ...]:
    values = dict(record, fact_id=record["id"])
    values["details"] = json.dumps(values["details"])  # SQLAlchemy's JSON type
    return tuple(values.get(name) for name in RECORD_COLUMNS)


async def _existing_ids(conn: Any, ids: set[str]) -> set[str]:
    return {row[0] for row in await conn.fetch(
        "SELECT fact_id FROM records WHERE fact_id = ANY($1::text[])", sorted(ids))}


async def _attempts_recorded(conn: Any, fresh: Sequence[AnyFact]
                             ) -> set[decisions.AttemptKey]:
    """As :meth:`AuditStore._attempts_recorded`: the attempts of ``fresh`` already stored."""
    wanted = {key for key in map(decisions.attempt_key, fresh) if key is not None}
    if not wanted:
        return set()
    rows = await conn.fetch(
        "SELECT delivery_id, attempt FROM records "
        "WHERE kind = 'delivery.attempted' AND delivery_id = ANY($1::text[])",
        sorted({delivery for delivery, _ in wanted}))
    return {(row[0], row[1]) for row in rows} & wanted


async def _head(conn: Any) -> tuple[int, str]:
    """As :meth:`AuditStore._head`: the newest record, else the newest checkpoint."""
    row = await conn.fetchrow("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")
    if row is None:
        row = await conn.fetchrow(
            "SELECT last_seq, last_hash FROM checkpoints ORDER BY last_seq DESC LIMIT 1")
    return (int(row[0]), row[1]) if row is not None else (0, decisions.GENESIS_HASH)


async def _seals(conn: Any, fresh: Sequence[AnyFact], now: datetime, index_key: bytes,
                 paths: tuple[sealing.Path, ...]) -> dict[str, sealing.Sealing]:
    """As :meth:`AuditStore._seals`."""
    needed = sealing.links_needed(fresh, paths)
    decided = sealing.plan(fresh, paths, await _stored_links(conn, needed) if needed else {})
    if not decided:
        return {}
    subjects = {d.subject for d in decided.values() if isinstance(d, sealing.Own)}
    refs = {d.ref for d in decided.values() if isinstance(d, sealing.Linked)}
    return sealing.seals_for(decided, await _keys_for_subjects(conn, subjects, now, index_key),
                             await _keys_for_refs(conn, refs))


async def _stored_links(conn: Any, event_ids: Iterable[str]) -> dict[str, str]:
    """Event id → pseudonym of the subject its earliest sealed record is about."""
    links: dict[str, tuple[int, str]] = {}
    for event_id, ref, first in await conn.fetch(
            "SELECT event_id, subject_ref, min(seq) FROM records "
            "WHERE event_id = ANY($1::text[]) AND subject_ref IS NOT NULL "
            "GROUP BY event_id, subject_ref", sorted(event_ids)):
        if event_id not in links or first < links[event_id][0]:
            links[event_id] = (first, ref)
    return {event_id: ref for event_id, (_, ref) in links.items()}


async def _keys_for_subjects(conn: Any, subjects: set[str], now: datetime,
                             index_key: bytes) -> dict[str, tuple[str, bytes]]:
    """Subject id → (pseudonym, key), creating both for a subject seen the first time."""
    if not subjects:
        return {}
    lookups = {sealing.lookup_hash(index_key, s): s for s in subjects}
    found: dict[str, tuple[str, bytes]] = {}
    for ref, lookup, key in await conn.fetch(
            "SELECT ref, lookup, key FROM subject_keys WHERE lookup = ANY($1::text[])",
            sorted(lookups)):
        found[lookups[lookup]] = (ref, sealing.decode_key(key, "key"))
    created = sealing.keys_to_create(lookups, found)
    if created:
        await conn.execute(
            "INSERT INTO subject_keys (ref, lookup, key, created_at) "
            "SELECT ref, lookup, key, $4::timestamptz "
            "FROM unnest($1::text[], $2::text[], $3::text[]) AS k(ref, lookup, key)",
            [ref for ref, _, _ in created.values()],
            [lookup for _, lookup, _ in created.values()],
            [sealing.encode_key(key) for _, _, key in created.values()], now)
    return found | {subject: (ref, key) for subject, (ref, _, key) in created.items()}


async def _keys_for_refs(conn: Any, refs: Iterable[str]) -> Mapping[str, bytes]:
    """Pseudonym → key, for the pseudonyms whose key still exists (not erased)."""
    wanted = sorted(refs)
    if not wanted:
        return {}
    return {ref: sealing.decode_key(key, "key") for ref, key in await conn.fetch(
        "SELECT ref, key FROM subject_keys WHERE ref = ANY($1::text[])", wanted)}
