"""Prometheus metrics of the audit service (served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WRITE_LATENCY = Histogram(
    "dihya_audit_write_latency_seconds",
    "From a fact's hand-off to the writer until its batch committed (what an ack waits for).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMIT_SECONDS = Histogram(
    "dihya_audit_batch_commit_seconds",
    "Duration of one batch transaction (dedup check, chaining, insert, commit).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "dihya_audit_batch_size",
    "Facts per committed batch (duplicates included).",
    buckets=(1, 2, 5, 10, 25, 50, 100, 200, 500, 1000, 2000),
)
RECORDS_WRITTEN = Counter(
    "dihya_audit_records_written_total", "Records appended to the audit chain."
)
DUPLICATES = Counter(
    "dihya_audit_duplicates_skipped_total",
    "Facts skipped because their id was already recorded (broker redeliveries).",
)
PARKED = Counter(
    "dihya_audit_messages_parked_total",
    "Messages moved to their parking queue, by queue and reason.",
    ["queue", "reason"],
)
TOKEN_GRANTS = Counter(
    "dihya_audit_token_grants_total",
    "Token grants consumed, by outcome (applied, stale, conflict).",
    ["outcome"],
)
AWAITING_COMMIT = Gauge(
    "dihya_audit_facts_awaiting_commit",
    "Facts handed to the writer whose message is held unacked until their batch commits "
    "(grows while the database is slow or unreachable).",
)
AWAITING_ACCEPTANCE = Gauge(
    "dihya_audit_facts_awaiting_acceptance",
    "Delivery facts held (message unacked) until their event's acceptance is stored.",
)
STORED_BEFORE_ACCEPTANCE = Counter(
    "dihya_audit_stored_before_acceptance_total",
    "Delivery facts stored without their event's acceptance after the acceptance wait "
    "(DIHYA_AUDIT_ACCEPTANCE_WAIT): not linked to the event's data subject.",
)
HEADS_SIGNED = Counter(
    "dihya_audit_heads_signed_total",
    "Signed heads of the chain (every DIHYA_AUDIT_HEADS_INTERVAL, on shutdown, after a purge "
    "and on demand).",
)
HEAD_SIGN_FAILURES = Counter(
    "dihya_audit_head_sign_failures_total",
    "Heads that could not be signed (the database could not be read), or a shutdown that "
    "ended with heads not yet published.",
)
HEAD_PUBLISH_FAILURES = Counter(
    "dihya_audit_head_publish_failures_total",
    "Failed attempts to write a signed head to a sink (`file`, `exchange`); it is retried.",
    ["sink"],
)
HEADS_UNPUBLISHED = Gauge(
    "dihya_audit_heads_unpublished",
    "Signed heads a sink has not taken yet (retried in order).",
    ["sink"],
)
HEAD_PUBLISHED_AT = Gauge(
    "dihya_audit_head_last_published_timestamp_seconds",
    "When a sink last took a signed head (Unix time).",
    ["sink"],
)
CHECKPOINT_NOT_ATTESTED = Counter(
    "dihya_audit_checkpoint_not_attested_total",
    "Heads signed while the newest retention checkpoint did not verify with the service's "
    "checkpoint key (a forged checkpoint: heads do not attest it).",
)
FACT_BYTES_IN_PROCESS = Gauge(
    "dihya_audit_fact_bytes_in_process",
    "Bytes of fact messages held in process, by budget (delivery facts, other facts): "
    "DIHYA_AUDIT_MAX_FACT_BYTES_IN_PROCESS at most each.",
    ["facts"],
)
for _facts in ("delivery", "other"):  # both shown from the start, at 0
    FACT_BYTES_IN_PROCESS.labels(_facts)
