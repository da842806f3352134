"""Ingest's pure decisions: fan-out planning, decoding and stable ids; what a parked delivery
is, how a manual retry continues it, and when an endpoint's health disables it. Which types a
subscription selects is a contract, in :mod:`shared.subscriptions`.

Nothing here does I/O, so every rule that decides what gets delivered, held, rejected, resent or
disabled, and which ids things get, is unit-tested on its own (``tests/unit/test_ingest_*``).
The I/O around these functions lives in :mod:`.consumer`, :mod:`.dead_letters`, :mod:`.health`
and :mod:`.http`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import jiter
import orjson
from pydantic import JsonValue, ValidationError

from services.ingest.catalog import (
    Catalog,
    UnknownPolicy,
    admits,
    complete_details,
    unknown_message,
)
from shared import strict_json, topology
from shared.contracts import (
    AttemptRecord,
    AuditFact,
    DeliveryJob,
    DeliveryJobBatch,
    Event,
    Ordering,
    RateLimit,
    SignedDelivery,
)
from shared.ids import fact_id, new_id
from shared.ordering import key_of
from shared.subscriptions import selects

EVENT_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
"""What an endpoint, delivery or token id may look like (``ep_…``, ``dlv_…``, ``tok_…``)."""

RejectReason = Literal["invalid_json", "non_finite_number", "duplicate_key", "body_too_large",
                       "schema_invalid", "unsupported_type", "routing_key_mismatch",
                       "fanout_limit", "unknown_event_type", "tenant_missing",
                       "tenant_conflict", "unknown_tenant", "tenant_rate_limited"]
EndpointStatus = Literal["enabled", "disabled"]
DEFAULT_TENANT = "ten_default"
"""The tenant migration ``ingest_0008`` moved every endpoint of before tenants to (external id
``default``); where an operational event about something of that time goes."""

_MAX_ERROR = 1000


@dataclass(frozen=True)
class Endpoint:
    """What fan-out needs to know about a registered endpoint (never its secret)."""

    id: str
    url: str
    events: tuple[str, ...]
    status: EndpointStatus = "enabled"
    disabled_reason: str | None = None
    retry_schedule_ms: tuple[int, ...] | None = None
    """Its own retry delays in ms (``()``: one attempt only); ``None``: the deployment's."""
    rate_limit: RateLimit | None = None
    """Its rate limit (the deliverer paces it); ``None``: not limited."""
    tenant_id: str = DEFAULT_TENANT
    """The tenant it belongs to (``ten_…``): fan-out narrows by it first
    (:func:`services.ingest.decisions.tenants.in_scope`)."""
    ordering: Ordering | None = None
    """``fifo``: its deliveries of one key go one at a time, in order (docs/ordering.md)."""
    ordering_key: str | None = None
    """The dotted path of its ordering key in the event; ``None``: one key for all."""

    def fifo_key(self, event: Event) -> str | None:
        """The ordering key a job of ``event`` carries; ``None`` if it is not ordered."""
        return None if self.ordering != "fifo" else key_of(event, self.ordering_key)

    def wants(self, event_type: str) -> bool:
        """Does one of its patterns select ``event_type`` (whatever its status)?"""
        return selects(self.events, event_type)

    def subscribed(self, event_type: str) -> bool:
        return self.status == "enabled" and self.wants(event_type)


def schedule_ms(seconds: Sequence[float] | None) -> tuple[int, ...] | None:
    """An API retry schedule (seconds) as the contract carries it (whole milliseconds)."""
    return None if seconds is None else tuple(round(s * 1000) for s in seconds)


def schedule_seconds(delays_ms: Sequence[int] | None) -> list[float] | None:
    """A stored retry schedule (milliseconds) as the API shows it (seconds)."""
    return None if delays_ms is None else [ms / 1000 for ms in delays_ms]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:26]


def delivery_id(event_id: str, endpoint_id: str) -> str:
    """``dlv_…`` derived from the pair, so a redelivered event yields the same delivery ids
    (and receivers can drop the duplicate deliveries by id)."""
    return "dlv_" + _digest(f"{event_id}:{endpoint_id}")


def plan(event: Event, endpoints: Iterable[Endpoint]) -> list[DeliveryJob]:
    """One first-attempt job per enabled endpoint with a pattern matching the event's type.

    ``event`` must already carry its ``id`` and ``timestamp`` (see :func:`complete`): every
    delivery of an event carries the same body id. Each job carries its endpoint's own retry
    schedule, if it has one: the deliverer, which decides on retries, has no database.
    """
    if event.id is None or event.timestamp is None:
        raise ValueError("plan() needs an event whose id and timestamp are set")
    return [
        DeliveryJob(delivery_id=delivery_id(event.id, ep.id), endpoint_id=ep.id, url=ep.url,
                    event=event, retry_schedule_ms=ep.retry_schedule_ms,
                    rate_limit=ep.rate_limit, tenant=ep.tenant_id, fifo_key=ep.fifo_key(event))
        for ep in endpoints
        if ep.subscribed(event.event)
    ]


@dataclass(frozen=True)
class HeldJob:
    """A delivery owed to a disabled endpoint: stored (status ``held``), not sent."""

    job: DeliveryJob
    disabled_reason: str | None


def hold(event: Event, endpoints: Iterable[Endpoint]) -> list[HeldJob]:
    """The jobs :func:`plan` leaves out because their endpoint is disabled.

    Events for a disabled endpoint are kept, not dropped: re-enabling the endpoint offers them
    (``POST /v1/endpoints/{id}/recover``). Same delivery ids as :func:`plan` would give, so a
    redelivered event holds each delivery once.
    """
    if event.id is None or event.timestamp is None:
        raise ValueError("hold() needs an event whose id and timestamp are set")
    return [
        HeldJob(DeliveryJob(delivery_id=delivery_id(event.id, ep.id), endpoint_id=ep.id,
                            url=ep.url, event=event, retry_schedule_ms=ep.retry_schedule_ms,
                            rate_limit=ep.rate_limit, tenant=ep.tenant_id,
                            fifo_key=ep.fifo_key(event)),
                ep.disabled_reason)
        for ep in endpoints
        if ep.status != "enabled" and ep.wants(event.event)
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


def screen(event: Event, catalog: Catalog, policy: UnknownPolicy) -> Event | Rejection:
    """The event as it is fanned out — its ``details`` completed from the event-type catalog
    (:func:`~services.ingest.catalog.complete_details`) — or why it may not enter: its type is
    not in the catalog and ``policy`` (``DIHYA_INGEST_UNKNOWN_EVENT_TYPES``) refuses those."""
    if not admits(catalog, policy, event.event):
        return Rejection("unknown_event_type", unknown_message(event.event), event.event)
    return complete_details(event, catalog)


def describe(exc: ValidationError) -> str:
    """A validation error as ``field: problem`` pairs — naming fields, never echoing values."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return "; ".join(parts)[:_MAX_ERROR]


def peek_type(body: bytes) -> str | None:
    """The ``event`` field of a body that fails validation, if it is a well-formed type.

    Read leniently (NaN and ±Infinity taken, the last of duplicate keys): the refusal names the
    rule a body broke; the type only says whose event it was."""
    try:
        doc = jiter.from_json(body, allow_inf_nan=True, cache_mode="none")
    except ValueError:
        return None
    value = doc.get("event") if isinstance(doc, dict) else None
    if isinstance(value, str) and len(value) <= 128 and EVENT_TYPE_RE.fullmatch(value):
        return value
    return None


def decode(body: bytes, amqp_type: str | None, *, max_bytes: int) -> Event | Rejection:
    """Decode a consumed message into an :class:`Event`, or say why it cannot be one.

    The same limits as an event over HTTP: at most ``max_bytes`` (``body_too_large``; decided
    before anything is parsed), and the JSON rule of :mod:`shared.strict_json`
    (``invalid_json``, ``non_finite_number``, ``duplicate_key``).

    The AMQP ``type`` property is optional for publishers; when present it must be
    :data:`Event.TYPE`, so a message of another contract routed here by mistake is refused
    rather than half-understood.
    """
    if len(body) > max_bytes:
        return Rejection("body_too_large", f"the body is {len(body)} bytes; the limit is "
                         f"{max_bytes} (DIHYA_INGEST_MAX_BODY_BYTES)")
    if amqp_type and amqp_type != Event.TYPE:
        return Rejection("unsupported_type",
                         f"AMQP type {amqp_type[:100]!r} is not {Event.TYPE!r}", peek_type(body))
    try:
        # the rule's check only: pydantic's own parser below reads the body 2-3x faster into
        # an Event than validating the parsed value would
        strict_json.loads(body)
    except strict_json.JsonRuleError as exc:
        return Rejection(exc.code, exc.message[:_MAX_ERROR],
                         None if exc.code == "invalid_json" else peek_type(body))
    try:
        return Event.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
            return Rejection("invalid_json", describe(exc))
        return Rejection("schema_invalid", describe(exc), peek_type(body))


ROUTED_AS_HEADER = "x-dihya-routing-key"
"""Header of an event ingest parks: the routing key it was published with, so that the rule
still holds when an operator moves it back (:func:`route_refusal`)."""


def moved_in(exchange: str | None, routing_key: str | None) -> bool:
    """Was the message put straight into the ingest queue (default exchange, the queue's name
    as routing key), as a shovel or the management UI's "move messages" does?"""
    return exchange == "" and routing_key == topology.INGEST_EVENTS


def route_refusal(event: Event, *, exchange: str | None, routing_key: str | None,
                  headers: Mapping[str, Any] | None = None) -> Rejection | None:
    """Why an event consumed over AMQP may not enter by the way it was routed, or ``None``.

    Its routing key must be its type (``event``): what RabbitMQ's topic permissions check on
    the events exchange is the routing key, so only then do they bind what a publisher may
    announce. A message moved straight into the ingest queue (:func:`moved_in`; it needs write
    permission on the default exchange, never granted to platform publishers) is judged by the
    routing key it was first published with, which ingest records when it parks an event
    (:data:`ROUTED_AS_HEADER`): moving the whole parking queue back, once a fan-out limit is
    raised say, does not let a misrouted event through. Without that header (an operator's own
    message) the body alone decides.
    """
    if moved_in(exchange, routing_key):
        routed_as = (headers or {}).get(ROUTED_AS_HEADER)
        if routed_as is None:
            return None
        routing_key = _text(routed_as)
    if routing_key == event.event:
        return None
    shown = (routing_key or "")[:130]
    return Rejection("routing_key_mismatch",
                     f"routing key {shown!r} is not the event type {event.event!r}: publish "
                     "each event with its type as the routing key", event.event)


def accepted_fact_id(event_id: str) -> str:
    """The id of an event's ``event.accepted`` fact: derived from the event id, so a redelivered
    event produces the same fact and the audit store keeps it once."""
    return fact_id("event.accepted", event_id)


def accepted_fact(event: Event, jobs: Sequence[DeliveryJob], now: datetime,
                  tenant: str | None = None) -> AuditFact:
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
                     tenant=tenant, details=details)


def rejected_fact(rejection: Rejection, now: datetime, *, event_id: str | None = None,
                  tenant: str | None = None) -> AuditFact:
    """The ``event.rejected`` audit fact (reason and field-level error; never the body)."""
    return AuditFact(id=new_id("fct"), kind="event.rejected", occurred_at=now, service="ingest",
                     event_id=event_id, event_type=rejection.event_type,
                     reason=rejection.reason, error=rejection.error, tenant=tenant)


def key_is_fresh(created_at: datetime, now: datetime, window_seconds: int) -> bool:
    """Is an idempotency key created at ``created_at`` still inside the replay window?"""
    return now - created_at < timedelta(seconds=window_seconds)


def seen_recently(seen_at: datetime | None, now: datetime, window_seconds: int) -> bool:
    """Was an event id fanned out inside the deduplication window? (0 disables dedup.)"""
    return window_seconds > 0 and seen_at is not None and key_is_fresh(seen_at, now,
                                                                      window_seconds)


# -- dead letters ---------------------------------------------------------------------------

DeliveryStatus = Literal["failed", "held", "retried"]
"""A stored delivery: ``failed`` (parked by the deliverer or signer), ``held`` (its endpoint
was disabled when the event came) or ``retried`` (sent again by an administrator)."""
HELD_REASON = "endpoint_disabled"
BROKER_PARKED_REASON = "delivery_limit"
"""Reason of a message the broker parked itself (it crashed its consumer too often)."""
_MAX_REASON = 64


@dataclass(frozen=True)
class DeadLetter:
    """A parked delivery that can be stored and resent: its job, with the full history."""

    job: DeliveryJob
    reason: str
    error: str | None
    broker_parked: bool


@dataclass(frozen=True)
class Unreadable:
    """A parked message that is no delivery job: kept verbatim for an operator."""

    reason: str
    error: str
    broker_parked: bool


def _text(value: Any) -> str:
    """A header value as text fit for a database column (PostgreSQL refuses NUL)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.replace("\x00", "\ufffd")


def storable(job: DeliveryJob) -> str | None:
    """Why ``job`` cannot be a row of the dead-letter store, or ``None`` if it can.

    Ids come from other services' messages: one that could never be a key (too long, odd
    characters) would fail its insert again and again, so it is kept verbatim instead.
    """
    for name, value in (("delivery_id", job.delivery_id), ("endpoint_id", job.endpoint_id)):
        if not ID_RE.fullmatch(value):
            return f"{name} is not an id (1-64 of A-Z a-z 0-9 _ . : -)"
    return None


def park_reason(headers: Mapping[str, Any]) -> tuple[str, bool]:
    """Why a message was parked, and whether the broker (not a service) parked it.

    Services say why in ``x-dihya-reason``; the broker's own dead-lettering (delivery limit
    exceeded) leaves an ``x-death`` header and no reason.
    """
    reason = headers.get(topology.REASON_HEADER)
    if reason:
        return _text(reason)[:_MAX_REASON], False
    if "x-death" in headers:
        return BROKER_PARKED_REASON, True
    return "unknown", False


def read_dead_letter(body: bytes, headers: Mapping[str, Any]) -> DeadLetter | Unreadable:
    """Read a message from a parking queue: a :class:`DeliveryJob` (signer and deliverer park
    those), a :class:`SignedDelivery` (broker-parked poison of the deliverer's queue: its job is
    what to resend), or anything else (:class:`Unreadable`)."""
    reason, broker = park_reason(headers)
    raw_error = headers.get(topology.ERROR_HEADER)
    error = _text(raw_error)[:_MAX_ERROR] if raw_error else None
    try:
        job = DeliveryJob.model_validate_json(body)
    except ValidationError as exc:
        try:
            job = SignedDelivery.model_validate_json(body).job
        except ValidationError:
            return Unreadable(reason, error or f"not a delivery job: {describe(exc)}"[:_MAX_ERROR],
                              broker)
    problem = storable(job)
    if problem is not None:
        return Unreadable(reason, error or f"not a storable delivery job: {problem}", broker)
    return DeadLetter(job, reason, error, broker)


def read_dead_letters(body: bytes, headers: Mapping[str, Any]
                      ) -> list[DeadLetter] | Unreadable:
    """:func:`read_dead_letter`, and a :class:`DeliveryJobBatch` too — what the broker parks
    when one crashed the signer too often: one :class:`DeadLetter` per job, so each can be
    listed and resent. A batch that is invalid, or holds a job that cannot be stored, is kept
    whole and verbatim."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not (isinstance(data, dict)
            and data.get("type") == DeliveryJobBatch.model_fields["type"].default):
        dead = read_dead_letter(body, headers)
        return [dead] if isinstance(dead, DeadLetter) else dead
    reason, broker = park_reason(headers)
    raw_error = headers.get(topology.ERROR_HEADER)
    error = _text(raw_error)[:_MAX_ERROR] if raw_error else None
    try:
        jobs = DeliveryJobBatch.model_validate(data).jobs
    except ValidationError as exc:
        return Unreadable(reason, error or f"not a batch of delivery jobs: {describe(exc)}"[
            :_MAX_ERROR], broker)
    for job in jobs:
        problem = storable(job)
        if problem is not None:
            return Unreadable(reason, error or f"not a storable delivery job: {problem}", broker)
    return [DeadLetter(job, reason, error, broker) for job in jobs]


def parked_message_id(queue: str, message_id: str | None, body: bytes) -> str:
    """Stable id of a parked unreadable message: a redelivery of it is stored once."""
    ident = message_id or hashlib.sha256(body).hexdigest()
    return "pkm_" + _digest(f"{queue}\x1f{ident}")


def json_safe(value: Any) -> JsonValue:
    """AMQP header values (bytes, datetimes, decimals, nested tables) as plain JSON."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


def last_attempt(job: DeliveryJob) -> int:
    """Number of the last attempt made (0 if none): the history's, else ``attempt - 1``."""
    return max((r.attempt for r in job.history), default=job.attempt - 1)


def merge_history(old: Iterable[AttemptRecord], new: Iterable[AttemptRecord]
                  ) -> tuple[AttemptRecord, ...]:
    """Every attempt of both histories once, in order: a delivery that fails again after a
    manual retry keeps the attempts of its earlier episodes."""
    merged: dict[tuple[int, datetime], AttemptRecord] = {}
    for record in (*old, *new):
        merged[(record.attempt, record.at)] = record
    return tuple(merged[k] for k in sorted(merged))


def absorb(stored: DeliveryJob | None, parked: DeliveryJob) -> DeliveryJob:
    """The job to keep when ``parked`` arrives and ``stored`` is what the store has."""
    if stored is None:
        return parked
    history = merge_history(stored.history, parked.history)
    attempt = max(parked.attempt, max((r.attempt for r in history), default=0) + 1)
    return parked.model_copy(update={"history": history, "attempt": attempt})


def resend(job: DeliveryJob, url: str, retry_schedule_ms: tuple[int, ...] | None = None,
           rate_limit: RateLimit | None = None) -> DeliveryJob:
    """The job a manual retry publishes: attempt = last attempt + 1, the history kept, the
    endpoint's current URL, retry schedule and rate limit (an administrator may have changed them;
    ``None``: the deployment's schedule). The attempt number moves on so the retry's facts and
    signatures never collide with an earlier attempt's.

    The attempt number is not reset, so a schedule counts every attempt of the delivery: a
    resent delivery that fails again is retried only while its attempt number is within the
    schedule, else it is dead-lettered (``exhausted``) at once — one manual retry, one try."""
    return job.model_copy(update={"attempt": last_attempt(job) + 1, "url": url,
                                  "retry_schedule_ms": retry_schedule_ms,
                                  "rate_limit": rate_limit})


def held_fact(held: HeldJob, now: datetime) -> AuditFact:
    """``delivery.held``: a delivery kept for a disabled endpoint (id stable per delivery)."""
    job = held.job
    return AuditFact(id=fact_id("delivery.held", job.delivery_id), kind="delivery.held",
                     occurred_at=now, service="ingest", event_id=job.event.id,
                     event_type=job.event.event, endpoint_id=job.endpoint_id,
                     delivery_id=job.delivery_id, url=job.url, reason=HELD_REASON,
                     tenant=job.tenant, details={"disabled_reason": held.disabled_reason})


def retry_fact(job: DeliveryJob, *, actor: str, via: Literal["retry", "recover", "resend"],
               previous: str, reason: str | None, now: datetime) -> AuditFact:
    """``delivery.retry_requested``: who sent a stored delivery again, and how."""
    return AuditFact(id=new_id("fct"), kind="delivery.retry_requested", occurred_at=now,
                     service="ingest", actor=actor, event_id=job.event.id,
                     event_type=job.event.event, endpoint_id=job.endpoint_id,
                     delivery_id=job.delivery_id, attempt=job.attempt, url=job.url,
                     reason=reason, tenant=job.tenant, details={"via": via, "was": previous})


def broker_parked_fact(queue: str, dead: DeadLetter | Unreadable, body: bytes,
                       now: datetime, *, of_batch: bool = False) -> AuditFact:
    """``delivery.parked`` for what the broker parked on its own (no service audited it);
    ``of_batch``: one job of a parked batch, whose fact also names its delivery."""
    job = dead.job if isinstance(dead, DeadLetter) else None
    item = (job.delivery_id,) if of_batch and job is not None else ()
    return AuditFact(
        id=fact_id("delivery.parked", queue, hashlib.sha256(body).hexdigest(), *item),
        kind="delivery.parked", occurred_at=now, service="ingest",
        event_id=None if job is None else job.event.id,
        event_type=None if job is None else job.event.event,
        endpoint_id=None if job is None else job.endpoint_id,
        delivery_id=None if job is None else job.delivery_id,
        reason=dead.reason, error=dead.error, tenant=None if job is None else job.tenant,
        details={"queue": queue})


# -- endpoint health -----------------------------------------------------------------------

DisableReason = Literal["gone", "failing"]


@dataclass(frozen=True)
class Health:
    """What ingest tracks of an endpoint to decide whether it is dead."""

    status: EndpointStatus
    failing_since: datetime | None = None
    last_delivered_at: datetime | None = None
    reset_at: datetime | None = None
    """When an administrator last re-enabled it: attempts made before do not count."""
    failures: int = 0
    """Failed attempts since the last delivered one (as the facts arrived: concurrent
    deliveries' facts come in any order, so "consecutive" is as the health consumer saw them)."""


Announcement = Literal["failing", "recovered"]
OPERATIONAL_TYPES: tuple[str, ...] = ("endpoint.disabled", "endpoint.failing",
                                      "endpoint.recovered", "delivery.exhausted")
"""The operational events the platform publishes about endpoints and deliveries."""


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as a ``delivery.attempted`` fact reports it."""

    delivered: bool
    status_code: int | None
    at: datetime


@dataclass(frozen=True)
class Verdict:
    health: Health
    disable: DisableReason | None = None
    announce: Announcement | None = None
    """``failing``: the run of failures reached ``failing_after``; ``recovered``: a delivered
    attempt ended a run that had been announced."""


def attempt_of(fact: AuditFact) -> Attempt | None:
    """The attempt a fact reports, or ``None`` if it is not a usable ``delivery.attempted``."""
    if fact.kind != "delivery.attempted" or not fact.endpoint_id:
        return None
    if not ID_RE.fullmatch(fact.endpoint_id):
        return None
    if fact.outcome not in ("delivered", "failed"):
        return None
    return Attempt(fact.outcome == "delivered", fact.status_code, fact.occurred_at)


DELIVERED_RESOLUTION = timedelta(minutes=1)
"""``last_delivered_at`` moves in steps of at least this much, so the steady stream of
successes of a healthy endpoint changes nothing to write (one read per fact, no write)."""


def assess(health: Health, attempt: Attempt, disable_after: timedelta,
           failing_after: int = 0) -> Verdict:
    """The endpoint's health after ``attempt``, and whether it must now be disabled.

    * A delivered attempt clears ``failing_since`` (unless the failing began after it: facts
      of concurrent deliveries arrive in any order) and advances ``last_delivered_at`` (by
      :data:`DELIVERED_RESOLUTION` steps: a failure less than that older than the newest
      success may then open a run that the next success closes — harmless at a days-long
      ``disable_after``).
    * A failed attempt sets ``failing_since`` if unset (or moves it earlier); a failure older
      than the last success is stale and changes nothing.
    * 410 Gone disables at once (``gone``); a failure ``disable_after`` or more after
      ``failing_since`` disables (``failing``). Time is the attempts' own, so a backlog of
      facts neither hastens nor delays the decision.
    * A disabled endpoint is left alone, and re-enabling it starts afresh: attempts made
      before ``reset_at`` (late facts of the old episode) are ignored.
    """
    at = attempt.at
    if health.status != "enabled" or (health.reset_at is not None and at < health.reset_at):
        return Verdict(health)
    if attempt.delivered:
        failing = health.failing_since
        if failing is not None and failing <= at:
            failing = None
        last = health.last_delivered_at
        if last is None or failing != health.failing_since or at - last >= DELIVERED_RESOLUTION:
            last = at if last is None else max(last, at)
        recovered = (failing is None and failing_after > 0
                     and health.failures >= failing_after)
        return Verdict(replace(health, failing_since=failing, last_delivered_at=last,
                               failures=health.failures if failing is not None else 0),
                       announce="recovered" if recovered else None)
    if health.last_delivered_at is not None and at <= health.last_delivered_at:
        return Verdict(health)
    failing = at if health.failing_since is None else min(health.failing_since, at)
    failures = health.failures + 1
    announce: Announcement | None = (
        "failing" if failing_after > 0 and health.failures < failing_after <= failures
        else None)
    if attempt.status_code == 410:
        return Verdict(replace(health, status="disabled", failing_since=failing,
                               failures=failures), "gone", announce)
    if at - failing >= disable_after:
        return Verdict(replace(health, status="disabled", failing_since=failing,
                               failures=failures), "failing", announce)
    return Verdict(replace(health, failing_since=failing, failures=failures), None, announce)


def disabled_fact(endpoint_id: str, url: str, reason: str, *, trigger: str | None,
                  actor: str | None, failing_since: datetime | None, now: datetime,
                  tenant: str | None = None) -> AuditFact:
    """``endpoint.disabled``. Automatic disables take their id from the triggering fact, so
    a redelivered trigger yields the same fact (audit keeps one)."""
    ident = fact_id("endpoint.disabled", trigger) if trigger else new_id("fct")
    return AuditFact(id=ident, kind="endpoint.disabled", occurred_at=now, service="ingest",
                     actor=actor, endpoint_id=endpoint_id, url=url, reason=reason,
                     tenant=tenant, details={"trigger": trigger,
                              "failing_since": None if failing_since is None
                              else failing_since.isoformat()})


def disabled_event(endpoint_id: str, url: str, reason: str, *, trigger: str, now: datetime,
                   tenant: str = DEFAULT_TENANT) -> Event:
    """The operational event announcing an automatic disable; subscribe to
    ``endpoint.disabled`` to be told. Its id derives from the trigger: a redelivery of the
    trigger announces the same event, which receivers drop by id."""
    return Event(id="evt_" + _digest(f"endpoint.disabled:{trigger}"), event="endpoint.disabled",
                 timestamp=now, tenant=tenant,
                 data={"endpoint_id": endpoint_id, "url": url, "reason": reason})


def health_event(announce: Announcement, endpoint_id: str, url: str, *, trigger: str,
                 failures: int, failing_since: datetime | None, now: datetime,
                 tenant: str = DEFAULT_TENANT) -> Event:
    """``endpoint.failing`` / ``endpoint.recovered``; the id derives from the triggering
    fact, like :func:`disabled_event`'s."""
    data: dict[str, JsonValue] = {"endpoint_id": endpoint_id, "url": url}
    if announce == "failing":
        data.update(failures=failures,
                    failing_since=None if failing_since is None else failing_since.isoformat())
    return Event(id="evt_" + _digest(f"endpoint.{announce}:{trigger}"),
                 event=f"endpoint.{announce}", timestamp=now, tenant=tenant, data=data)


def exhausted_event(dead: DeadLetter, now: datetime) -> Event | None:
    """``delivery.exhausted``: a delivery Dihya gave up (dead-lettered), with the reason and a
    summary of its attempts. ``None`` for a delivery of an operational event itself (no loop
    of events about undeliverable events). The id derives from the delivery and its attempt:
    a redelivered dead letter announces the same event."""
    job = dead.job
    if job.event.event in OPERATIONAL_TYPES:
        return None
    history = job.history
    last = history[-1] if history else None
    data: dict[str, JsonValue] = {
        "endpoint_id": job.endpoint_id, "delivery_id": job.delivery_id,
        "event_id": job.event.id, "event_type": job.event.event, "reason": dead.reason,
        "attempts": len(history),
        "first_attempt_at": history[0].at.isoformat() if history else None,
        "last_attempt_at": last.at.isoformat() if last else None,
        "last_status_code": last.status_code if last else None,
        "last_error": (last.error or "")[:200] or None if last else None,
    }
    return Event(id="evt_" + _digest(f"delivery.exhausted:{job.delivery_id}:{job.attempt}"),
                 event="delivery.exhausted", timestamp=now,
                 tenant=job.tenant or DEFAULT_TENANT, data=data)


def enabled_fact(endpoint_id: str, url: str, *, actor: str, held: int, now: datetime,
                 tenant: str | None = None) -> AuditFact:
    """``endpoint.enabled``: an administrator turned a disabled endpoint back on."""
    return AuditFact(id=new_id("fct"), kind="endpoint.enabled", occurred_at=now,
                     service="ingest", actor=actor, endpoint_id=endpoint_id, url=url,
                     tenant=tenant, details={"held_deliveries": held})
