"""Signer control messages, audit facts and master-key settings: no secret ever leaks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet

from services.signer.decisions import (
    parked_fact,
    parse_control,
    parse_jobs,
    secret_fact,
)
from services.signer.settings import ConfigError, Settings
from shared.contracts import EndpointSecret, encode, utcnow

SECRET = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr"


def control(**fields: object) -> bytes:
    msg: dict[str, object] = {"type": "dihya.endpoint_secret.v1", "endpoint_id": "ep_1",
                              "action": "set", "secret": SECRET,
                              "issued_at": utcnow().isoformat()}
    msg.update(fields)
    return orjson.dumps(msg)


def test_parse_control_accepts_set_and_delete() -> None:
    msg = parse_control(control())
    assert msg.secret is not None and msg.secret.get_secret_value() == SECRET
    assert parse_control(control(action="delete", secret=None)).action == "delete"


@pytest.mark.parametrize("fields", [
    {"secret": None},
    {"secret": ""},
    {"action": "rotate"},
    {"issued_at": "yesterday"},
    {"unexpected": SECRET},
    {"type": "dihya.endpoint_secret.v0"},
])
def test_bad_control_messages_are_refused_without_echoing_the_secret(
        fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"\w") as info:
        parse_control(control(**fields))
    assert SECRET not in str(info.value)
    assert "c2VjcmV0" not in str(info.value)


def test_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON"):
        parse_control(b"{nope")
    with pytest.raises(ValueError, match="JSON"):
        parse_jobs(b"\xff")


def test_secret_fact_names_the_endpoint_never_the_secret() -> None:
    msg = EndpointSecret.model_validate_json(control(
        previous_valid_until=(utcnow() + timedelta(hours=1)).isoformat()))
    fact = secret_fact(msg, applied=True, now=utcnow())
    assert fact.kind == "secret.set"
    assert fact.endpoint_id == "ep_1"
    assert fact.details["action"] == "set"
    assert fact.id.startswith("fct_")
    assert SECRET.encode() not in encode(fact)
    assert fact.id == secret_fact(msg, applied=False, now=utcnow()).id  # redelivery: same id


def test_parked_fact_for_unreadable_message_has_deterministic_id() -> None:
    a = parked_fact(queue="q", reason="invalid_message", error="x", body=b"abc", now=utcnow())
    b = parked_fact(queue="q", reason="invalid_message", error="x", body=b"abc", now=utcnow())
    c = parked_fact(queue="q", reason="invalid_message", error="x", body=b"abd", now=utcnow())
    assert a.id == b.id != c.id
    assert a.kind == "delivery.parked" and a.reason == "invalid_message"


def test_missing_master_key_fails_with_instructions() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(master_key=None, master_key_file=None).cipher()
    text = str(info.value)
    assert "DIHYA_SIGNER_MASTER_KEY" in text and "DIHYA_SIGNER_MASTER_KEY_FILE" in text
    assert "Fernet.generate_key()" in text


def test_invalid_master_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="Fernet keys") as info:
        Settings(master_key="not-a-key-but-private").cipher()
    assert "not-a-key-but-private" not in str(info.value)


def test_master_key_list_rotation_and_file(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = Fernet(old).encrypt(b"x")
    cipher = Settings(master_key=f"{new}, {old}").cipher()
    assert cipher.decrypt(token) == b"x"  # old key still decrypts
    assert Fernet(new).decrypt(cipher.encrypt(b"y")) == b"y"  # first key encrypts
    path = tmp_path / "master.key"
    path.write_text(new + "\n")
    assert Settings(master_key_file=path).cipher().decrypt(Fernet(new).encrypt(b"z")) == b"z"
    with pytest.raises(ConfigError, match="Cannot read"):
        Settings(master_key_file=tmp_path / "missing").cipher()


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("DIHYA_SIGNER_MASTER_KEY", key)
    monkeypatch.setenv("DIHYA_SIGNER_SECRET_WAIT", "1.5")
    monkeypatch.setenv("DIHYA_SIGNER_PORT", "9999")
    settings = Settings()
    assert settings.secret_wait == 1.5 and settings.port == 9999
    assert key not in repr(settings)
    settings.cipher()
