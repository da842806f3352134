"""The receiver SDK accepts exactly what the signer signs, and nothing altered or replayed."""

from __future__ import annotations

import secrets as rnd
from datetime import UTC, datetime

import pytest
from dihya_receiver import (
    InMemoryNonceStore,
    InvalidSignature,
    MalformedDelivery,
    ReplayedNonce,
    TimestampOutOfTolerance,
    VerificationError,
    guide_signature,
    verify,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from services.signer.decisions import sign
from shared.contracts import DeliveryJob, Event

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def job(data: dict[str, object] | None = None, event_id: str = "evt_1") -> DeliveryJob:
    event = Event(id=event_id, event="template.created", timestamp=NOW, lang="fr",
                  data=data if data is not None else {"user_id": "user42"})
    return DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url="https://x.test/h",
                       event=event)


def signed(secrets: list[str], j: DeliveryJob | None = None) -> tuple[bytes, dict[str, str]]:
    out = sign(j or job(), secrets, nonce=rnd.token_hex(16), now=NOW)
    return out.body.encode(), dict(out.headers)


def check(body: bytes, headers: dict[str, str], secret: str | list[str] = SECRET,
          **kw: object) -> object:
    kw.setdefault("now", NOW.timestamp())
    kw.setdefault("nonce_store", InMemoryNonceStore())
    return verify(body, headers, secret, **kw)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
       secret=st.text(min_size=16, max_size=40).filter(lambda s: "\x00" not in s))
def test_verify_accepts_what_sign_produces(data: dict[str, object], secret: str) -> None:
    body, headers = signed([secret], job(data))
    payload = check(body, headers, secret)
    assert payload["data"] == data  # type: ignore[index]
    assert headers["X-Dihya-Signature"] == guide_signature(secret, body)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_flipping_any_byte_of_body_timestamp_nonce_or_id_fails(data: st.DataObject) -> None:
    body, headers = signed([SECRET])
    target = data.draw(st.sampled_from(["body", "nonce", "webhook-timestamp", "webhook-id"]))
    if target in ("body", "nonce"):
        start = body.index(b'"nonce":"') + 9 if target == "nonce" else 0
        end = start + 32 if target == "nonce" else len(body)
        i = data.draw(st.integers(start, end - 1))
        flipped = bytearray(body)
        flipped[i] ^= data.draw(st.integers(1, 255))
        with pytest.raises(VerificationError):
            check(bytes(flipped), headers)
    else:
        value = headers[target]
        i = data.draw(st.integers(0, len(value) - 1))
        new_char = data.draw(st.characters(codec="ascii").filter(lambda c: c != value[i]))
        altered = {**headers, target: value[:i] + new_char + value[i + 1:]}
        with pytest.raises(VerificationError):
            check(body, altered)


def test_both_secrets_verify_during_a_rotation() -> None:
    new = "whsec_" + "bmV3LXNlY3JldC1ieXRlcy1mb3Itcm90YXRpb24="
    body, headers = signed([new, SECRET])
    assert len(headers["webhook-signature"].split()) == 2
    check(body, headers, new)
    check(body, headers, SECRET)
    with pytest.raises(InvalidSignature):
        check(body, headers, "whsec_" + "b3RoZXItc2VjcmV0LW5vdC1pbi11c2U=")


@pytest.mark.parametrize("skew", [-301, 301, -3600, 86400])
def test_outside_the_tolerance_is_refused_both_ways(skew: int) -> None:
    body, headers = signed([SECRET])
    with pytest.raises(TimestampOutOfTolerance):
        check(body, headers, now=NOW.timestamp() + skew)


@pytest.mark.parametrize("skew", [-300, 0, 299])
def test_inside_the_tolerance_is_accepted(skew: int) -> None:
    body, headers = signed([SECRET])
    check(body, headers, now=NOW.timestamp() + skew)


def test_a_replayed_nonce_is_refused_but_a_new_attempt_is_not() -> None:
    store = InMemoryNonceStore()
    body, headers = signed([SECRET])
    check(body, headers, nonce_store=store)
    with pytest.raises(ReplayedNonce):
        check(body, headers, nonce_store=store)
    body2, headers2 = signed([SECRET])  # a retry: same webhook-id, new nonce
    assert headers2["webhook-id"] == headers["webhook-id"]
    check(body2, headers2, nonce_store=store)


def test_missing_headers_are_malformed() -> None:
    body, headers = signed([SECRET])
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        with pytest.raises(MalformedDelivery):
            check(body, {k: v for k, v in headers.items() if k != name})


def test_headers_are_case_insensitive() -> None:
    body, headers = signed([SECRET])
    check(body, {k.upper(): v for k, v in headers.items()})
