"""``dihya audit subject-export`` adds ingest's retained payloads to the audit service's
streamed subject export: whatever the chunking, the result is the audit document plus
``payloads``."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.commands.audit import with_payloads

AUDIT_DOC = orjson.dumps({
    "type": "dihya.audit.subject_export.v1", "subject": "u42",
    "generated_at": "2026-01-01T00:00:00Z",
    "records": [{"seq": 1, "kind": "event.accepted", "details": {"n": "}"}}],
    "events": [{"event_id": "evt_1"}], "recipients": ["https://a.example.com/h"]})
PAYLOADS = [{"id": "evt_1", "event": "order.paid", "received_at": "2026-01-01T00:00:00Z",
             "payload": {"data": {"user_id": "u42", "note": "ⵜⴰⴼⴰⴽⵜⵓⵔⵜ"}}}]


@given(st.lists(st.integers(min_value=0, max_value=len(AUDIT_DOC)), max_size=8),
       st.sampled_from([b"", b"\n", b"  \r\n"]))
def test_any_chunking_gives_the_audit_document_plus_the_payloads(
    cuts: list[int], trailer: bytes
) -> None:
    doc = AUDIT_DOC + trailer
    bounds = [0, *sorted(cuts), len(doc)]
    chunks = [doc[a:b] for a, b in itertools.pairwise(bounds)]
    out = b"".join(with_payloads(iter(chunks), PAYLOADS))
    assert orjson.loads(out) == {**orjson.loads(AUDIT_DOC), "payloads": PAYLOADS}


def test_no_payload_retained_is_an_empty_list() -> None:
    out = orjson.loads(b"".join(with_payloads([AUDIT_DOC], [])))
    assert out["payloads"] == [] and out["records"]


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'{"records": ['])
def test_a_body_that_is_no_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="not one JSON object"):
        b"".join(with_payloads([body], PAYLOADS))
