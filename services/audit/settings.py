"""Audit service settings (environment variables ``DIHYA_AUDIT_*`` plus the shared ``DIHYA_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.audit.decisions import sealing
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
    max_fact_bytes_in_process: int = Field(
        default=2 * 2**20, ge=64 * 2**10, le=2**30,
        description="Bytes of fact messages held in process at once (decoded, waiting for "
                    "their acceptance or their commit), for delivery facts and again for the "
                    "others (acceptances among them: delivery facts wait for those, so they "
                    "never share a budget); more wait unacked. Bounds audit's memory behind a "
                    "deep queue, where the prefetch counts batches of up to 1,000 facts.",
    )
    batch_size: int = Field(
        default=200, ge=1, le=5000,
        description="Facts committed in one transaction; a batch is flushed as soon as it is full.",
    )
    batch_wait: float = Field(
        default=0.2, ge=0, le=10,
        description="Seconds a non-full batch waits, from its first fact, before it is flushed "
                    "(the latency a lone fact pays for batching: at moderate load each "
                    "transaction costs far more than its facts, so batches should fill).",
    )
    acceptance_wait: float = Field(
        default=10.0, ge=0, le=600,
        description="Seconds a delivery fact (an attempt, a held delivery) waits, its message "
                    "unacked, for its event's `event.accepted` to be stored first — so it is "
                    "sealed with the event's data subject. Past it the fact is stored unlinked "
                    "and counted (`dihya_audit_stored_before_acceptance_total`).",
    )
    outcome_timeout: float = Field(
        default=300.0, ge=1, le=86_400,
        description="Seconds audit waits for a POST's outcome (`delivery.attempted`) after the "
                    "deliverer's write-ahead (`delivery.started`); past it the POST is recorded "
                    "with outcome `unknown`, reason `deliverer_stopped` (a deliverer killed "
                    "between its POST and the outcome's confirm). Longer than the longest "
                    "delivery timeout plus a broker outage a live deliverer rides out: an "
                    "outcome arriving after it is dropped as a duplicate of the `unknown` "
                    "record (logged by audit as `outcome_unknown` when it is written).",
    )
    page_limit: int = Field(
        default=500, ge=1, le=10_000,
        description="Largest `limit` a client may ask of `GET /v1/audit/records`.",
    )
    export_page: int = Field(
        default=1000, ge=1, le=10_000,
        description="Records read per query while streaming an export (`/v1/audit/export`, "
                    "subject exports): the memory an export holds, whatever its size.",
    )
    subject_paths: str = Field(
        default=sealing.DEFAULT_SUBJECT_PATHS,
        description="Comma-separated JSON paths (dotted) into a fact's `details`; the first "
                    "holding a non-empty string is the GDPR data subject (ingest puts the "
                    "event's `data.user_id` in `details.subject`).",
    )
    subject_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 random bytes: HMAC key of the blind index that finds a "
                    "subject's encryption key. Unset: generated on first start and kept in the "
                    "database. Never change it (the service refuses a different key).",
    )
    checkpoint_key: SecretStr | None = Field(
        default=None,
        description="Base64 of a 32-byte Ed25519 seed that signs retention checkpoints; keep "
                    "it outside the database so that whoever can write the database cannot "
                    "forge one. Required in production mode; in development mode, if unset, "
                    "generated on first start and kept in the database.",
    )
    mode: Literal["production", "development"] = Field(
        default="production",
        description="`production` refuses to start unless the head key and the checkpoint "
                    "key come from outside the database (`DIHYA_AUDIT_HEAD_KEY[_FILE]`, "
                    "`DIHYA_AUDIT_CHECKPOINT_KEY`); `development` generates missing keys, "
                    "keeps them in the database and warns (whoever can write the database "
                    "can then forge heads and checkpoints).",
    )
    head_key: SecretStr | None = Field(
        default=None,
        description="Base64 of a 32-byte Ed25519 seed that signs the chain's heads; keep it "
                    "outside the database (a secret store). Publish its public key to "
                    "auditors (the start-up log and `GET /v1/audit/verify` show it).",
    )
    head_key_file: Path | None = Field(
        default=None,
        description="A file holding the head key (base64 of the 32-byte seed), e.g. a "
                    "mounted Kubernetes Secret; used when `DIHYA_AUDIT_HEAD_KEY` is unset.",
    )
    heads_file: str = Field(
        default="",
        description="Append-only JSON Lines file of the signed heads (one per line), or a "
                    "directory (then one `heads-YYYY-MM-DD.jsonl` per UTC day). Put it on "
                    "storage the database's administrators cannot rewrite (WORM). Empty: "
                    "heads go to the `dihya.audit.heads` exchange only (a warning at start).",
    )
    heads_interval: float = Field(
        default=60.0, gt=0, le=86_400,
        description="Seconds between two signed heads (one is also signed on shutdown, after "
                    "a retention purge, and on `POST /v1/audit/heads`).",
    )
    retention_days: int = Field(
        default=0, ge=0, le=36_500,
        description="Records recorded more than this many days ago are purged behind a signed "
                    "checkpoint; 0 (default) keeps every record (set your legal retention "
                    "period).",
    )
    retention_interval: float = Field(
        default=3600.0, gt=0,
        description="Seconds between two automatic retention purges (when retention_days > 0).",
    )

    cors_origins: str = Field(
        default="",
        description="Comma-separated origins (`scheme://host[:port]`) whose web pages may call "
                    "this API from a browser (CORS, with the `Authorization` header), e.g. the "
                    "web console's `https://dihya.example.com`. Empty: none (no CORS headers).",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        parse_origins(value)
        return value

    @property
    def origins(self) -> tuple[str, ...]:
        return parse_origins(self.cors_origins)

    @field_validator("subject_paths")
    @classmethod
    def _paths(cls, value: str) -> str:
        sealing.parse_paths(value)
        return value

    @field_validator("subject_key", "checkpoint_key", "head_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # set but empty: as if unset
        sealing.decode_key(value.get_secret_value(), "the key")
        return value


    def head_key_text(self) -> str | None:
        """The head key's base64 text: ``head_key``, else the content of ``head_key_file``
        (OSError if that file cannot be read)."""
        if self.head_key is not None:
            return self.head_key.get_secret_value()
        if self.head_key_file is not None:
            text = self.head_key_file.read_text().strip()
            return text or None
        return None

    def production_problems(self) -> list[str]:
        """Why production mode must refuse to start (empty: it may start)."""
        if self.mode != "production":
            return []
        problems = []
        if self.head_key is None and self.head_key_file is None:
            problems.append("DIHYA_AUDIT_HEAD_KEY (or DIHYA_AUDIT_HEAD_KEY_FILE) is not set: "
                            "the key that signs the chain's heads must come from outside the "
                            "database")
        if self.checkpoint_key is None:
            problems.append("DIHYA_AUDIT_CHECKPOINT_KEY is not set: the key that signs "
                            "retention checkpoints must come from outside the database (if "
                            "this database was used with a generated key, set it to the "
                            "value of `checkpoint_signing.key` in table service_keys)")
        return problems


def parse_origins(value: str) -> tuple[str, ...]:
    """The origins of a comma-separated list, normalized; ValueError on anything that is not
    exactly ``scheme://host[:port]`` (a path or a ``*`` would silently match nothing or all)."""
    origins: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if (parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path not in ("", "/") or parts.query or parts.fragment
                or parts.username or parts.password):
            raise ValueError(f"{item!r} is not an origin like https://console.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(dict.fromkeys(origins))
