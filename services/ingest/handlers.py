"""Ingest's pure decisions: topic matching, fan-out planning, decoding and stable ids.

Nothing here does I/O, so every rule that decides what gets delivered, what gets rejected and
which ids things get is unit-tested on its own (``tests/unit/test_ingest_*``). The I/O around
these functions lives in :mod:`services.ingest.consumer` and :mod:`services.ingest.http`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import orjson
from pydantic import JsonValue, ValidationError

from shared.contracts import AuditFact, DeliveryJob, Event
from shared.ids import new_id

PATTERN_RE = re.compile(r"^(?:[a-z0-9_-]+|\*|#)(?:\.(?:[a-z0-9_-]+|\*|#))*$")
"""A subscription pattern: dot-separated words of ``[a-z0-9_-]``, ``*`` or ``#``."""
EVENT_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")

RejectReason = Literal["invalid_json", "schema_invalid", "unsupported_type", "fanout_limit"]
EndpointStatus = Literal["enabled", "disabled"]

_MAX_ERROR = 1000


def valid_pattern(pattern: str) -> bool:
    """True if ``pattern`` is a well-formed subscription pattern (see :func:`matches`)."""
    return len(pattern) <= 255 and PATTERN_RE.fullmatch(pattern) is not None


def matches(pattern: str, event_type: str) -> bool:
    """Does subscription ``pattern`` select events of type ``event_type``?

    RabbitMQ topic-exchange semantics, applied to dot-separated words:

    * a literal word matches that word only (``template.created``);
    * ``*`` matches exactly one word (``incident.*`` matches ``incident.security`` but neither
      ``incident`` nor ``incident.security.high``);
    * ``#`` matches zero or more words (``incident.#`` matches ``incident``,
      ``incident.security`` and ``incident.security.high``; ``#`` alone matches everything).

    Endpoints subscribe with the same language platform teams already use to bind queues to the
    events exchange, so one mental model covers both. Evaluated as a set of reachable positions
    in the type's words (O(pattern words x type words)): several ``#`` never backtrack
    exponentially.
    """
    words = event_type.split(".")
    positions = {0}
    for part in pattern.split("."):
        if part == "#":
            positions = set(range(min(positions), len(words) + 1))
        elif part == "*":
            positions = {i + 1 for i in positions if i < len(words)}
        else:
            positions = {i + 1 for i in positions if i < len(words) and words[i] == part}
        if not positions:
            return False
    return len(words) in positions


@dataclass(frozen=True)
class Endpoint:
    """What fan-out needs to know about a registered endpoint (never its secret)."""

    id: str
    url: str
    events: tuple[str, ...]
    status: EndpointStatus = "enabled"

    def subscribed(self, event_type: str) -> bool:
        return self.status == "enabled" and any(matches(p, event_type) for p in self.events)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:26]


def delivery_id(event_id: str, endpoint_id: str) -> str:
    """``dlv_…`` derived from the pair, so a redelivered event yields the same delivery ids
    (and receivers can drop the duplicate deliveries by id)."""
    return "dlv_" + _digest(f"{event_id}:{endpoint_id}")


def plan(event: Event, endpoints: Iterable[Endpoint]) -> list[DeliveryJob]:
    """One first-attempt job per enabled endpoint with a pattern matching the event's type.

    ``event`` must already carry its ``id`` and ``timestamp`` (see :func:`complete`): every
    delivery of an event carries the same body id.
    """
    if event.id is None or event.timestamp is None:
        raise ValueError("plan() needs an event whose id and timestamp are set")
    return [
        DeliveryJob(delivery_id=delivery_id(event.id, ep.id), endpoint_id=ep.id, url=ep.url,
                    event=event)
        for ep in endpoints
        if ep.subscribed(event.event)
    ]


def event_id_for(body_id: str | None, message_id: str | None) -> str:
    """The event's id: the publisher's, else one derived from the AMQP ``message_id``.

    Deriving it from the message id means a message redelivered after a crash gets the same
    event id — hence the same delivery ids — instead of a fresh one that would double-deliver.
    """
    if body_id:
        return body_id
    if message_id:
        return "evt_" + _digest(message_id)
    return new_id("evt")


def complete(event: Event, *, message_id: str | None, now: datetime) -> Event:
    """The event with ``id`` and ``timestamp`` filled in (publishers may leave them out)."""
    return event.model_copy(update={
        "id": event_id_for(event.id, message_id),
        "timestamp": event.timestamp or now,
    })


@dataclass(frozen=True)
class Rejection:
    """Why a consumed message is not an event we can fan out."""

    reason: RejectReason
    error: str
    event_type: str | None = None


def describe(exc: ValidationError) -> str:
    """A validation error as ``field: problem`` pairs — naming fields, never echoing values."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return "; ".join(parts)[:_MAX_ERROR]


def peek_type(body: bytes) -> str | None:
    """The ``event`` field of a body that fails validation, if it is a well-formed type."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("event") if isinstance(doc, dict) else None
    if isinstance(value, str) and len(value) <= 128 and EVENT_TYPE_RE.fullmatch(value):
        return value
    return None


def decode(body: bytes, amqp_type: str | None) -> Event | Rejection:
    """Decode a consumed message into an :class:`Event`, or say why it cannot be one.

    The AMQP ``type`` property is optional for publishers; when present it must be
    :data:`Event.TYPE`, so a message of another contract routed here by mistake is refused
    rather than half-understood.
    """
    if amqp_type and amqp_type != Event.TYPE:
        return Rejection("unsupported_type",
                         f"AMQP type {amqp_type[:100]!r} is not {Event.TYPE!r}", peek_type(body))
    try:
        return Event.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
            return Rejection("invalid_json", describe(exc))
        return Rejection("schema_invalid", describe(exc), peek_type(body))


def accepted_fact_id(event_id: str) -> str:
    """The id of an event's ``event.accepted`` fact: derived from the event id, so a redelivered
    event produces the same fact and the audit store keeps it once."""
    return "fct_" + _digest(f"event.accepted:{event_id}")


def accepted_fact(event: Event, jobs: Sequence[DeliveryJob], now: datetime) -> AuditFact:
    """The ``event.accepted`` audit fact: how many endpoints, whose data (GDPR subject), lang."""
    assert event.id is not None
    subject = event.data.get("user_id")
    details: dict[str, JsonValue] = {
        "endpoints": len(jobs),
        "subject": subject if isinstance(subject, str) else None,
        "lang": event.lang,
    }
    return AuditFact(id=accepted_fact_id(event.id), kind="event.accepted", occurred_at=now,
                     service="ingest", event_id=event.id, event_type=event.event,
                     details=details)


def rejected_fact(rejection: Rejection, now: datetime, *, event_id: str | None = None
                  ) -> AuditFact:
    """The ``event.rejected`` audit fact (reason and field-level error; never the body)."""
    return AuditFact(id=new_id("fct"), kind="event.rejected", occurred_at=now, service="ingest",
                     event_id=event_id, event_type=rejection.event_type,
                     reason=rejection.reason, error=rejection.error)


def key_is_fresh(created_at: datetime, now: datetime, window_seconds: int) -> bool:
    """Is an idempotency key created at ``created_at`` still inside the replay window?"""
    return now - created_at < timedelta(seconds=window_seconds)
