"""Ingest: the front door of Dihya — accepts events and fans them out to subscribed endpoints.

Platform services publish domain events over AMQP straight to the events exchange, or over the
HTTP API (``POST /v1/events``), which republishes them to the same exchange. Either way every
event then takes one path: the consumer of ``dihya.ingest.events`` validates it (rejections are
parked with their reason and audited), gives it a stable id, and publishes one
``DeliveryJob`` per enabled endpoint whose patterns match its type — acking only once every job
and the ``event.accepted`` audit fact are confirmed by the broker.

Ingest also owns the administration API: webhook endpoints (their secret is handed to the
signer in one control message and never stored here) and API tokens (stored as SHA-256 hashes;
their grants are broadcast so other HTTP services can authenticate them).

And it keeps what must not be lost when delivery fails:

* the dead-letter store — deliveries the signer or deliverer gave up on (taken from their
  parking queues with their reason and attempt history), listed, retried and recovered through
  the API;
* held deliveries — events for a disabled endpoint, kept until it is re-enabled;
* endpoint health — judged from the deliverer's ``delivery.attempted`` facts: an endpoint that
  answers 410 or keeps failing for ``DIHYA_INGEST_DISABLE_AFTER`` is disabled, audited and
  announced as an ``endpoint.disabled`` event;
* AMQP deduplication — an event id already fanned out within the window is not fanned out again.
"""
