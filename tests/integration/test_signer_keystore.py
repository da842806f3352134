"""The signer's keystore on SQLite and PostgreSQL: encryption at rest, rotation, ordering."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.signer.decisions import valid_secrets
from services.signer.store import (
    MIGRATIONS,
    CorruptKeystoreError,
    Keystore,
    headers_table,
    secrets_table,
)
from shared.contracts import EndpointSecret, utcnow
from shared.db import make_engine, migrate

pytestmark = pytest.mark.integration

KEY = Fernet.generate_key()
SECRET = "whsec_dGhpcy1zZWNyZXQtbXVzdC1uZXZlci1iZS1pbi1hLWR1bXA="
FREE = "free-form secret that must never be in a dump"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url)
    await migrate(eng, MIGRATIONS)
    await migrate(eng, MIGRATIONS)  # idempotent
    yield eng
    await eng.dispose()


def setmsg(endpoint: str, secret: str, *, overlap: timedelta | None = None,
           issued_delta: timedelta = timedelta()) -> EndpointSecret:
    now = utcnow()
    return EndpointSecret(endpoint_id=endpoint, action="set", secret=SecretStr(secret),
                          previous_valid_until=None if overlap is None else now + overlap,
                          issued_at=now + issued_delta)


async def current(store: Keystore, endpoint: str) -> tuple[str, ...]:
    return valid_secrets(await store.load(endpoint, utcnow()), utcnow())


async def test_set_rotate_with_overlap_and_delete(engine: AsyncEngine) -> None:
    store = Keystore(engine, MultiFernet([Fernet(KEY)]))
    assert await store.ping()
    assert await current(store, "ep_a") == ()
    assert await store.apply(setmsg("ep_a", "one"), utcnow())
    assert await current(store, "ep_a") == ("one",)
    # Rotation without overlap drops the old secret.
    assert await store.apply(setmsg("ep_a", "two"), utcnow())
    assert await current(store, "ep_a") == ("two",)
    # Rotation with overlap keeps it until the deadline, current first.
    assert await store.apply(setmsg("ep_a", "three", overlap=timedelta(hours=1)), utcnow())
    assert await current(store, "ep_a") == ("three", "two")
    # An overlap that is over does not sign any more.
    later = utcnow() + timedelta(hours=2)
    assert valid_secrets(await store.load("ep_a", later), later) == ("three",)
    # Other endpoints are untouched.
    assert await store.apply(setmsg("ep_b", "bee"), utcnow())
    assert await current(store, "ep_a") == ("three", "two")
    delete = EndpointSecret(endpoint_id="ep_a", action="delete", issued_at=utcnow())
    assert await store.apply(delete, utcnow())
    assert await current(store, "ep_a") == ()
    assert await current(store, "ep_b") == ("bee",)


async def test_duplicate_or_stale_control_message_is_ignored(engine: AsyncEngine) -> None:
    store = Keystore(engine, MultiFernet([Fernet(KEY)]))
    old = setmsg("ep_s", "old", issued_delta=timedelta(seconds=-10))
    new = setmsg("ep_s", "new", overlap=timedelta(hours=1))
    assert await store.apply(old, utcnow())
    assert await store.apply(new, utcnow())
    assert not await store.apply(new, utcnow())  # redelivered: no second copy
    assert not await store.apply(old, utcnow())  # late: does not undo the rotation
    assert await current(store, "ep_s") == ("new", "old")


async def test_rows_hold_only_ciphertext_and_are_bound_to_their_endpoint(
        engine: AsyncEngine, database_url: str) -> None:
    store = Keystore(engine, MultiFernet([Fernet(KEY)]))
    await store.apply(setmsg("ep_x", SECRET), utcnow())
    await store.apply(setmsg("ep_y", FREE), utcnow())
    async with engine.connect() as conn:
        rows = (await conn.execute(select(secrets_table))).mappings().all()
    dump = repr(rows)
    assert SECRET not in dump and FREE not in dump and "dGhpcy1zZWNyZXQ" not in dump
    if database_url.startswith("sqlite"):
        await engine.dispose()  # checkpoint; the glob below scans any -wal/-shm left too
        path = Path(make_url(database_url).database or "")
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert len(raw) > 0
        for needle in (SECRET, FREE, "dGhpcy1zZWNyZXQtbXVzdC1uZXZlci1iZS1pbi1hLWR1bXA"):
            assert needle.encode() not in raw
            assert needle.encode("utf-16-le") not in raw
    # A ciphertext moved onto another endpoint's row does not sign for it.
    x = next(r for r in rows if r["endpoint_id"] == "ep_x")
    async with engine.begin() as conn:
        await conn.execute(update(secrets_table).where(secrets_table.c.endpoint_id == "ep_y")
                           .values(ciphertext=x["ciphertext"]))
    with pytest.raises(CorruptKeystoreError):
        await store.load("ep_y", utcnow())


async def test_master_key_rotation_keeps_old_rows_readable(engine: AsyncEngine) -> None:
    old = Keystore(engine, MultiFernet([Fernet(KEY)]))
    await old.apply(setmsg("ep_m", "kept"), utcnow())
    new_key = Fernet.generate_key()
    rotated = Keystore(engine, MultiFernet([Fernet(new_key), Fernet(KEY)]))
    assert await current(rotated, "ep_m") == ("kept",)
    wrong = Keystore(engine, MultiFernet([Fernet(new_key)]))
    with pytest.raises(CorruptKeystoreError):
        await wrong.load("ep_m", utcnow())


def headersmsg(endpoint: str, headers: dict[str, str], *,
               issued_delta: timedelta = timedelta()) -> EndpointSecret:
    return EndpointSecret(endpoint_id=endpoint, action="headers",
                          headers={k: SecretStr(v) for k, v in headers.items()},
                          issued_at=utcnow() + issued_delta)


async def test_custom_headers_encrypted_versioned_apart_from_secrets_and_deleted(
    engine: AsyncEngine
) -> None:
    store = Keystore(engine, MultiFernet([Fernet(KEY)]))
    value = "gateway-key-that-must-never-be-in-a-dump"
    second = "second-gateway-key-never-in-a-dump"  # long: "v2" turned up in ciphertext by chance
    assert await store.load_headers("ep_h") == {}
    assert await store.apply(headersmsg("ep_h", {"X-Api-Key": value}), utcnow())
    assert await store.load_headers("ep_h") == {"X-Api-Key": value}
    # a secret rotation issued later does not make a header change stale, nor the reverse
    assert await store.apply(setmsg("ep_h", FREE, issued_delta=timedelta(seconds=5)), utcnow())
    assert await store.apply(headersmsg("ep_h", {"X-Api-Key": second},
                                        issued_delta=timedelta(seconds=1)), utcnow())
    assert await store.load_headers("ep_h") == {"X-Api-Key": second}
    # a late, older header message is ignored
    assert not await store.apply(headersmsg("ep_h", {"X-Api-Key": "old"},
                                            issued_delta=timedelta(seconds=-60)), utcnow())
    assert await store.load_headers("ep_h") == {"X-Api-Key": second}
    async with engine.connect() as conn:
        dump = repr((await conn.execute(select(headers_table))).all())
    assert second not in dump and value not in dump and "X-Api-Key" not in dump
    assert await store.apply(EndpointSecret(endpoint_id="ep_h", action="delete",
                                            issued_at=utcnow() + timedelta(seconds=10)),
                             utcnow())
    assert await store.load_headers("ep_h") == {}




async def test_a_secret_set_may_carry_the_headers_of_a_new_endpoint(engine: AsyncEngine) -> None:
    store = Keystore(engine, MultiFernet([Fernet(KEY)]))
    msg = EndpointSecret(endpoint_id="ep_new", action="set", secret=SecretStr(FREE),
                         headers={"X-Api-Key": SecretStr("k")}, issued_at=utcnow())
    assert await store.apply(msg, utcnow())
    assert await current(store, "ep_new") == (FREE,)
    assert await store.load_headers("ep_new") == {"X-Api-Key": "k"}
