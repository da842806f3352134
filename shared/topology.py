"""RabbitMQ topology: every exchange, queue and routing key of Dihya, named once.

Every service declares the whole topology at start-up (``declare``). That is idempotent, and it
guarantees that a publisher never sees its message returned as unroutable because the consumer
that owns the target queue has not started yet. ``deploy/rabbitmq/definitions.json`` is
generated from :func:`definitions` so the broker can also be provisioned ahead of time.

Work queues are quorum queues (replicated, durable) with:

* ``x-delivery-limit``: a message that crashes its consumer again and again is parked in the
  queue's dead-letter queue instead of blocking the messages behind it;
* at-least-once dead-lettering (``x-dead-letter-strategy=at-least-once`` needs
  ``x-overflow=reject-publish``): the default, at-most-once strategy can lose messages.

Each work queue ``q`` has a parking queue ``q.dead`` bound on :data:`DEAD_EXCHANGE` with the
routing key ``q``. Consumers park invalid messages there themselves, with the reason in the
``x-dihya-reason`` header; the broker parks there what exceeded the delivery limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EVENTS_EXCHANGE = "dihya.events"
"""Topic exchange platform services publish domain events to; routing key = event type."""
WORK_EXCHANGE = "dihya.work"
"""Direct exchange for internal delivery work (routing keys :data:`SIGN` and :data:`DELIVER`)."""
AUDIT_EXCHANGE = "dihya.audit"
"""Topic exchange for audit facts; routing key = fact kind (``event.accepted``, …)."""
AUDIT_HEADS_EXCHANGE = "dihya.audit.heads"
"""Fanout exchange of the audit chain's signed heads (``dihya.audit.head.v1``): auditors and
SIEMs bind their own queues; :data:`AUDIT_HEADS` keeps the latest ones."""
CONTROL_EXCHANGE = "dihya.control"
"""Topic exchange for control messages: ``secret.<action>`` and ``token.<action>``."""
DEAD_EXCHANGE = "dihya.dead"
"""Direct exchange for parked messages; routing key = the name of the queue they came from."""
RETRY_EXCHANGE = "dihya.retry"
"""Direct exchange feeding the wait queues (retry and defer tiers); routing key = queue name."""

SIGN = "sign"
DELIVER = "deliver"

INGEST_EVENTS = "dihya.ingest.events"
SIGNER_JOBS = "dihya.signer.jobs"
SIGNER_CONTROL = "dihya.signer.control"
DELIVERER_JOBS = "dihya.deliverer.jobs"
AUDIT_FACTS = "dihya.audit.facts"
AUDIT_CONTROL = "dihya.audit.control"
INGEST_HEALTH = "dihya.ingest.health"
INGEST_CONTROL = "dihya.ingest.control"
"""Ingest's copy of the delivery outcomes (``delivery.attempted`` facts) for endpoint health."""

DEFAULT_RETRY_DELAYS_MS = (5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000)
"""The published default retry schedule: wait after each failed attempt (8 attempts, ~27 h)."""
DEFAULT_DEFER_MS = 1_000
"""Default first wait of a job deferred because its endpoint has too many deliveries in flight."""
DEFAULT_DEFER_MAX_MS = 60_000
"""Default longest wait of a deferred job: each deferral of a job waits twice the one before."""


def defer_tiers(first_ms: int, max_ms: int) -> tuple[int, ...]:
    """The wait tiers of deferred jobs: ``first_ms`` doubling, the last one ``max_ms``."""
    if first_ms < 1:
        raise ValueError("the first defer delay must be at least 1 ms")
    tiers = [first_ms]
    while tiers[-1] < max_ms:
        tiers.append(min(tiers[-1] * 2, max_ms))
    return tuple(tiers)


DEFAULT_DEFER_DELAYS_MS = defer_tiers(DEFAULT_DEFER_MS, DEFAULT_DEFER_MAX_MS)

TIER_HEADROOM = 0.25
"""A wait queue's TTL is its tier's delay plus this share, so ±jitter up to it fits inside."""

DELIVERY_LIMIT = 10
"""Deliveries of one message before the broker parks it as poison (crash loops)."""

REASON_HEADER = "x-dihya-reason"
ERROR_HEADER = "x-dihya-error"
SOURCE_HEADER = "x-dihya-source-queue"
HELD_UP_HEADER = "x-dihya-held-up"
"""On an ordered endpoint's dead letter: how many later deliveries of its key waited for it."""
BATCH_HEADER = "x-dihya-jobs"
"""On a :class:`~shared.contracts.DeliveryJobBatch`: how many jobs it holds."""
TRACES_HEADER = "x-dihya-traceparents"
"""On a :class:`~shared.contracts.DeliveryJobBatch` while tracing is on: each job's W3C
``traceparent`` (the trace of the event it came from), in the order of the jobs."""


def dead_queue(queue: str) -> str:
    """Name of the parking queue of ``queue``."""
    return f"{queue}.dead"


def tier_ttl(delay_ms: int) -> int:
    """The queue-level TTL of the wait queue of tier ``delay_ms``: the longest it can hold."""
    return round(delay_ms * (1 + TIER_HEADROOM))


def retry_queue(delay_ms: int) -> str:
    """Name of the wait queue of the retry tier ``delay_ms`` (back to the signer)."""
    return f"dihya.retry.{delay_ms}ms"


def defer_queue(delay_ms: int) -> str:
    """Name of the wait queue of the defer tier ``delay_ms`` (back to the deliverer)."""
    return f"dihya.defer.{delay_ms}ms"


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str


@dataclass(frozen=True)
class Queue:
    name: str
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)
    arguments: dict[str, Any] = field(default_factory=dict)


EXCHANGES = (
    Exchange(EVENTS_EXCHANGE, "topic"),
    Exchange(WORK_EXCHANGE, "direct"),
    Exchange(AUDIT_EXCHANGE, "topic"),
    Exchange(AUDIT_HEADS_EXCHANGE, "fanout"),
    Exchange(CONTROL_EXCHANGE, "topic"),
    Exchange(DEAD_EXCHANGE, "direct"),
    Exchange(RETRY_EXCHANGE, "direct"),
)


def _work_queue(name: str, *bindings: tuple[str, str]) -> Queue:
    return Queue(
        name,
        bindings,
        {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            "x-dead-letter-routing-key": name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


WORK_QUEUES = (
    _work_queue(INGEST_EVENTS, (EVENTS_EXCHANGE, "#")),
    _work_queue(SIGNER_JOBS, (WORK_EXCHANGE, SIGN)),
    _work_queue(SIGNER_CONTROL, (CONTROL_EXCHANGE, "secret.#")),
    _work_queue(DELIVERER_JOBS, (WORK_EXCHANGE, DELIVER)),
    _work_queue(AUDIT_FACTS, (AUDIT_EXCHANGE, "#")),
    _work_queue(AUDIT_CONTROL, (CONTROL_EXCHANGE, "token.#")),
    _work_queue(INGEST_HEALTH, (AUDIT_EXCHANGE, "delivery.attempted")),
    _work_queue(INGEST_CONTROL, (CONTROL_EXCHANGE, "subject.#")),
)


PACED_SHARDS = 8
"""Paced queues: deliveries of rate-limited endpoints, an endpoint always in the same one."""


def paced_key(shard: int) -> str:
    """Routing key (on :data:`WORK_EXCHANGE`) of paced queue number ``shard``."""
    return f"{DELIVER}.paced.{shard}"


def paced_queue(shard: int) -> str:
    """Name of paced queue number ``shard`` (0 ≤ shard < :data:`PACED_SHARDS`)."""
    return f"{DELIVERER_JOBS}.paced.{shard}"


def _paced_queue(shard: int) -> Queue:
    """A work queue with one active consumer (``x-single-active-consumer``): every deliverer
    replica subscribes, RabbitMQ feeds one, and the next takes over when it goes. So one
    process paces each endpoint, whatever the number of replicas. What it parks (the delivery
    limit) lands with the deliverer's own parked jobs (:data:`DELIVERER_JOBS`' parking queue),
    which ingest's dead-letter store reads."""
    base = _work_queue(paced_queue(shard), (WORK_EXCHANGE, paced_key(shard)))
    return Queue(base.name, base.bindings,
                 {**base.arguments, "x-dead-letter-routing-key": DELIVERER_JOBS,
                  "x-single-active-consumer": True})


PACED_QUEUES = tuple(_paced_queue(n) for n in range(PACED_SHARDS))


FIFO_LANES = 16
"""Lanes of ordered (FIFO) endpoints: every delivery of one key of one endpoint goes through
the same one (:func:`shared.ordering.lane_of`). Changing it moves keys between lanes: the
deliveries in flight at that moment may then be reordered (docs/ordering.md)."""


def fifo_key(lane: int) -> str:
    """Routing key (on :data:`WORK_EXCHANGE`) of FIFO lane number ``lane``."""
    return f"fifo.{lane}"


def fifo_queue(lane: int) -> str:
    """Name of FIFO lane number ``lane`` (0 ≤ lane < :data:`FIFO_LANES`)."""
    return f"dihya.fifo.{lane}"


def _fifo_queue(lane: int) -> Queue:
    """A lane: a quorum queue with one active consumer among the deliverer replicas, which
    gets its messages in queue order and, after a takeover, the previous one's unacked
    messages first, in order. No ``x-delivery-limit``: a message held while its key's
    delivery fails, or handed back by a crashed replica, must never be parked for it (the
    deliverer dead-letters a job it gives up on itself, keeping the order)."""
    return Queue(fifo_queue(lane), ((WORK_EXCHANGE, fifo_key(lane)),),
                 {"x-queue-type": "quorum", "x-single-active-consumer": True})


FIFO_QUEUES = tuple(_fifo_queue(n) for n in range(FIFO_LANES))

SIGN_NOW = "dihya.signer.now"
"""Sign-now requests (deliverer → signer, RPC over direct reply-to): a FIFO delivery is signed
when it is its key's next, for each attempt, so a held delivery never carries a stale
signature. Requests expire after :data:`SIGN_NOW_TTL_MS`: the deliverer asks again."""
SIGN_NOW_TTL_MS = 10_000

SIGN_NOW_QUEUE = Queue(SIGN_NOW, ((WORK_EXCHANGE, SIGN_NOW),),
                       {"x-queue-type": "quorum", "x-message-ttl": SIGN_NOW_TTL_MS})


CATCH_UP = "dihya.deliverer.catch-up"
"""Catch-up requests (:class:`~shared.contracts.CatchUpRequest`, deliverer → deliverer): an
endpoint is back, send its waiting retries now. One active consumer among the deliverer
replicas sweeps; a request is acked once its sweep is done, so a killed sweeper's goes to the
next. No dead-letter exchange: a request that fails :data:`DELIVERY_LIMIT` times is dropped —
its deliveries still leave on their schedule."""
CATCH_UP_KEY = "catch-up"
"""Routing key (on :data:`WORK_EXCHANGE`) of :data:`CATCH_UP`."""

CATCH_UP_QUEUE = Queue(CATCH_UP, ((WORK_EXCHANGE, CATCH_UP_KEY),),
                       {"x-queue-type": "quorum", "x-single-active-consumer": True,
                        "x-delivery-limit": DELIVERY_LIMIT})

ENDPOINT_HEADER = "x-dihya-endpoint"
"""On a retry in a wait tier: the id of its endpoint (a catch-up sweep reads it, not the body)."""
DUE_HEADER = "x-dihya-due-ms"
"""On a retry in a wait tier: when its wait ends (Unix epoch, milliseconds). A catch-up sweep
moving it keeps that due time (docs/operations.md, "Catch-up")."""
QUEUED_HEADER = "x-dihya-queued-ms"
"""On a retry in a wait tier: when it was first published there (Unix epoch, ms), which
follows the tier's order (due times, jittered, do not): a catch-up sweep that stopped half-way
is finished in order by it."""
SIDES = ("a", "b")
"""The two side queues of a retry tier, used in turn by catch-up sweeps."""


AUDIT_HEADS = "dihya.audit.heads.recent"
"""Keeps the newest signed heads (:data:`HEADS_KEPT`, a week at one a minute) so a head
published while no auditor's queue is bound is not returned unroutable; read it, or bind
queues of your own to :data:`AUDIT_HEADS_EXCHANGE` to keep them all."""
HEADS_KEPT = 10_080

HEADS_QUEUE = Queue(AUDIT_HEADS, ((AUDIT_HEADS_EXCHANGE, ""),),
                    {"x-queue-type": "quorum", "x-max-length": HEADS_KEPT,
                     "x-overflow": "drop-head"})


def _dead_queues() -> tuple[Queue, ...]:
    return tuple(
        Queue(dead_queue(q.name), ((DEAD_EXCHANGE, q.name),), {"x-queue-type": "quorum"})
        for q in WORK_QUEUES
    )


def _wait_queue(name: str, delay_ms: int, back_to: str) -> Queue:
    return Queue(
        name,
        ((RETRY_EXCHANGE, name),),
        {
            "x-queue-type": "quorum",
            "x-message-ttl": tier_ttl(delay_ms),
            "x-dead-letter-exchange": WORK_EXCHANGE,
            "x-dead-letter-routing-key": back_to,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def retry_queues(delays_ms: tuple[int, ...]) -> tuple[Queue, ...]:
    """Retry wait queues, one per distinct delay tier: expire, then dead-letter back to the
    signer, which signs the next attempt afresh.

    The queue-level TTL (:func:`tier_ttl`) is the tier's upper bound; each message carries its
    own, jittered expiration below it. Messages expire only at the head of a queue, so a message
    leaves no later than the one ahead of it: with every expiration inside the tier's jitter
    band, so is every actual delay.
    """
    return tuple(_wait_queue(retry_queue(d), d, SIGN) for d in sorted(set(delays_ms)))


def side_queue(delay_ms: int, side: str) -> str:
    """Name of side queue ``side`` (one of :data:`SIDES`) of the retry tier ``delay_ms``."""
    return f"{retry_queue(delay_ms)}.{side}"


def side_queues(delay_ms: int) -> tuple[Queue, ...]:
    """The two side queues of the retry tier ``delay_ms``: the arguments of the tier (the same
    TTL bound, dead-lettered to the signer), each bound under its own name. A catch-up sweep
    moves the retries it does not send early there, each with its remaining wait, and
    declares them on first use (they are not part of the static topology)."""
    return tuple(_wait_queue(side_queue(delay_ms, side), delay_ms, SIGN) for side in SIDES)


def defer_queues(delays_ms: tuple[int, ...]) -> tuple[Queue, ...]:
    """Defer wait queues, one per distinct tier: a signed delivery its endpoint had no room
    for waits here, then dead-letters straight back to the deliverer, still signed — it was
    never sent, so its signature is as good as new until the deliverer finds it too old
    (``DIHYA_DELIVERER_RESIGN_AFTER``) and sends it to the signer. Each message expires at
    its tier's delay exactly (no jitter), as :func:`retry_queues`' do within theirs."""
    return tuple(_wait_queue(defer_queue(d), d, DELIVER) for d in sorted(set(delays_ms)))


def queues(retry_delays_ms: tuple[int, ...] = (),
           defer_delays_ms: tuple[int, ...] = ()) -> tuple[Queue, ...]:
    """Every queue of the topology, the retry and defer tiers included when their delays are
    given."""
    return (WORK_QUEUES + PACED_QUEUES + FIFO_QUEUES + (SIGN_NOW_QUEUE,) + _dead_queues()
            + (HEADS_QUEUE, CATCH_UP_QUEUE)
            + retry_queues(retry_delays_ms)
            + defer_queues(defer_delays_ms))


LEADER_POLICY = {
    "name": "dihya-leaders",
    "pattern": r"^dihya\.",
    "apply-to": "queues",
    "priority": 0,
    "definition": {"queue-leader-locator": "balanced"},
}
"""Spread the quorum queues' leaders over the cluster's nodes (RabbitMQ 3.10+): without it,
every leader lands on the node the first declaring service is connected to.

A policy, not the ``x-queue-leader-locator`` queue argument: RabbitMQ 3.10 compares that
argument when a queue is declared again, so adding it to the declarations would make every
service of an existing deployment fail its start with PRECONDITION_FAILED (measured; and an
old replica would fail beside a new one). The policy applies to queues declared afterwards;
existing leaders move with ``rabbitmq-queues rebalance quorum``."""


def definitions(vhost: str = "/", retry_delays_ms: tuple[int, ...] = (),
                defer_delays_ms: tuple[int, ...] = ()) -> dict[str, Any]:
    """The topology as a RabbitMQ definitions document (``rabbitmqctl import_definitions``)."""
    qs = queues(retry_delays_ms, defer_delays_ms)
    return {
        "exchanges": [
            {"name": e.name, "vhost": vhost, "type": e.type, "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}}
            for e in EXCHANGES
        ],
        "queues": [
            {"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False,
             "arguments": q.arguments}
            for q in qs
        ],
        "bindings": [
            {"source": ex, "vhost": vhost, "destination": q.name, "destination_type": "queue",
             "routing_key": rk, "arguments": {}}
            for q in qs for ex, rk in q.bindings
        ],
        "policies": [{"vhost": vhost, **LEADER_POLICY}],
    }


if __name__ == "__main__":  # python -m shared.topology > deploy/rabbitmq/definitions.json
    import json

    print(json.dumps(definitions(retry_delays_ms=DEFAULT_RETRY_DELAYS_MS,
                                 defer_delays_ms=DEFAULT_DEFER_DELAYS_MS),
                     indent=2))
