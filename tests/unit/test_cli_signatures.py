"""``dihya listen``'s signature check (:mod:`cli.signatures`) against the specification's
vector, the signer's own functions and the official ``standardwebhooks`` library."""

from __future__ import annotations

import base64
import time

import orjson
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from cli.signatures import verify
from services.signer.decisions import (
    dihya_signature,
    hmac_key,
    standard_signature,
    standard_webhooks_secret,
)

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_HEADERS = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
                  "webhook-timestamp": "1614265330",
                  "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
VECTOR_BODY = b'{"test": 2432232314}'


def test_the_standard_webhooks_vector() -> None:
    verdict = verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_HEADERS, now=1614265330 + 10)
    assert verdict.standard and verdict.fresh
    assert not verdict.dihya, "the vector carries no X-Dihya-Signature"


def test_a_stale_timestamp_and_a_foreign_secret_fail() -> None:
    assert not verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_HEADERS, now=1614265330 + 301).fresh
    other = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()
    assert not verify(other, VECTOR_BODY, VECTOR_HEADERS, now=1614265330).standard


def signed(secret: str, body: bytes, ts: int, extra: str = "") -> dict[str, str]:
    """Headers as the signer writes them (``extra``: a rotation's second signature)."""
    sig = standard_signature(hmac_key(secret), "msg_1", ts, body)
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(ts),
            "Webhook-Signature": f"{extra} {sig}".strip(),
            "X-Dihya-Signature": dihya_signature(secret, body)}


SECRETS = st.one_of(
    st.binary(min_size=16, max_size=40).map(lambda k: "whsec_" + base64.b64encode(k).decode()),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=16, max_size=40))


VALUES = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=20))
BODIES = st.dictionaries(st.text(max_size=8), VALUES, max_size=5).map(orjson.dumps)


@given(SECRETS, BODIES)
def test_what_the_signer_signs_verifies_as_the_library_says(secret: str, body: bytes) -> None:
    ts = int(time.time())  # the library checks against the clock
    headers = signed(secret, body, ts, extra="v1,bm90IG1pbmU=")
    verdict = verify(secret, body, headers, now=ts)
    assert verdict.ok
    Webhook(standard_webhooks_secret(secret)).verify(body, {k.lower(): v
                                                           for k, v in headers.items()})
    tampered = body + b" "
    bad = verify(secret, tampered, headers, now=ts)
    assert not bad.dihya and not bad.standard and not bad.ok
