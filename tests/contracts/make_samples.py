"""Sample messages of every contract version, as producers of that version emit them.

Committed under ``samples/``: once a version is released its samples never change, so a model
edit that would make a consumer reject what old producers still send fails the tests.
Regenerate only when adding a NEW version: ``python -m tests.contracts.make_samples``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shared.anchor import HeadSigner
from shared.contracts import (
    AttemptRecord,
    AuditFact,
    AuditHead,
    CatchUpRequest,
    Contract,
    DeliveryJob,
    EndpointSecret,
    Event,
    RateLimit,
    SignedDelivery,
    SignRefusal,
    SubjectErasure,
    TokenGrant,
    encode,
)

AT = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
EVENT = Event(
    id="evt_01jvh3kq8m0000000000000000",
    event="template.created",
    timestamp=AT,
    lang="fr",
    data={"template_id": "abc123", "user_id": "user42",
          "details": {"fr": "Modèle créé", "en": "Template created", "ar": "تم إنشاء القالب",
                      "tzm": "ⵉⵜⵜⵓⵙⴽⴰ ⵓⵎⴷⵢⴰ"}},
)
ATTEMPT = AttemptRecord(attempt=1, at=AT, outcome="failed", status_code=500, duration_ms=12.5,
                        error="HTTP 500")
JOB = DeliveryJob(delivery_id="dlv_0123456789abcdef0123456789", endpoint_id="ep_01jvh3kq8m",
                  url="https://hooks.example.com/dihya", event=EVENT, attempt=2, history=(ATTEMPT,))

SAMPLES: dict[str, Contract] = {
    "Event": EVENT,
    "Event.minimal": Event(event="incident.security", data={}),
    "AttemptRecord": ATTEMPT,
    "DeliveryJob": JOB,
    "DeliveryJob.own_schedule": JOB.model_copy(update={"retry_schedule_ms": (1_000, 60_000)}),
    "DeliveryJob.rate_limit": JOB.model_copy(
        update={"rate_limit": RateLimit(per_second=5, burst=10)}),
    "DeliveryJob.fifo": JOB.model_copy(update={"fifo_key": "user42"}),
    "SignRefusal": SignRefusal(reason="no_secret",
                               error="no secret for endpoint ep_1 after 5s"),
    "SignedDelivery": SignedDelivery(job=JOB, body='{"id":"evt"}',
                                     headers={"webhook-id": "evt"}, signed_at=AT),
    "AuditFact": AuditFact(id="fct_1", kind="delivery.attempted", occurred_at=AT,
                           service="deliverer", event_id=EVENT.id, endpoint_id="ep_1",
                           delivery_id=JOB.delivery_id, attempt=1, outcome="delivered",
                           status_code=200, duration_ms=3.2, details={"response_excerpt": "ok"}),
    "EndpointSecret": EndpointSecret(endpoint_id="ep_1", action="set",
                                     secret="whsec_c2FtcGxlLW5vdC1hLXJlYWwtc2VjcmV0",  # type: ignore[arg-type]
                                     issued_at=AT),
    "TokenGrant": TokenGrant(token_id="tok_1", role="auditor", token_hash="0" * 64, issued_at=AT),
    "AuditHead": AuditHead.model_validate(HeadSigner(bytes(range(32))).sign(
        seq=120, head_hash="ab" * 32, records=80, time="2025-05-20T12:00:00.000000Z",
        previous_head_hash="0" * 64, checkpoint={"last_seq": 40, "last_hash": "cd" * 32})),
    "SubjectErasure": SubjectErasure(subject="user42", requested_by="tok_1", requested_at=AT),
    "CatchUpRequest": CatchUpRequest(endpoint_id="ep_01jvh3kq8m", requested_at=AT),
    "CatchUpRequest.own_schedule": CatchUpRequest(endpoint_id="ep_01jvh3kq8m", requested_at=AT,
                                                  retry_schedule_ms=(1_000, 60_000)),
}

HERE = Path(__file__).parent / "samples"


def main() -> None:
    """Write the samples not committed yet; a released one is never rewritten (it is what the
    producers of its release sent, whatever today's models would write)."""
    for name, model in SAMPLES.items():
        path = HERE / f"{name}.v1.json"
        if path.exists():
            continue
        path.write_text(json.dumps(orjson.loads(encode(model)), indent=2, ensure_ascii=False)
                        + "\n")


if __name__ == "__main__":
    main()
