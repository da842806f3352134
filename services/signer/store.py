"""The keystore: endpoint secrets, Fernet-encrypted at rest (SQLAlchemy Core, SQLite or PG).

Tables (see ``migrations/``):

* ``secrets(id, endpoint_id, ciphertext, created_at, valid_until)`` — ``valid_until`` NULL is the
  endpoint's current secret; a previous secret keeps signing until its ``valid_until`` (rotation
  overlap). The plaintext is encrypted together with its endpoint id, so a ciphertext copied onto
  another endpoint's row fails to decrypt instead of signing for the wrong endpoint.
* ``secret_versions(endpoint_id, issued_at, action)`` — the ``issued_at`` of the newest control
  message applied per endpoint. Control messages are delivered at least once and several signer
  replicas compete for them, so a duplicate or an older message arriving late must not undo a
  newer rotation: it is ignored. The version row is upserted first, which also serialises
  concurrent rotations of one endpoint (the row lock on PostgreSQL, the write lock on SQLite).

* ``endpoint_headers(endpoint_id, ciphertext, issued_at)`` — the endpoint's custom headers
  (#22), the whole set encrypted together with the endpoint id; versioned by its own
  ``issued_at`` (a header change and a rotation are independent).

A dump of the database shows ciphertext only; the master key lives in the environment.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.signer.decisions import StoredSecret
from shared.contracts import EndpointSecret
from shared.db import UTCDateTime

MIGRATIONS = Path(__file__).parent / "migrations"


metadata = MetaData()

secrets_table = Table(
    "secrets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint_id", String(128), nullable=False, index=True),
    Column("ciphertext", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime, nullable=True),
)

versions_table = Table(
    "secret_versions",
    metadata,
    Column("endpoint_id", String(128), primary_key=True),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("action", String(16), nullable=False),
)


headers_table = Table(
    "endpoint_headers",
    metadata,
    Column("endpoint_id", String(128), primary_key=True),
    Column("ciphertext", Text, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
)


class CorruptKeystoreError(Exception):
    """A row that no configured master key decrypts (wrong key, or a tampered row)."""


class Keystore:
    """Encrypted secrets of every endpoint; shared by the signer replicas."""

    def __init__(self, engine: AsyncEngine, cipher: MultiFernet) -> None:
        self._engine = engine
        self._cipher = cipher

    def _encrypt(self, endpoint_id: str, secret: str) -> str:
        plain = orjson.dumps({"endpoint_id": endpoint_id, "secret": secret})
        return self._cipher.encrypt(plain).decode("ascii")

    def _decrypt(self, endpoint_id: str, ciphertext: str) -> str:
        try:
            plain = orjson.loads(self._cipher.decrypt(ciphertext.encode("ascii")))
        except (InvalidToken, orjson.JSONDecodeError):
            raise CorruptKeystoreError(
                f"a secret of {endpoint_id} does not decrypt with the configured master key(s)"
            ) from None
        if plain.get("endpoint_id") != endpoint_id:
            raise CorruptKeystoreError(f"a secret row of {endpoint_id} belongs to another endpoint")
        return str(plain["secret"])

    async def _apply_headers(self, msg: EndpointSecret) -> bool:
        async with self._engine.begin() as conn:
            return await self._upsert_headers(conn, msg)

    async def _upsert_headers(self, conn: AsyncConnection, msg: EndpointSecret) -> bool:
        """Store ``msg.headers`` unless a newer set is stored (``False`` then)."""
        assert msg.headers is not None
        plain = {k: v.get_secret_value() for k, v in msg.headers.items()}
        values = {"endpoint_id": msg.endpoint_id, "issued_at": msg.issued_at,
                  "ciphertext": self._encrypt(msg.endpoint_id, orjson.dumps(plain).decode())}
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        upsert = insert(headers_table).values(**values)
        stmt = upsert.on_conflict_do_update(
            index_elements=[headers_table.c.endpoint_id],
            set_={"issued_at": upsert.excluded.issued_at,
                  "ciphertext": upsert.excluded.ciphertext},
            where=headers_table.c.issued_at < upsert.excluded.issued_at,
        ).returning(headers_table.c.endpoint_id)
        return (await conn.execute(stmt)).first() is not None

    async def load_headers(self, endpoint_id: str) -> dict[str, str]:
        """The endpoint's custom headers, decrypted (empty if it has none)."""
        query = select(headers_table.c.ciphertext).where(
            headers_table.c.endpoint_id == endpoint_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return {}
        found = orjson.loads(self._decrypt(endpoint_id, row.ciphertext))
        return {str(k): str(v) for k, v in found.items()}

    async def apply(self, msg: EndpointSecret, now: datetime) -> bool:
        """Apply a control message; ``False`` if a newer one was already applied (ignored).

        ``headers``: the endpoint's custom headers are replaced (versioned on their own); a
        ``set`` may carry them too (an endpoint created with headers gets both at once).
        ``set``: the new secret becomes current. If ``previous_valid_until`` is in the future,
        the secret that was current keeps signing until then; otherwise it is dropped. Previous
        secrets whose overlap is over are cleaned up. ``delete``: every secret goes.
        """
        if msg.action == "headers":
            return await self._apply_headers(msg)
        async with self._engine.begin() as conn:
            values: dict[str, Any] = {"endpoint_id": msg.endpoint_id,
                                      "issued_at": msg.issued_at, "action": msg.action}
            dialect = conn.dialect.name
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            upsert = insert(versions_table).values(**values)
            stmt = upsert.on_conflict_do_update(
                index_elements=[versions_table.c.endpoint_id],
                set_={"issued_at": upsert.excluded.issued_at,
                      "action": upsert.excluded.action},
                where=versions_table.c.issued_at < upsert.excluded.issued_at,
            ).returning(versions_table.c.endpoint_id)
            if (await conn.execute(stmt)).first() is None:
                return False

            rows = secrets_table.c
            mine = rows.endpoint_id == msg.endpoint_id
            if msg.action == "delete":
                await conn.execute(delete(secrets_table).where(mine))
                await conn.execute(delete(headers_table).where(
                    headers_table.c.endpoint_id == msg.endpoint_id))
                return True
            assert msg.secret is not None
            await conn.execute(delete(secrets_table).where(
                mine, rows.valid_until.is_not(None), rows.valid_until <= now))
            overlap = msg.previous_valid_until
            if overlap is not None and overlap > now:
                await conn.execute(update(secrets_table)
                                   .where(mine, rows.valid_until.is_(None))
                                   .values(valid_until=overlap))
            else:
                await conn.execute(delete(secrets_table).where(mine, rows.valid_until.is_(None)))
            await conn.execute(secrets_table.insert().values(
                endpoint_id=msg.endpoint_id,
                ciphertext=self._encrypt(msg.endpoint_id, msg.secret.get_secret_value()),
                created_at=now,
                valid_until=None,
            ))
            if msg.headers is not None:  # an endpoint created with headers: both at once
                await self._upsert_headers(conn, msg)
            return True

    async def load(self, endpoint_id: str, now: datetime) -> list[StoredSecret]:
        """The endpoint's secrets that are current or still inside their overlap, decrypted."""
        rows = secrets_table.c
        query = select(rows.ciphertext, rows.created_at, rows.valid_until).where(
            rows.endpoint_id == endpoint_id,
            (rows.valid_until.is_(None)) | (rows.valid_until > now),
        )
        async with self._engine.connect() as conn:
            result = (await conn.execute(query)).all()
        return [
            StoredSecret(self._decrypt(endpoint_id, r.ciphertext), r.created_at, r.valid_until)
            for r in result
        ]

    async def ping(self) -> bool:
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
