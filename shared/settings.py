"""Settings common to every service, read from the environment (pydantic-settings).

Each service subclasses :class:`ServiceSettings` with its own ``env_prefix``
(``DIHYA_INGEST_``, …) for what is its own; the fields here use fixed, shared names
(``DIHYA_AMQP_URL``, ``DIHYA_LOG_FORMAT``…) because one deployment sets them once.
Defaults are the safe production ones; the development overrides are named in the README.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.nodes import DEFAULT_HEARTBEAT, parse


class AmqpPathSettings(BaseSettings):
    """The broker path setting alone: :func:`shared.broker.connect` reads it from the
    environment when its caller passes none."""

    # hide_input_in_errors: a refused value (a malformed URL list, say) may hold a password
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

    amqp_fast_path: bool = Field(
        default=True, validation_alias="DIHYA_AMQP_FAST_PATH",
        description="Use the broker fast path (corked writes, node-list failover with TCP "
        "keepalive, a 12 s heartbeat grace, messages handed to consumers without aio-pika's "
        "message class; see docs/dependencies.md). `false`: aio-pika's public API only "
        "(more CPU per message; the first node of DIHYA_AMQP_URL that answers at start, no "
        "failover to the others). Taken only with the aio-pika and aiormq versions it was "
        "tested with: others log `amqp_fast_path_untested` and take the plain path.",
    )


class ServiceSettings(AmqpPathSettings):

    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        validation_alias="DIHYA_AMQP_URL",
        description="RabbitMQ URL (the vhost is its path), or a comma-separated list of "
        "one URL per node of a cluster (same credentials, vhost and options; only host and "
        "port differ): a service starts at a random node of the list and, when its "
        "connection is lost, tries the next ones in order, without restarting (on the "
        "broker fast path, DIHYA_AMQP_FAST_PATH).",
    )
    amqp_heartbeat: int = Field(
        default=DEFAULT_HEARTBEAT, ge=0, le=60, validation_alias="DIHYA_AMQP_HEARTBEAT",
        description="Seconds between AMQP heartbeats (0: off, not advised). A node that "
        "stops answering (frozen, partitioned) is given up after two silent periods (three "
        "on the plain broker path) and the next node of DIHYA_AMQP_URL is tried. A "
        "`heartbeat=` in the URL wins.",
    )

    @field_validator("amqp_url")
    @classmethod
    def _node_list(cls, value: SecretStr) -> SecretStr:
        parse(value.get_secret_value())  # a malformed list stops the start, loudly
        return value
    log_format: Literal["json", "console"] = Field(
        default="json", validation_alias="DIHYA_LOG_FORMAT",
        description="`json` lines for production, `console` for humans.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", validation_alias="DIHYA_LOG_LEVEL",
        description="Lowest level logged: `debug`, `info`, `warning` or `error`.",
    )
    publish_timeout: float = Field(
        default=10.0, gt=0, validation_alias="DIHYA_PUBLISH_TIMEOUT",
        description="Seconds to wait for a publisher confirm before failing the publish.",
    )
    shutdown_grace: float = Field(
        default=15.0, ge=0, validation_alias="DIHYA_SHUTDOWN_GRACE",
        description="Seconds in-flight work gets to finish on SIGTERM before it is handed back.",
    )
    admin_token: SecretStr | None = Field(
        default=None, validation_alias="DIHYA_ADMIN_TOKEN",
        description="Bootstrap admin API token (HTTP services); store it like a password.",
    )
