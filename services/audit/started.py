"""POSTs started and not yet reported: the deliverer's ``delivery.started`` facts, held aside.

A deliverer confirms a ``delivery.started`` before each POST and a ``delivery.attempted`` (the
outcome, same fact id) after it. Audit keeps the first in ``started_attempts`` — outside the
hash chain, which only ever gains records — and forgets it once the outcome is recorded. One
still waiting after ``DIHYA_AUDIT_OUTCOME_TIMEOUT`` belongs to a deliverer that stopped between
its POST and the outcome's confirm: :class:`Overdue` hands it to the writer as an ``unknown``
outcome (:func:`services.audit.decisions.outcome_unknown`), so every POST has its record.

Several audit replicas may sweep at once: the record keeps the fact id, and the writer drops a
fact id it already stored, so the POST is recorded once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from services.audit import decisions
from shared.batching import Batcher
from shared.contracts import AuditFact, encode, utcnow
from shared.db import DirectPostgres, DirectSQLite, sqlite_timestamp

log = structlog.get_logger("dihya.audit")

metadata = sa.MetaData()

started_attempts = sa.Table(
    "started_attempts", metadata,
    sa.Column("fact_id", sa.String(), primary_key=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("fact", sa.Text(), nullable=False),
)

_HOLD = ("INSERT INTO started_attempts (fact_id, started_at, fact) VALUES (?, ?, ?) "
         "ON CONFLICT (fact_id) DO NOTHING")
"""The engine's hold as plain SQL (its rows: the fact id, the time as SQLAlchemy writes a
``DateTime`` on SQLite, the fact's JSON)."""

_HOLD_PG = ("INSERT INTO started_attempts (fact_id, started_at, fact) "
            "SELECT fact_id, started_at, fact "
            "FROM unnest($1::text[], $2::timestamptz[], $3::text[]) "
            "AS h(fact_id, started_at, fact) "
            "ON CONFLICT (fact_id) DO NOTHING")
"""The engine's hold on PostgreSQL, a batch in one statement."""
_FORGET_PG = "DELETE FROM started_attempts WHERE fact_id = ANY($1::text[])"

SWEEP_BATCH = 500
"""Overdue write-aheads recorded per sweep round (the next round takes the rest)."""


class StartedAttempts:
    """The ``started_attempts`` table: hold, forget, and list the overdue.

    Holds go through a :class:`~shared.batching.Batcher` (:meth:`start` it, :meth:`stop` it):
    the write-aheads of every message in flight share one transaction. One transaction per
    message was issue #17's "audit not ready" after every broker connection was dropped: the
    whole prefetch came back at once, each message's insert waited for SQLite's write lock
    beside the others and the chain's writer, and with 3,000 at once (measured on a loaded
    2-vCPU machine) they took 36 s, 1,727 failed after SQLite's 30 s busy timeout, and the
    pool's 15 connections were all waiting, so the readiness ping got none for 30 s.
    """

    def __init__(self, engine: AsyncEngine,
                 direct: DirectSQLite | DirectPostgres | None = None) -> None:
        self._engine = engine
        self._direct = direct if isinstance(direct, DirectSQLite) else None
        """On SQLite, the chain's writer (:attr:`AuditStore.direct`): holds and forgets run
        there as plain ``sqlite3``, between the chain's batches rather than beside them
        waiting for the write lock. Through the engine they cost about as much CPU as the
        chain's append of the same facts (two more transactions per delivery's pair of
        facts, each through SQLAlchemy, aiosqlite's thread and back). None: the engine."""
        self._pg = direct if isinstance(direct, DirectPostgres) else None
        """On PostgreSQL, the chain's direct writer: a hold or a forget is one statement
        there, over arrays (:data:`_HOLD_PG`, :data:`_FORGET_PG`)."""
        dialect = engine.dialect.name
        self._insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)
        self._holds: Batcher[tuple[AuditFact, datetime], None] = Batcher(
            self._insert_many, size=SWEEP_BATCH, name="write-ahead holds")

    def start(self) -> None:
        self._holds.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Write the holds pending (within ``grace``), then refuse new ones."""
        await self._holds.stop(grace)

    async def hold(self, facts: Sequence[AuditFact], now: datetime | None = None) -> None:
        """Keep ``facts`` (``delivery.started``) until their outcome is recorded; one held
        twice (a redelivered message) stays one. Returns once they are committed."""
        at = now or utcnow()
        await asyncio.gather(*(self._holds.submit((fact, at)) for fact in facts))

    async def _insert_many(self, held: Sequence[tuple[AuditFact, datetime]]) -> None:
        if self._direct is not None:
            await self._direct.write(_HOLD, [(f.id, sqlite_timestamp(at), encode(f).decode())
                                             for f, at in held])
            return
        if self._pg is not None:
            await self._pg.execute(_HOLD_PG, [f.id for f, _ in held], [at for _, at in held],
                                   [encode(f).decode() for f, _ in held])
            return
        rows = [{"fact_id": f.id, "started_at": at, "fact": encode(f).decode()}
                for f, at in held]
        async with self._engine.begin() as conn:
            await conn.execute(self._insert(started_attempts).on_conflict_do_nothing(), rows)

    async def forget(self, fact_ids: Sequence[str]) -> None:
        """Drop the write-aheads of these ids (their outcome, or ``unknown``, is recorded)."""
        if not fact_ids:
            return
        if self._direct is not None:
            await self._direct.write("DELETE FROM started_attempts WHERE fact_id = ?",
                                     [(fact_id,) for fact_id in fact_ids])
            return
        if self._pg is not None:
            await self._pg.execute(_FORGET_PG, list(fact_ids))
            return
        async with self._engine.begin() as conn:
            for start in range(0, len(fact_ids), SWEEP_BATCH):
                chunk = list(fact_ids[start:start + SWEEP_BATCH])
                await conn.execute(started_attempts.delete().where(
                    started_attempts.c.fact_id.in_(chunk)))

    async def overdue(self, before: datetime, limit: int = SWEEP_BATCH) -> list[AuditFact]:
        """Write-aheads held since before ``before`` (oldest first)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(started_attempts.c.fact)
                .where(started_attempts.c.started_at < before)
                .order_by(started_attempts.c.started_at).limit(limit))
            texts = [row.fact for row in rows]
        return [AuditFact.model_validate_json(text) for text in texts]

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(started_attempts))).scalar_one())


Record = Callable[[AuditFact], Awaitable[None]]


class Overdue:
    """Every ``interval`` seconds, records each write-ahead older than ``timeout`` as an
    ``unknown`` outcome (through ``record``, the writer's usual path) and forgets it."""

    def __init__(self, attempts: StartedAttempts, record: Record, *, timeout: float,
                 interval: float) -> None:
        self._attempts = attempts
        self._record = record
        self._timeout = timeout
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-overdue-outcomes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self, now: datetime | None = None) -> int:
        """One round; how many POSTs it recorded as ``unknown``."""
        before = (now or utcnow()) - timedelta(seconds=self._timeout)
        total = 0
        while True:
            facts = await self._attempts.overdue(before)
            if not facts:
                return total
            await asyncio.gather(*(self._record(decisions.outcome_unknown(f)) for f in facts))
            await self._attempts.forget([f.id for f in facts])
            for fact in facts:
                log.warning("outcome_unknown", fact_id=fact.id, delivery_id=fact.delivery_id,
                            attempt=fact.attempt, event_id=fact.event_id,
                            started_at=fact.occurred_at.isoformat())
            total += len(facts)
            if len(facts) < SWEEP_BATCH:
                return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception as exc:  # the database away: the next round tries again
                log.warning("overdue_sweep_failed", error=f"{type(exc).__name__}: {exc}"[:300])
