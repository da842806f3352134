"""Signer settings (environment variables prefixed ``DIHYA_SIGNER_``)."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared import custom_headers
from shared.settings import ServiceSettings

KEYGEN_HINT = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class ConfigError(Exception):
    """The configuration cannot work; the message tells the operator what to set."""


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIHYA_SIGNER_", extra="ignore", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Address the ops HTTP server binds.")
    port: int = Field(
        default=8081, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics."
    )
    database_url: str = Field(
        default="sqlite:///./data/signer.db",
        description="Keystore DSN: `sqlite:///path` (default) or `postgresql://…` "
        "(shared by every signer replica).",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s) encrypting the keystore, comma-separated: the first encrypts, "
        "all decrypt (add the new key first to rotate the master key).",
    )
    master_key_file: Path | None = Field(
        default=None,
        description="Alternative to MASTER_KEY: a file holding it (e.g. a mounted secret).",
    )
    prefetch: int = Field(
        default=200, ge=1, le=2000,
        description="Unacked messages per consumer (concurrency). A message may be a batch of up "
        "to 20 jobs: with a backlog, up to 20 x this many jobs are in flight (75 MiB at 4,000).",
    )
    secret_wait: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a job waits for its endpoint's secret before it is parked "
        "(the secret and the first jobs travel on different queues).",
    )
    cache_ttl: float = Field(
        default=5.0,
        ge=0,
        description="Seconds decrypted secrets stay cached. Bounds how long a replica that did "
        "not receive a rotation keeps signing with the old set; 0 disables the cache.",
    )

    headers_key: SecretStr | None = Field(
        default=None, validation_alias="DIHYA_HEADERS_KEY",
        description="Fernet key(s), comma-separated (the first seals), shared by the signer "
        "and the deliverer only: endpoints' custom headers travel sealed with it from one to "
        "the other. Needed once an endpoint has custom headers; its deliveries are parked "
        f"(`unsignable`) without it. Generate one with: {KEYGEN_HINT}",
    )

    def headers_cipher(self) -> MultiFernet | None:
        """The cipher sealing custom headers; ``None`` when DIHYA_HEADERS_KEY is unset."""
        if self.headers_key is None:
            return None
        try:
            return custom_headers.cipher(self.headers_key.get_secret_value())
        except custom_headers.HeadersKeyError as exc:
            raise ConfigError(str(exc)) from None

    def cipher(self) -> MultiFernet:
        """The keystore cipher, or a :class:`ConfigError` saying how to configure one."""
        if self.master_key is not None:
            raw, source = self.master_key.get_secret_value(), "DIHYA_SIGNER_MASTER_KEY"
        elif self.master_key_file is not None:
            source = f"DIHYA_SIGNER_MASTER_KEY_FILE ({self.master_key_file})"
            try:
                raw = self.master_key_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"Cannot read {source}: {exc.strerror}.") from None
        else:
            raise ConfigError(
                "The signer needs a master key to encrypt its keystore: set "
                "DIHYA_SIGNER_MASTER_KEY (or DIHYA_SIGNER_MASTER_KEY_FILE, a file holding it). "
                f"Generate one with: {KEYGEN_HINT}"
            )
        keys = [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"{source} is empty. Generate a key with: {KEYGEN_HINT}")
        try:
            return MultiFernet([Fernet(k) for k in keys])
        except ValueError:
            raise ConfigError(
                f"{source} must hold Fernet keys (32 url-safe base64-encoded bytes each, "
                f"comma-separated). Generate one with: {KEYGEN_HINT}"
            ) from None
