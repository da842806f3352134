"""The AsyncAPI 3.0 document of Dihya's broker interface, built from the topology and contracts.

Platform teams read it to publish events (``dihya.events``); operators and service authors read
it for the internal channels. ``python -m shared.asyncapi`` rewrites ``docs/asyncapi.json``; a
test fails when the committed document is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared import topology
from shared.contracts import (
    EVENT_TYPE_TAG,
    AuditFact,
    AuditFactBatch,
    AuditHead,
    CatchUpRequest,
    Contract,
    DeliveryJob,
    DeliveryJobBatch,
    EndpointSecret,
    Event,
    SignedDelivery,
    SignRefusal,
    SubjectErasure,
    TokenGrant,
)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"

_CHANNELS: list[tuple[str, str, str, tuple[type[Contract], ...], str]] = [
    # (channel id, exchange, routing key, payloads, who publishes → who consumes)
    ("events", topology.EVENTS_EXCHANGE, "{eventType}", (Event,),
     "Platform services publish domain events here; ingest consumes them from "
     "`dihya.ingest.events`. The routing key must be the event's type (its `event` field, e.g. "
     "`template.created`): RabbitMQ topic permissions on routing keys then bind which types "
     "each publisher may announce. Set the AMQP "
     f"`type` property to `{EVENT_TYPE_TAG}` (optional) and a `message_id` (recommended: a "
     "redelivered message then keeps its event id). Persistent messages, publisher confirms. "
     "The limits of `POST /v1/events` hold here too: a body of at most "
     "`DIHYA_INGEST_MAX_BODY_BYTES` bytes (262144 by default), valid UTF-8 JSON with no NaN, "
     "Infinity, -Infinity or number beyond a double's range, no key twice in one object, and "
     "at most 200 levels of nesting. An event that breaks a rule is not delivered: it is "
     "parked in `dihya.ingest.events.dead` with the reason in its `x-dihya-reason` header "
     "(`body_too_large`, `invalid_json`, `non_finite_number`, `duplicate_key`, "
     "`schema_invalid`, `unsupported_type`, `routing_key_mismatch`, `unknown_event_type`, "
     "`fanout_limit`) and audited as `event.rejected`."),
    ("sign", topology.WORK_EXCHANGE, topology.SIGN, (DeliveryJob, DeliveryJobBatch),
     "Ingest (fan-out) and the retry tiers → signer (`dihya.signer.jobs`). Ingest sends the "
     "jobs that pile up while its last batch awaits its confirm as one batch; a retry is one "
     "job."),
    ("deliver", topology.WORK_EXCHANGE, topology.DELIVER, (SignedDelivery,),
     "Signer and the defer tiers → deliverer (`dihya.deliverer.jobs`): a delivery whose "
     "endpoint had too many in flight comes back, still signed, after its wait."),
    ("fifo", topology.WORK_EXCHANGE, "fifo.{lane}", (DeliveryJob,),
     "Ingest → deliverer (`dihya.fifo.{lane}`, lanes 0 to 15, one active consumer each): the "
     "jobs of ordered (`ordering: fifo`) endpoints, unsigned, in the order ingest accepted "
     "their events; the lane of a job is crc32(endpoint id, NUL, `fifo_key`) mod 16. A "
     "deliverer sends a manual retry of such a job here too (docs/ordering.md)."),
    ("sign-now", topology.WORK_EXCHANGE, topology.SIGN_NOW,
     (DeliveryJob, SignedDelivery, SignRefusal),
     "Deliverer → signer (`dihya.signer.now`), a request over direct reply-to: a "
     "`DeliveryJob` with `reply_to` = `amq.rabbitmq.reply-to` and a `correlation_id`; the "
     "signer answers to the asking channel (default exchange, routing key = `reply_to`, same "
     "`correlation_id`) with the `SignedDelivery` or a `SignRefusal`. Requests expire after "
     "10 s unanswered; the deliverer asks again."),
    ("catch-up", topology.WORK_EXCHANGE, topology.CATCH_UP_KEY, (CatchUpRequest,),
     "Deliverer → deliverer (`dihya.deliverer.catch-up`, one active consumer among the "
     "replicas), with `DIHYA_DELIVERER_CATCH_UP` on: an endpoint that was failing answers "
     "again, so its retries waiting in the retry tiers are sent now (docs/operations.md, "
     "\"Catch-up\"). Retries in the tiers carry the headers `x-dihya-endpoint`, "
     "`x-dihya-queued-ms` and `x-dihya-due-ms` (epoch ms) the sweep reads."),
    ("audit", topology.AUDIT_EXCHANGE, "{factKind}", (AuditFact, AuditFactBatch),
     "Every service → audit (`dihya.audit.facts`); routing key = fact kind. A batch holds facts "
     "of that one kind; `delivery.attempted` is also read by ingest (`dihya.ingest.health`)."),
    ("heads", topology.AUDIT_HEADS_EXCHANGE, "", (AuditHead,),
     "Audit → auditors and SIEMs: the audit chain's signed heads (every 60 s by default, on "
     "shutdown, after a retention purge, on demand), fanout: bind a queue of your own to keep "
     "every head; `dihya.audit.heads.recent` keeps the newest ones. Verify them offline with "
     "the audit service's public key (`dihya audit verify --heads`)."),
    ("secrets", topology.CONTROL_EXCHANGE, "secret.{action}", (EndpointSecret,),
     "Ingest → signer (`dihya.signer.control`): the only message that carries a secret."),
    ("tokens", topology.CONTROL_EXCHANGE, "token.{action}", (TokenGrant,),
     "Ingest → audit (`dihya.audit.control`): API token hashes and roles."),
    ("subjects", topology.CONTROL_EXCHANGE, "subject.erase", (SubjectErasure,),
     "Audit → ingest (`dihya.ingest.control`): a data subject was erased (GDPR Art. 17); "
     "ingest removes the subject's payloads from its message log."),
]


def build() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for cid, exchange, key, models, description in _CHANNELS:
        for model in models:
            name = model.__name__
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
            messages[name] = {
                "name": name,
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
        channels[cid] = {
            "address": key,
            "description": description,
            "messages": {m.__name__: {"$ref": f"#/components/messages/{m.__name__}"}
                         for m in models},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": exchange, "type": _exchange_type(exchange), "durable": True,
                "autoDelete": False, "vhost": "/"}, "bindingVersion": "0.3.0"}},
        }
        operations[f"publish_{cid}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True,
                                  "bindingVersion": "0.3.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Dihya Webhooks — broker interface",
            "version": "1.0.0",
            "description": "Exchanges, routing keys and message contracts of Dihya Webhooks. "
            "Every message is persistent JSON; contracts are versioned (see `type`).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _exchange_type(name: str) -> str:
    return next(e.type for e in topology.EXCHANGES if e.name == name)


if __name__ == "__main__":
    DOC_PATH.parent.mkdir(exist_ok=True)
    DOC_PATH.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {DOC_PATH}")
