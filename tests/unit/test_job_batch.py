"""Messages on ``dihya.signer.jobs``: one job or ingest's batch, told apart by their type."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.signer.decisions import parse_jobs
from shared.contracts import (
    MAX_JOBS_PER_BATCH,
    AuditFact,
    DeliveryJob,
    DeliveryJobBatch,
    Event,
    decode_jobs,
    encode,
)

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)


def job(n: int) -> DeliveryJob:
    event = Event(id=f"evt_{n}", event="template.created", timestamp=T0,
                  data={"details": {"tzm": "ⵣ", "n": n}})
    return DeliveryJob(delivery_id=f"dlv_{n}", endpoint_id="ep_1",
                       url="https://receiver.example/hook", event=event)


def test_a_single_job_decodes_as_one() -> None:
    assert decode_jobs(encode(job(1))) == [job(1)]


@given(st.integers(min_value=1, max_value=MAX_JOBS_PER_BATCH))
def test_a_batch_decodes_to_its_jobs_in_order(count: int) -> None:
    jobs = [job(n) for n in range(count)]
    assert decode_jobs(encode(DeliveryJobBatch(jobs=jobs))) == jobs


@pytest.mark.parametrize(("body", "why"), [
    (b"{not json", "not JSON"),
    (orjson.dumps({"type": "dihya.delivery_job_batch.v1", "jobs": []}), "at least 1"),
    (orjson.dumps({"type": "dihya.delivery_job_batch.v1",
                   "jobs": [orjson.loads(encode(job(n)))
                            for n in range(MAX_JOBS_PER_BATCH + 1)]}), "at most 20"),
    (orjson.dumps({"type": "dihya.delivery_job_batch.v1", "jobs": [{"type": "x"}]}),
     "jobs.0"),
    (encode(AuditFact(id="fct_1", kind="event.accepted", occurred_at=T0, service="ingest")),
     "type"),
])
def test_anything_else_is_refused_whole(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_jobs(body)
    with pytest.raises(ValueError, match=why):
        parse_jobs(body)


def test_the_signer_names_what_is_wrong_without_echoing_the_body() -> None:
    bad = orjson.loads(encode(job(1)))
    bad["url"] = 42
    bad["event"]["data"] = {"secret-looking": "whsec_abc"}
    with pytest.raises(ValueError, match=r"jobs\.0\.url") as caught:
        parse_jobs(orjson.dumps({"type": "dihya.delivery_job_batch.v1", "jobs": [bad]}))
    assert "whsec_abc" not in str(caught.value)
