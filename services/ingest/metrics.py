"""Prometheus metrics of ingest (process-wide: registered once, shared by every instance).

Event types come from publishers, so using them raw as label values would let one publisher
grow the metric series without bound. :class:`BoundedLabels` keeps the first
:data:`MAX_EVENT_TYPE_LABELS` distinct types and reports later ones as ``other``.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter

MAX_EVENT_TYPE_LABELS = 200


class BoundedLabels:
    """Maps free-form values onto at most ``limit`` label values (then ``other``)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return "unknown"
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return "other"


event_type_label = BoundedLabels(MAX_EVENT_TYPE_LABELS)

EVENTS_ACCEPTED = Counter(
    "dihya_ingest_events_accepted",
    "Events fanned out (their jobs and audit fact confirmed), by event type.",
    ["event_type"],
)
EVENTS_REJECTED = Counter(
    "dihya_ingest_events_rejected",
    "Events refused, by event type and reason (invalid_json, non_finite_number, "
    "duplicate_key, body_too_large, schema_invalid, unsupported_type, routing_key_mismatch, "
    "fanout_limit, unknown_event_type; http_invalid for a 422 on POST /v1/events).",
    ["event_type", "reason"],
)
FANOUT_JOBS = Counter(
    "dihya_ingest_fanout_jobs",
    "Delivery jobs published to the signer (confirmed).",
)
IDEMPOTENT_REPLAYS = Counter(
    "dihya_ingest_idempotent_replays",
    "POST /v1/events answered from an earlier request with the same Idempotency-Key.",
)


def accepted(event_type: str, jobs: int) -> None:
    EVENTS_ACCEPTED.labels(event_type=event_type_label(event_type)).inc()
    FANOUT_JOBS.inc(jobs)


def rejected(event_type: str | None, reason: str) -> None:
    EVENTS_REJECTED.labels(event_type=event_type_label(event_type), reason=reason).inc()


EVENTS_DUPLICATE = Counter(
    "dihya_ingest_events_duplicate",
    "Events acked without fan-out: their id was already fanned out within "
    "DIHYA_INGEST_IDEMPOTENCY_WINDOW (same AMQP message_id or body id).",
)
DELIVERIES_HELD = Counter(
    "dihya_ingest_deliveries_held",
    "Deliveries kept for a disabled endpoint instead of being sent.",
)
DEAD_LETTERS = Counter(
    "dihya_ingest_dead_letters",
    "Parked messages taken into the dead-letter store, by source queue and kind "
    "(delivery: a resendable job; unreadable: kept verbatim in parked_messages).",
    ["queue", "kind"],
)
DELIVERIES_RESENT = Counter(
    "dihya_ingest_deliveries_resent",
    "Stored deliveries sent again by an administrator, by route (retry, recover, resend).",
    ["via"],
)
ENDPOINTS_DISABLED = Counter(
    "dihya_ingest_endpoints_disabled",
    "Endpoints disabled by their health (gone: 410; failing: too long without success).",
    ["reason"],
)
HEALTH_FACTS = Counter(
    "dihya_ingest_health_facts",
    "delivery.attempted facts judged, by result: ignored (unusable or unknown endpoint), "
    "unchanged, updated (failing_since / last delivery moved), disabled.",
    ["result"],
)
