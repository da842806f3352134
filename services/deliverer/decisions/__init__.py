"""Pure delivery decisions: classify an HTTP result, pick the next step, build the records.

No I/O, no clock and no randomness of its own: ``now`` and ``rng`` are passed in, so every
branch is unit-tested.

Outcomes (:func:`classify`):

==========================  =========  ==========  ====================
result                      outcome    retryable   reason
==========================  =========  ==========  ====================
2xx                         delivered  n/a         ``ok``
3xx (never followed)        failed     yes         ``redirect``
410 Gone                    failed     **no**      ``gone``
429, 503                    failed     yes         ``rate_limited`` / ``unavailable``
                                                   (``Retry-After`` honoured)
other 4xx, 5xx, 1xx         failed     yes         ``http_error``
timeout                     failed     yes         ``timeout``
connection refused/reset…   failed     yes         ``connection_error``
TLS failure                 failed     yes         ``tls_error``
address refused (SSRF)      failed     **no**      ``ssrf_blocked``
unusable URL                failed     **no**      ``invalid_url``
sealed headers don't open   failed     yes         ``headers_key`` (DIHYA_HEADERS_KEY differs
                                                   from the signer's; nothing is sent)
==========================  =========  ==========  ====================

Retries (:func:`next_step`): the schedule lists the delay after each failed attempt, so a
schedule of *n* delays allows *n + 1* attempts. It is the endpoint's own schedule when its job
carries one (``DeliveryJob.retry_schedule_ms``), else the deployment's (:func:`schedule_for`).
A retry waits in the wait queue of its delay tier, whose queue TTL is the tier's delay plus
``topology.TIER_HEADROOM``; the message's own expiration is the delay drawn uniformly from
``[delay * (1 - jitter), delay * (1 + jitter)]`` (jitter ≤ the headroom), so failures that
happened together do not retry together. ``Retry-After`` is honoured within
``[tier delay, 1 h]``: a longer wait rides the smallest tier of the schedule at least that long
(capped by its longest tier) with its own expiration, never earlier than asked. The circuit
breaker's wait (:mod:`~services.deliverer.decisions.breaker`) goes the same way: it is a floor
under the ``Retry-After`` (``next_step(..., floor_ms=...)``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

from pydantic import JsonValue, ValidationError
from yarl import URL

from shared import ids, topology
from shared.contracts import AttemptRecord, AuditFact, DeliveryJob, SignedDelivery

MAX_RETRY_AFTER_MS = 3_600_000
EXCERPT_CHARS = 256
MAX_SHOWN_HEADERS = 30
"""Most response headers kept in a ``delivery.attempted`` fact (the first ones, in order)."""
HEADER_VALUE_CHARS = 200
"""Longest header value kept in a fact; longer ones are cut."""
SIGNATURE_HEADERS = frozenset({"x-dihya-signature", "webhook-signature"})
"""Request headers whose values are signatures: shown shortened, never whole."""
WITHHELD_RESPONSE_HEADERS = frozenset({"set-cookie", "set-cookie2", "authorization",
                                       "proxy-authenticate", "www-authenticate"})
"""Response headers a receiver may put credentials in: never kept."""
ErrorKind = Literal["timeout", "connection_error", "tls_error", "ssrf_blocked", "invalid_url",
                    "headers_key"]
_PERMANENT_ERRORS = frozenset({"ssrf_blocked", "invalid_url"})

@dataclass(frozen=True)
class Outcome:
    """What one attempt gave."""

    delivered: bool
    retryable: bool
    reason: str
    status_code: int | None = None
    error: str | None = None
    retry_after_ms: int | None = None

    @property
    def outcome(self) -> Literal["delivered", "failed"]:
        return "delivered" if self.delivered else "failed"


def parse_retry_after(value: str | None, now: datetime) -> int | None:
    """``Retry-After`` in milliseconds from ``now``: delta-seconds or an HTTP date; else None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates: RFC 9110 dates are GMT
        return None
    return max(0, int((when - now).total_seconds() * 1000))


def classify(status: int | None, *, error: ErrorKind | None = None,
             error_text: str | None = None, retry_after: str | None = None,
             now: datetime) -> Outcome:
    """The outcome of an attempt: an HTTP status, or the kind of error that prevented one."""
    if status is None:
        kind = error or "connection_error"
        return Outcome(False, kind not in _PERMANENT_ERRORS, kind,
                       error=error_text or kind)
    failed = f"HTTP {status}"
    if 200 <= status < 300:
        return Outcome(True, False, "ok", status)
    if 300 <= status < 400:
        return Outcome(False, True, "redirect", status, f"{failed} (redirects are not followed)")
    if status == 410:
        return Outcome(False, False, "gone", status, failed)
    if status in (429, 503):
        reason = "rate_limited" if status == 429 else "unavailable"
        return Outcome(False, True, reason, status, failed,
                       retry_after_ms=parse_retry_after(retry_after, now))
    return Outcome(False, True, "http_error", status, failed)


@dataclass(frozen=True)
class Done:
    """Delivered: nothing follows."""


@dataclass(frozen=True)
class Retry:
    """Wait in the ``tier_ms`` wait queue for ``delay_ms`` (≤ ``tier_ms``), then re-sign."""

    tier_ms: int
    delay_ms: int


@dataclass(frozen=True)
class DeadLetter:
    """Give up: park the job with its history, ``reason`` saying why."""

    reason: str


Step = Done | Retry | DeadLetter


def schedule_for(job: DeliveryJob, default: tuple[int, ...]) -> tuple[int, ...]:
    """The retry schedule of ``job``: its endpoint's own (``()`` included: a single attempt),
    else the deployment's ``default``."""
    return default if job.retry_schedule_ms is None else job.retry_schedule_ms


def status_class(status: int | None) -> str:
    """``2xx``…``5xx`` for a metric label, ``none`` when no response came (timeout…)."""
    return "none" if status is None else f"{status // 100}xx"


def next_step(outcome: Outcome, attempt: int, schedule: Sequence[int], rng: random.Random,
              jitter: float = 0.2, *, floor_ms: int | None = None) -> Step:
    """What follows attempt number ``attempt`` (1-based) that gave ``outcome``.

    ``schedule`` is the one in use for this delivery (:func:`schedule_for`); every tier a
    :class:`Retry` names is one of its delays, so the caller knows which wait queues it needs.
    ``floor_ms``: the least the retry waits whatever the receiver said (the deliverer's circuit
    breaker, :mod:`~services.deliverer.decisions.breaker`), taken as a ``Retry-After`` of that
    length — the larger of the two wins. It changes waits only: which attempt is the last
    stays the schedule's.
    """
    if outcome.delivered:
        return Done()
    if not outcome.retryable:
        return DeadLetter(outcome.reason)
    if attempt > len(schedule):
        return DeadLetter("exhausted")
    tier = schedule[attempt - 1]
    jittered = round(tier * (1 + rng.uniform(-jitter, jitter)))
    asked = outcome.retry_after_ms
    if floor_ms is not None and (asked is None or floor_ms > asked):
        asked = floor_ms
    if asked is None or asked <= tier:
        return Retry(tier, min(topology.tier_ttl(tier), max(jittered, asked or 0, 0)))
    wanted = min(asked, MAX_RETRY_AFTER_MS)
    longer = sorted(d for d in set(schedule) if d >= wanted)
    if not longer:  # the schedule has no tier that long: the longest one is the cap
        longest = max(schedule)
        return Retry(longest, longest)
    tier = longer[0]
    return Retry(tier, min(topology.tier_ttl(tier), round(wanted * (1 + rng.uniform(0, jitter)))))


def needs_resign(signed_at: datetime, now: datetime, max_age_s: float) -> bool:
    """Whether a delivery signed at ``signed_at`` is too old to POST (``max_age_s`` 0: never).

    Receivers reject a timestamp outside their tolerance (5 minutes by default), so a delivery
    that sat in a backlog must be re-signed rather than burn an attempt on a certain refusal.
    """
    return max_age_s > 0 and (now - signed_at) > timedelta(seconds=max_age_s)


def _readable(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False))


def parse_signed(body: bytes) -> SignedDelivery:
    """Decode a signed delivery; ``ValueError`` with a readable reason if it is unusable."""
    try:
        return SignedDelivery.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(_readable(exc)) from None


def parse_job(body: bytes) -> DeliveryJob:
    """Decode an ordered endpoint's job (a FIFO lane's message: unsigned, it is signed when
    it is its key's next); ``ValueError`` with a readable reason if it is unusable."""
    try:
        job = DeliveryJob.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(_readable(exc)) from None
    if job.fifo_key is None:
        raise ValueError("fifo_key: a FIFO lane's job must have one")
    return job


def held_step(step: Step, held_s: float, max_hold_s: float) -> Step:
    """``step`` for an ordered delivery held ``held_s`` seconds so far: a :class:`Retry` that
    would start after ``max_hold_s`` (DIHYA_DELIVERER_FIFO_MAX_HOLD, below the broker's
    ``consumer_timeout``) gives up instead (``hold_limit``): past the broker's timeout the
    lane's channel would be closed and its key's deliveries handed back."""
    if isinstance(step, Retry) and held_s + step.delay_ms / 1000 > max_hold_s:
        return DeadLetter("hold_limit")
    return step


def attempt_record(attempt: int, outcome: Outcome, *, at: datetime, duration_ms: float
                   ) -> AttemptRecord:
    return AttemptRecord(attempt=attempt, at=at, outcome=outcome.outcome,
                         status_code=outcome.status_code, duration_ms=round(duration_ms, 3),
                         error=outcome.error)


def next_job(job: DeliveryJob, record: AttemptRecord) -> DeliveryJob:
    """The job of the following attempt: same delivery id, attempt + 1, history extended;
    everything else (the endpoint's retry schedule included) carried over as it was."""
    return job.model_copy(update={"attempt": job.attempt + 1, "deferrals": 0,
                                  "history": (*job.history, record)})


def deferred(signed: SignedDelivery, tiers_ms: tuple[int, ...]) -> tuple[SignedDelivery, int]:
    """The signed delivery to put back for its endpoint's in-flight limit, and how long it
    waits: the ``n``-th deferral of an attempt waits tier ``n`` (doubling), the last tier from
    then on.

    It goes back still signed: it was never sent, so body, signatures and nonce are as good
    as new, and it returns to the deliverer without a signing (a deferral through the signer
    cost a re-sign and one more broker hop each time). Only one that has grown older than
    ``DIHYA_DELIVERER_RESIGN_AFTER`` meanwhile goes to the signer, as any stale delivery does
    (:func:`needs_resign`).

    Why doubling: a job of an endpoint that stays slow would otherwise cost a publish and two
    broker hops every second for as long as that lasts — the work growing with its backlog."""
    job = signed.job
    delay = tiers_ms[min(job.deferrals, len(tiers_ms) - 1)]
    later = job.model_copy(update={"deferrals": job.deferrals + 1})
    return signed.model_copy(update={"job": later}), delay


def fact_id(delivery_id: str, attempt: int, kind: str, post: str | None = None) -> str:
    """Deterministic ``fct_`` id of a delivery's fact.

    Without ``post``: a redelivered job yields the same id, which audit de-dups (one giving
    up per delivery). With ``post`` (the id drawn for one POST, see :func:`attempted_fact`):
    one id per POST, so a job redelivered after its POST — which POSTs again — gets a record
    of its own, while the same fact delivered twice to audit still makes one record.
    """
    return ids.fact_id(delivery_id, str(attempt), kind, *([post] if post is not None else []))


def redact_url(url: str) -> str:
    """The URL without user:password, for records and logs."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None)) if parsed.user or parsed.password else url
    except (ValueError, TypeError):
        return url


def _step_details(step: Step) -> dict[str, str | int | None]:
    if isinstance(step, Retry):
        return {"next": "retry", "retry_in_ms": step.delay_ms}
    if isinstance(step, DeadLetter):
        return {"next": "dead_letter", "dead_letter_reason": step.reason}
    return {"next": "done"}


def shorten_signature(value: str) -> str:
    """A signature header value with each signature cut to its scheme and first 8 characters
    (``v1,K5oZfzN9…``): enough to tell two apart in the console, useless to forge or replay."""
    return " ".join(part[:part.find(",") + 1 + 8] + "…" if "," in part else part[:8] + "…"
                    for part in value.split())


def shown_request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers of an attempt as the message log shows them: signatures
    shortened (:func:`shorten_signature`), values bounded. The signed request carries no
    secret (only signatures), so nothing else needs hiding."""
    shown: dict[str, str] = {}
    for name, value in list(headers.items())[:MAX_SHOWN_HEADERS]:
        if name.lower() in SIGNATURE_HEADERS:
            value = shorten_signature(value)
        shown[name] = value[:HEADER_VALUE_CHARS]
    return shown


def shown_response_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The receiver's response headers as the message log shows them: at most
    :data:`MAX_SHOWN_HEADERS`, values bounded, cookies and authentication headers left out
    (a repeated header keeps its values joined by ``, ``)."""
    shown: dict[str, str] = {}
    for name, value in headers:
        if name.lower() in WITHHELD_RESPONSE_HEADERS:
            continue
        if name not in shown and len(shown) >= MAX_SHOWN_HEADERS:
            continue
        joined = f"{shown[name]}, {value}" if name in shown else value
        shown[name] = joined[:HEADER_VALUE_CHARS]
    return shown


def attempted_fact(job: DeliveryJob, outcome: Outcome, record: AttemptRecord, step: Step,
                   excerpt: bytes, now: datetime, *, post: str,
                   request_headers: Mapping[str, str] | None = None,
                   response_headers: Mapping[str, str] | None = None) -> AuditFact:
    """``delivery.attempted``: one HTTP POST and what it gave. ``post`` is an id drawn for
    that POST (before it is sent): every POST is audited, a repeat of an attempt included —
    audit marks it ``details.repeat`` — while a redelivered copy of this fact stays one.

    ``details`` holds the response excerpt, what follows (retry or dead letter) and, for
    ingest's message log, the request headers (signatures shortened) and response headers
    (see :func:`shown_request_headers`, :func:`shown_response_headers`). They travel in
    ``details`` rather than as new contract fields: an older consumer of ``AuditFact``
    (``extra="forbid"``) would refuse a fact with fields it does not know."""
    return outcome_fact(started_fact(job, now, post=post), outcome, record, step, excerpt, now,
                        request_headers=request_headers, response_headers=response_headers)


def outcome_fact(started: AuditFact, outcome: Outcome, record: AttemptRecord, step: Step,
                 excerpt: bytes, now: datetime, *,
                 request_headers: Mapping[str, str] | None = None,
                 response_headers: Mapping[str, str] | None = None) -> AuditFact:
    """:func:`attempted_fact` made from the POST's own write-ahead ``started`` (the
    :func:`started_fact` confirmed before it): the same fact, its id and fields copied rather
    than derived and checked a second time (the deliverer builds both for every POST)."""
    details: dict[str, JsonValue] = {
        "response_excerpt": excerpt.decode("utf-8", "replace")[:EXCERPT_CHARS],
        **_step_details(step)}
    if request_headers is not None:
        details["request_headers"] = dict(request_headers)
    if response_headers is not None:
        details["response_headers"] = dict(response_headers)
    return started.model_copy(update={
        "kind": "delivery.attempted", "occurred_at": now, "outcome": outcome.outcome,
        "status_code": outcome.status_code, "duration_ms": record.duration_ms,
        "error": outcome.error, "reason": outcome.reason, "details": details})


def started_fact(job: DeliveryJob, now: datetime, *, post: str) -> AuditFact:
    """``delivery.started``: the write-ahead of one POST, confirmed before the POST is sent.

    It carries the id the POST's ``delivery.attempted`` will carry (same ``post``): audit holds
    it aside, outside the chain, until that outcome arrives. If none arrives within
    ``DIHYA_AUDIT_OUTCOME_TIMEOUT`` (the deliverer was killed between its POST and the
    outcome's confirm), audit records the POST itself, under that id, with outcome
    ``unknown`` — so every POST has a record, a POST of a killed deliverer included.
    :func:`attempted_fact` is this fact with the POST's outcome: the same id and fields."""
    return AuditFact(
        id=fact_id(job.delivery_id, job.attempt, "delivery.attempted", post),
        kind="delivery.started",
        occurred_at=now,
        service="deliverer",
        event_id=job.event.id,
        event_type=job.event.event,
        endpoint_id=job.endpoint_id,
        delivery_id=job.delivery_id,
        attempt=job.attempt,
        url=redact_url(job.url),
        tenant=job.tenant,  # the "unknown" record made of it is its tenant's too
    )


def dead_lettered_fact(parked: DeliveryJob, reason: str, now: datetime,
                       held_up: int | None = None) -> AuditFact:
    """``delivery.dead_lettered``: the delivery was given up; ``parked`` holds its history.
    ``held_up``: an ordered delivery's, how many later deliveries of its key waited behind it
    (in this deliverer; more may wait in its lane)."""
    last = parked.history[-1] if parked.history else None
    return AuditFact(
        id=fact_id(parked.delivery_id, parked.attempt - 1, "delivery.dead_lettered"),
        kind="delivery.dead_lettered",
        occurred_at=now,
        service="deliverer",
        event_id=parked.event.id,
        event_type=parked.event.event,
        endpoint_id=parked.endpoint_id,
        delivery_id=parked.delivery_id,
        attempt=parked.attempt - 1,
        url=redact_url(parked.url),
        outcome="dead_lettered",
        status_code=None if last is None else last.status_code,
        error=None if last is None else last.error,
        reason=reason,
        tenant=parked.tenant,
        details={"attempts": len(parked.history)} if held_up is None
        else {"attempts": len(parked.history), "held_up": held_up},
    )


def parked_fact(body: bytes, error: str, now: datetime) -> AuditFact:
    """``delivery.parked``: a message the deliverer could not read, set aside with why."""
    return AuditFact(
        id=ids.fact_id("deliverer.parked", body),
        kind="delivery.parked",
        occurred_at=now,
        service="deliverer",
        reason="invalid_message",
        error=error[:500],
        details={"queue": topology.DELIVERER_JOBS},
    )
