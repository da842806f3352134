"""ed25519 (Standard Webhooks ``v1a``) signatures: the published test vector, the signer's
output, the receiver SDK and the key format."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from dihya_receiver import InvalidSignature, MalformedDelivery, verify
from hypothesis import given, settings
from hypothesis import strategies as st

from services.signer.decisions import UnsignableJobError, sign
from shared.signing_keys import (
    InvalidKeyError,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    public_key_of,
)
from tests.unit.test_signer_signing import NONCE, WHSEC, make_job

RECEIVING = Path(__file__).parents[2] / "docs" / "receiving.md"


def published_vector() -> dict[str, str]:
    """The vector table of docs/receiving.md, read as the receivers read it."""
    page = RECEIVING.read_text()
    block = page.split("<!-- v1a-vector -->", 1)[1].split("<!-- /v1a-vector -->", 1)[0]
    rows = dict(re.findall(r"^\| (.+?) \| `(.+)`.*\|$", block, re.M))
    return {"secret": rows["signing key"], "public": rows["public key"],
            "id": rows["`webhook-id`"], "timestamp": rows["`webhook-timestamp`"],
            "body": rows["body"], "signature": rows["`webhook-signature`"]}


def test_published_vector_verifies_with_cryptography_alone() -> None:
    """Independent of Dihya's code: raw ed25519 from the documented key, id, timestamp, body."""
    v = published_vector()
    seed = base64.b64decode(v["secret"].removeprefix("whsk_"))
    public = base64.b64decode(v["public"].removeprefix("whpk_"))
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert private.public_key().public_bytes_raw() == public
    material = f'{v["id"]}.{v["timestamp"]}.{v["body"]}'.encode()
    scheme, sig = v["signature"].split(",", 1)
    assert scheme == "v1a"
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(sig), material)
    # deterministic: signing again gives exactly the published signature
    assert base64.b64encode(private.sign(material)).decode() == sig
    with pytest.raises(CryptoInvalidSignature):
        Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(sig),
                                                          material + b" ")


def test_dihya_key_helpers_reproduce_the_vector() -> None:
    v = published_vector()
    assert public_key_of(v["secret"]) == v["public"]
    load_public_key(v["public"])  # well-formed


def test_sdk_verifies_the_published_vector_signature() -> None:
    """The SDK's signature check accepts the vector (the body is not a Dihya delivery, so it
    fails later, on the delivery block — after the signature passed)."""
    v = published_vector()
    headers = {"webhook-id": v["id"], "webhook-timestamp": v["timestamp"],
               "webhook-signature": v["signature"]}
    with pytest.raises(MalformedDelivery):
        verify(v["body"], headers, v["public"], now=float(v["timestamp"]))
    with pytest.raises(InvalidSignature):
        verify(v["body"] + " ", headers, v["public"], now=float(v["timestamp"]))


NOW = datetime(2025, 5, 20, 12, 0, 5, tzinfo=UTC)


def test_signer_signs_v1a_without_an_hmac_header() -> None:
    key = generate_signing_key()
    out = sign(make_job(), [key], nonce=NONCE, now=NOW)
    assert "X-Dihya-Signature" not in out.headers
    scheme, sig = out.headers["webhook-signature"].split(",", 1)
    assert scheme == "v1a"
    material = f'evt_01.{int(NOW.timestamp())}.'.encode() + out.body.encode()
    load_public_key(public_key_of(key)).verify(base64.b64decode(sig), material)
    payload = verify(out.body, out.headers, public_key_of(key), now=NOW.timestamp())
    assert payload["delivery"]["nonce"] == NONCE


def test_signer_output_matches_the_vector_key() -> None:
    """Same key, same material: the signer's v1a equals the one cryptography computes."""
    v = published_vector()
    out = sign(make_job(), [v["secret"]], nonce=NONCE, now=NOW)
    material = f'evt_01.{int(NOW.timestamp())}.'.encode() + out.body.encode()
    seed = base64.b64decode(v["secret"].removeprefix("whsk_"))
    expected = base64.b64encode(Ed25519PrivateKey.from_private_bytes(seed).sign(material))
    assert out.headers["webhook-signature"] == "v1a," + expected.decode()


def test_rotation_overlap_sends_both_and_either_public_key_verifies() -> None:
    new, old = generate_signing_key(), generate_signing_key()
    out = sign(make_job(), [new, old], nonce=NONCE, now=NOW)
    parts = out.headers["webhook-signature"].split(" ")
    assert [p.split(",")[0] for p in parts] == ["v1a", "v1a"]
    for key in (new, old):
        verify(out.body, out.headers, public_key_of(key), now=NOW.timestamp(),
               nonce_store=_Fresh())
    with pytest.raises(InvalidSignature):
        verify(out.body, out.headers, public_key_of(generate_signing_key()),
               now=NOW.timestamp(), nonce_store=_Fresh())


def test_an_hmac_secret_does_not_verify_an_ed25519_delivery_nor_the_reverse() -> None:
    key = generate_signing_key()
    ed = sign(make_job(), [key], nonce=NONCE, now=NOW)
    with pytest.raises(InvalidSignature):
        verify(ed.body, ed.headers, WHSEC, now=NOW.timestamp(), nonce_store=_Fresh())
    mac = sign(make_job(), [WHSEC], nonce=NONCE, now=NOW)
    assert "X-Dihya-Signature" in mac.headers
    with pytest.raises(InvalidSignature):
        verify(mac.body, mac.headers, public_key_of(key), now=NOW.timestamp(),
               nonce_store=_Fresh())


def test_an_hmac_endpoint_still_gets_both_hmac_headers_during_a_move_to_ed25519() -> None:
    """Mixed keys (not reachable through the API, but the keystore allows it): the current
    one decides whether X-Dihya-Signature is sent; every key signs in its own scheme."""
    key = generate_signing_key()
    out = sign(make_job(), [WHSEC, key], nonce=NONCE, now=NOW)
    assert [p.split(",")[0] for p in out.headers["webhook-signature"].split()] == ["v1", "v1a"]
    assert "X-Dihya-Signature" in out.headers


def test_a_malformed_signing_key_is_unsignable_and_not_repeated() -> None:
    with pytest.raises(UnsignableJobError) as info:
        sign(make_job(), ["whsk_c2hvcnQ="], nonce=NONCE, now=NOW)
    assert "c2hvcnQ" not in str(info.value)


def test_key_forms() -> None:
    key = generate_signing_key()
    seed = base64.b64decode(key.removeprefix("whsk_"))
    public = base64.b64decode(public_key_of(key).removeprefix("whpk_"))
    long_form = "whsk_" + base64.b64encode(seed + public).decode()
    assert public_key_of(long_form) == public_key_of(key)
    wrong = "whsk_" + base64.b64encode(seed + bytes(32)).decode()
    for bad in (wrong, "whsk_!!", "whsk_" + base64.b64encode(b"x" * 31).decode(), "whsec_x"):
        with pytest.raises(InvalidKeyError):
            load_signing_key(bad)
    with pytest.raises(InvalidKeyError):
        load_public_key("whpk_" + base64.b64encode(b"x" * 31).decode())


@settings(max_examples=30, deadline=None)
@given(body_noise=st.binary(min_size=1, max_size=8), offset=st.integers(0, 400))
def test_any_change_of_body_breaks_v1a(body_noise: bytes, offset: int) -> None:
    key = generate_signing_key()
    out = sign(make_job(), [key], nonce=NONCE, now=NOW)
    raw = out.body.encode()
    at = offset % len(raw)
    tampered = raw[:at] + body_noise + raw[at:]
    with pytest.raises(InvalidSignature):  # the signature is checked before anything else
        verify(tampered, out.headers, public_key_of(key), now=NOW.timestamp(),
               nonce_store=_Fresh())


class _Fresh:
    def check_and_remember(self, nonce: str, expires_at: float, now: float) -> bool:
        return True
