"""``dihya tenants export`` joins ingest's JSON Lines and the audit service's: whatever the
chunking of either stream, every line comes through once, and an audit record is carried as
sent (its hash still checks)."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cli.commands.tenants import audit_record_line, lines_of

RECORDS = [{"seq": 7, "kind": "tenant.created", "tenant": "ten_a", "details": {"n": "}\\n"}},
           {"seq": 9, "kind": "event.accepted", "tenant": "ten_a", "note": "ⵜⴰⴼⴰⴽⵜⵓⵔⵜ"}]
BODY = b"".join(orjson.dumps(r) + b"\n" for r in RECORDS)


@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=8),
       st.sampled_from([b"", b"\n", b"  \n"]))
def test_any_chunking_gives_every_line_once(cuts: list[int], trailer: bytes) -> None:
    body = BODY + trailer
    bounds = [0, *sorted(cuts), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    assert [orjson.loads(line) for line in lines_of(chunks)] == RECORDS


def test_a_last_line_without_its_newline_is_kept() -> None:
    assert list(lines_of([b'{"a":1}\n{"b"', b':2}'])) == [b'{"a":1}', b'{"b":2}']


def test_an_audit_record_is_wrapped_byte_for_byte() -> None:
    raw = orjson.dumps(RECORDS[0])
    line = audit_record_line(raw)
    assert line.endswith(b"}\n") and raw in line
    assert orjson.loads(line) == {"type": "audit_record", "record": RECORDS[0]}
