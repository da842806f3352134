"""The message log's pure decisions: what ingest records of an event, a delivery and an
attempt, how a delivery's status moves, how a page cursor reads, and an endpoint's health over
the last 24 hours. The queries live in :mod:`services.ingest.message_log`.

Where the facts come from: fan-out (:mod:`.consumer`) records each event and its deliveries
(``pending``, or ``held`` for a disabled endpoint); the ``delivery.attempted`` facts of the
health queue (:mod:`.health`) record each attempt; the dead-letter store marks a delivery
``failed``; a retry, recover or resend marks it ``retried`` until its next attempt is seen.

The payload is personal data: it is kept only while ``DIHYA_INGEST_PAYLOAD_RETENTION_DAYS``
lasts (0: never kept), erased with its subject (GDPR Art. 17) and exported with it (Art. 15).
Its subject is the event's ``data.user_id``, the same one ingest names in the audit log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import JsonValue

from shared.contracts import AuditFact, DeliveryJob, Event

LogStatus = Literal["pending", "delivered", "failed", "held", "retried"]
LOG_STATUSES: tuple[LogStatus, ...] = ("pending", "delivered", "failed", "held", "retried")
EndpointState = Literal["enabled", "failing", "disabled"]

HEALTH_WINDOW = timedelta(hours=24)
"""The span the endpoint health figures cover."""
EXCERPT_CHARS = 1024
"""Longest response excerpt kept per attempt (the deliverer sends at most 256 characters)."""
ERROR_CHARS = 1000
MAX_HEADERS = 50


@dataclass(frozen=True)
class LogEvent:
    """One accepted event as the message log keeps it."""

    id: str
    event_type: str
    received_at: datetime
    lang: str | None
    subject: str | None
    payload: dict[str, JsonValue] | None
    tenant: str | None = None
    """The event's tenant (``ten_…``); ``None`` for a platform-wide event."""


@dataclass(frozen=True)
class LogDelivery:
    """One delivery (an event to one endpoint) as fan-out created it."""

    id: str
    event_id: str
    endpoint_id: str
    url: str
    status: LogStatus
    created_at: datetime


@dataclass(frozen=True)
class LogAttempt:
    """One HTTP attempt, from its ``delivery.attempted`` fact."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    url: str
    attempt: int
    at: datetime
    outcome: Literal["delivered", "failed"]
    status_code: int | None
    latency_ms: float | None
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    response_excerpt: str | None = None
    error: str | None = None
    next_retry_at: datetime | None = None
    """When the deliverer will try again (its fact's ``retry_in_ms``); None: no retry."""


def subject_of(event: Event) -> str | None:
    """The data subject of an event: its ``data.user_id`` when that is a string (as in the
    ``event.accepted`` audit fact)."""
    value = event.data.get("user_id")
    return value if isinstance(value, str) and 0 < len(value) <= 512 else None


def log_event(event: Event, now: datetime, *, keep_payload: bool, tenant: str | None
              ) -> LogEvent:
    """What the log keeps of an accepted, completed event (``id`` set) of ``tenant``
    (``None``: platform-wide). The subject is kept only with the payload: without it, a row
    linking a person to an event is personal data the log has no use for."""
    return LogEvent(id=event.id or "", event_type=event.event, received_at=now,
                    lang=event.lang, subject=subject_of(event) if keep_payload else None,
                    payload=event.model_dump(mode="json") if keep_payload else None,
                    tenant=tenant)


def log_delivery(job: DeliveryJob, now: datetime, *, held: bool = False) -> LogDelivery:
    return LogDelivery(id=job.delivery_id, event_id=job.event.id or "",
                       endpoint_id=job.endpoint_id, url=job.url,
                       status="held" if held else "pending", created_at=now)


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k)[:200]: str(v)[:1000] for k, v in list(value.items())[:MAX_HEADERS]}


def attempt_from_fact(fact: AuditFact) -> LogAttempt | None:
    """The attempt a ``delivery.attempted`` fact reports; None for any other fact."""
    if (fact.kind != "delivery.attempted" or fact.delivery_id is None
            or fact.endpoint_id is None or fact.attempt is None
            or fact.outcome not in ("delivered", "failed")):
        return None
    details = fact.details
    excerpt = details.get("response_excerpt")
    retry_in = details.get("retry_in_ms")
    next_retry = (fact.occurred_at + timedelta(milliseconds=retry_in)
                  if details.get("next") == "retry" and isinstance(retry_in, int | float)
                  else None)
    started = fact.occurred_at
    if fact.duration_ms is not None:
        started = fact.occurred_at - timedelta(milliseconds=fact.duration_ms)
    return LogAttempt(
        delivery_id=fact.delivery_id, endpoint_id=fact.endpoint_id,
        event_id=fact.event_id or "", url=fact.url or "", attempt=fact.attempt,
        at=started.astimezone(UTC), outcome="delivered" if fact.outcome == "delivered"
        else "failed", status_code=fact.status_code, latency_ms=fact.duration_ms,
        request_headers=_strings(details.get("request_headers")),
        response_headers=_strings(details.get("response_headers")),
        response_excerpt=excerpt[:EXCERPT_CHARS] if isinstance(excerpt, str) else None,
        error=None if fact.error is None else fact.error[:ERROR_CHARS],
        next_retry_at=next_retry)


def status_after(current: LogStatus, last_attempt: int, attempt: LogAttempt) -> LogStatus:
    """A delivery's status once ``attempt`` is seen (``last_attempt``: the highest attempt
    number already recorded, 0 if none).

    Facts come late and out of order beside the dead-letter store: an attempt older than the
    last one recorded changes nothing; a failed attempt with no retry after it gives the
    delivery up (``failed``, as the dead-letter store will record it too); one with a retry
    leaves it ``pending`` — unless the dead-letter store already holds it (``failed`` or
    ``held``), which decides those."""
    if attempt.attempt < last_attempt:
        return current
    if attempt.outcome == "delivered":
        return "delivered"
    if attempt.next_retry_at is None:
        return "failed"
    if current in ("failed", "held"):
        return current
    return "pending"


@dataclass(frozen=True)
class DeliveryState:
    """What the log holds of a delivery before a batch of attempts moves it."""

    status: LogStatus
    last_attempt: int
    attempts_count: int


@dataclass(frozen=True)
class AttemptsPlan:
    """The rows one batch of attempts writes (:func:`plan_attempts`)."""

    attempts: list[LogAttempt]
    """The attempts not yet recorded: to insert."""
    missing: list[dict[str, Any]]
    """Rows of ``log_deliveries`` for deliveries the log never saw fanned out."""
    moved: list[dict[str, Any]]
    """Existing deliveries whose status moves: ``key`` (the id), ``status``,
    ``last_attempt``, ``attempts_count``, ``last_attempt_at``, ``next_retry_at``."""
    counted: list[dict[str, Any]]
    """Existing deliveries that only count older attempts seen late: ``key`` and
    ``attempts_count`` (the status unchanged)."""


def unique_attempts(attempts: Iterable[LogAttempt]) -> list[LogAttempt]:
    """One attempt per (delivery, attempt number): the last one given."""
    return list({(a.delivery_id, a.attempt): a for a in attempts}.values())


def plan_attempts(new: Sequence[LogAttempt], stored: Mapping[str, DeliveryState],
                  now: datetime) -> AttemptsPlan:
    """The writes that record ``new`` attempts (none already recorded) against the stored
    state of their deliveries (``stored``, by delivery id; a delivery absent from it gets a
    row of its own, ``pending`` until its attempts move it).

    Pure, so the engine's path and the direct SQLite one (:mod:`.message_log`) write the same
    rows. Attempts apply oldest first, through :func:`status_after`."""
    state: dict[str, dict[str, Any]] = {
        key: {"status": r.status, "last_attempt": r.last_attempt,
              "attempts_count": r.attempts_count, "last_attempt_at": None,
              "next_retry_at": None, "moved": False}
        for key, r in stored.items()}
    missing: dict[str, dict[str, Any]] = {}
    for item in sorted(new, key=lambda x: x.attempt):
        row = state.get(item.delivery_id)
        if row is None:
            row = missing.setdefault(item.delivery_id, {
                "id": item.delivery_id, "event_id": item.event_id,
                "endpoint_id": item.endpoint_id, "url": item.url, "status": "pending",
                "created_at": item.at, "updated_at": now, "attempts_count": 0,
                "last_attempt": 0, "last_attempt_at": None, "next_retry_at": None,
                "moved": False})
        row["attempts_count"] += 1
        if item.attempt >= row["last_attempt"]:
            row.update(status=status_after(row["status"], row["last_attempt"], item),
                       last_attempt=item.attempt, last_attempt_at=item.at,
                       next_retry_at=item.next_retry_at, moved=True)
    return AttemptsPlan(
        attempts=list(new),
        missing=[{k: v for k, v in row.items() if k != "moved"} for row in missing.values()],
        moved=[{"key": key, **{k: v for k, v in row.items() if k != "moved"}}
               for key, row in state.items() if row["moved"]],
        counted=[{"key": key, "attempts_count": row["attempts_count"]}
                 for key, row in state.items() if not row["moved"]])


# -- cursors ------------------------------------------------------------------------------


class CursorError(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(at: datetime, ident: str) -> str:
    """An opaque page cursor: the sort key (time, id) of the last item of a page."""
    raw = f"{at.astimezone(UTC).isoformat()}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, ident = raw.split("|", 1)
        when = datetime.fromisoformat(at)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CursorError("not a cursor of this list") from exc
    if when.tzinfo is None or not ident:
        raise CursorError("not a cursor of this list")
    return when.astimezone(UTC), ident


# -- endpoint health ----------------------------------------------------------------------


@dataclass(frozen=True)
class HourCount:
    """Attempts of one hour (its start) by outcome."""

    hour: datetime
    delivered: int
    failed: int


@dataclass(frozen=True)
class HealthSummary:
    state: EndpointState
    attempts: int
    delivered: int
    failed: int
    success_rate: float | None
    """Delivered attempts / attempts over the window; None without any attempt."""
    last_delivery_at: datetime | None
    hours: tuple[HourCount, ...]


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hours_ending(now: datetime) -> list[datetime]:
    """The 24 hour starts of the window, oldest first, the current hour last."""
    last = hour_of(now)
    return [last - timedelta(hours=n) for n in range(23, -1, -1)]


def endpoint_state(status: str, failing_since: datetime | None) -> EndpointState:
    if status != "enabled":
        return "disabled"
    return "failing" if failing_since is not None else "enabled"


def summarize(counts: Iterable[tuple[datetime, str, int]], now: datetime, *, status: str,
              failing_since: datetime | None, last_delivery_at: datetime | None
              ) -> HealthSummary:
    """Fold ``(hour, outcome, count)`` rows of the window into the per-hour chart and the
    totals. Rows outside the 24 hours ending at ``now`` are ignored."""
    slots = {hour: [0, 0] for hour in hours_ending(now)}
    for hour, outcome, count in counts:
        slot = slots.get(hour_of(hour))
        if slot is not None:
            slot[0 if outcome == "delivered" else 1] += count
    delivered = sum(s[0] for s in slots.values())
    failed = sum(s[1] for s in slots.values())
    attempts = delivered + failed
    return HealthSummary(
        state=endpoint_state(status, failing_since), attempts=attempts, delivered=delivered,
        failed=failed, success_rate=None if attempts == 0 else round(delivered / attempts, 4),
        last_delivery_at=last_delivery_at,
        hours=tuple(HourCount(h, s[0], s[1]) for h, s in slots.items()))
