"""Audit service settings (environment variables ``DIHYA_AUDIT_*`` plus the shared ``DIHYA_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class AuditSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIHYA_AUDIT_", extra="ignore", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Interface the HTTP API listens on.")
    port: int = Field(default=8083, ge=0, le=65535, description="TCP port of the HTTP API.")
    database_url: str = Field(
        default="sqlite:///./data/audit.db",
        description="Audit store: `sqlite:///path` (default) or `postgresql://user@host/db`.",
    )
    prefetch: int = Field(
        default=1000, ge=1, le=2000,
        description="Unacked facts held at once; must exceed the batch size so batches fill "
                    "(quorum queues cap prefetch at 2,000).",
    )
    batch_size: int = Field(
        default=200, ge=1, le=5000,
        description="Facts committed in one transaction; a batch is flushed as soon as it is full.",
    )
    batch_wait: float = Field(
        default=0.05, ge=0, le=10,
        description="Seconds a non-full batch waits, from its first fact, before it is flushed "
                    "(the latency a lone fact pays for batching).",
    )
    page_limit: int = Field(
        default=500, ge=1, le=10_000,
        description="Largest `limit` a client may ask of `GET /v1/audit/records`.",
    )
