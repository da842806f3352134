"""Audit service: the append-only, hash-chained record of everything that happened in Dihya.

Every service publishes :class:`shared.contracts.AuditFact` messages to the audit exchange; this
service consumes them in batches, stores each fact once (a redelivered duplicate is skipped) and
acks a message only after the transaction holding its record has committed. Records are chained
(``hash = sha256(prev_hash + canonical JSON)``) so that a modified, deleted or reordered record
is detected by ``GET /v1/audit/verify``. Auditors query and export the log over HTTP
(``GET /v1/audit/records``, streamed ``GET /v1/audit/export`` as JSON Lines or CSV),
authenticated by the API tokens the control exchange replicates here.

GDPR: a record about a data subject stores its personal fields encrypted with that subject's own
key (``decisions/sealing.py``), so ``POST /v1/audit/subjects/{id}/erasure`` deletes the key and
the data becomes unreadable everywhere while the chain still verifies; ``GET
/v1/audit/subjects/{id}/export`` answers access and portability requests. Retention purges the
oldest records behind a signed checkpoint (``checkpoints.py``). See ``README.md`` here.

One audit *writer* keeps the chain linear: inside a process, a single task writes one batch at a
time; across replicas, PostgreSQL serialises writers with a transaction-scoped advisory lock
(SQLite is a single-host store: a concurrent writer gets ``SQLITE_BUSY`` and its batch is
retried). Running one writer replica is still the recommended shape: more replicas add no
throughput, since every batch waits for that one lock.
"""
