"""Prometheus metrics of the deliverer (served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS = Counter("dihya_deliverer_attempts_total", "HTTP delivery attempts.",
                   ["outcome", "reason", "status_class"])
ATTEMPT_SECONDS = Histogram("dihya_deliverer_attempt_seconds", "Duration of one attempt.",
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
RETRIES = Counter("dihya_deliverer_retries_total", "Retries scheduled, by delay tier.",
                  ["tier"])
DEAD = Counter("dihya_deliverer_dead_lettered_total", "Deliveries given up, by reason.",
               ["reason"])
PARKED = Counter("dihya_deliverer_parked_total", "Unreadable messages set aside.")
RESIGNED = Counter("dihya_deliverer_resigned_total",
                   "Deliveries sent back to the signer because their signature was too old.")
DEFERRED = Counter("dihya_deliverer_deferred_total",
                   "Signed deliveries put back for later (a defer tier) because their endpoint "
                   "had too many in flight.")
PACED = Counter("dihya_deliverer_paced_total",
                "Deliveries of rate-limited endpoints, by what the pace gate did: `forwarded` to "
                "their paced queue, `deferred` (their turn was too far), `posted`.",
                ["step"])
ENDPOINT_CONCURRENCY = Gauge(
    "dihya_deliverer_endpoint_concurrency",
    "The highest per-endpoint concurrency limit among the endpoints with deliveries in this "
    "deliverer now (limits adapt per endpoint; no endpoint label: there may be 100,000s).")
TIERS_DECLARED = Counter("dihya_deliverer_tiers_declared_total",
                         "Wait-queue tiers declared on first use (an endpoint's own schedule).")
ORDERED = Counter("dihya_deliverer_ordered_total",
                  "Deliveries of ordered (FIFO) endpoints, by step: `forwarded` to their lane, "
                  "`signed` (a sign-now answer), `unanswered` (a sign-now request that got no "
                  "answer in time: asked again, not an attempt), `held` (a failed attempt "
                  "waiting for its retry, its key's later deliveries behind it).", ["step"])
KEYS_HELD = Gauge("dihya_deliverer_ordered_waiting",
                  "Deliveries of ordered endpoints waiting in this deliverer behind an earlier "
                  "one of their key.")
CATCH_UP = Counter(
    "dihya_deliverer_catch_up_total",
    "Catch-up mode (DIHYA_DELIVERER_CATCH_UP), by step: `requested` (an endpoint back: a "
    "request published), `collapsed` (a request its endpoint's last or running sweep covers), "
    "`sweeps` (sweeps done), `sent_early` (a caught-up endpoint's retry sent before its due "
    "time), `sent_due` (a retry found due during a sweep), `moved` (another endpoint's retry "
    "moved to a side queue with its remaining wait).", ["step"])
CATCH_UP_PACED = Counter(
    "dihya_deliverer_catch_up_paced_seconds_total",
    "Seconds catch-up sweeps waited for the signer's and the deliverer's job queues and the "
    "defer tiers to drain below DIHYA_DELIVERER_CATCH_UP_MAX_QUEUED.")
BREAKER_OPEN = Gauge(
    "dihya_deliverer_breaker_open_endpoints",
    "Endpoints whose circuit breaker is open in this deliverer (DIHYA_DELIVERER_BREAKER_AFTER "
    "failed attempts in a row, none delivered since); each replica counts its own.")
BREAKER_TRANSITIONS = Counter(
    "dihya_deliverer_breaker_transitions_total",
    "Circuit breaker transitions of endpoints, by the state reached: `open` (an endpoint "
    "failed BREAKER_AFTER attempts in a row) or `closed` (an attempt of an open endpoint was "
    "delivered).", ["to"])
BREAKER_DEFERRED = Counter(
    "dihya_deliverer_breaker_deferred_total",
    "Jobs deferred for want of a free slot that wait at least DIHYA_DELIVERER_BREAKER_WAIT "
    "(instead of their own deferral delay, doubling from DEFER_DELAY), because their "
    "endpoint's circuit breaker is open.")
BREAKER_LENGTHENED = Counter(
    "dihya_deliverer_breaker_lengthened_total",
    "Retries that wait in a longer tier than their schedule (and the receiver's Retry-After) "
    "gave them, because their endpoint's circuit breaker is open (DIHYA_DELIVERER_BREAKER_WAIT).")
