"""Derived audit fact ids (:func:`shared.ids.fact_id`): one derivation, one length, for every
service; the signer's and the deliverer's ids are the ones they derived before it existed, so
the audit store still drops their redelivered facts as duplicates of records already stored."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from services.deliverer import decisions as deliverer
from services.ingest import decisions as ingest
from shared.ids import FACT_DIGITS, fact_id

PARTS = st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=5)


@given(PARTS)
def test_deterministic_prefixed_and_one_length(parts: list[str]) -> None:
    ident = fact_id(*parts)
    assert ident == fact_id(*parts)
    assert ident.startswith("fct_") and len(ident) == 4 + FACT_DIGITS == 36
    assert all(c in "0123456789abcdef" for c in ident[4:])


@given(PARTS, PARTS)
def test_different_parts_different_ids(one: list[str], other: list[str]) -> None:
    # parts never hold U+001F (ids, kinds, timestamps), so the joined text is unambiguous
    if "\x1f" not in "".join(one + other) and one != other:
        assert fact_id(*one) != fact_id(*other)


@given(PARTS)
def test_the_signer_and_deliverer_ids_are_unchanged(parts: list[str]) -> None:
    """The derivation signer and deliverer wrote inline before: sha256 over the parts joined
    with U+001F, 32 hex digits."""
    before = "fct_" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    assert fact_id(*parts) == before


@given(st.binary(max_size=200))
def test_a_raw_body_part_is_hashed_as_its_bytes(body: bytes) -> None:
    before = "fct_" + hashlib.sha256(b"deliverer.parked\x1f" + body).hexdigest()[:32]
    assert fact_id("deliverer.parked", body) == before


def test_every_service_derives_with_it() -> None:
    assert deliverer.fact_id("dlv_1", 2, "delivery.attempted", "p") == fact_id(
        "dlv_1", "2", "delivery.attempted", "p")
    assert ingest.accepted_fact_id("evt_1") == fact_id("event.accepted", "evt_1")
