"""Deliverer settings (environment variables prefixed ``DIHYA_DELIVERER_``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from cryptography.fernet import MultiFernet
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.deliverer.decisions import MAX_RETRY_AFTER_MS
from shared import custom_headers, topology
from shared.egress import EgressSettings
from shared.schedules import parse_schedule
from shared.topology import TIER_HEADROOM


class Settings(EgressSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIHYA_DELIVERER_", extra="ignore", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Address the ops HTTP server binds.")
    port: int = Field(
        default=8082, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics."
    )
    prefetch: int = Field(
        default=200, ge=1, le=2000,
        description="Deliveries in flight at once (unacked messages; also the pool size).",
    )
    timeout: float = Field(
        default=15.0, gt=0,
        description="Total seconds for one attempt: waiting for a pooled connection, "
        "connecting, sending and reading the response excerpt. Keep it far below "
        "RabbitMQ's consumer timeout (30 min).",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to establish a new TCP (and TLS) connection."
    )
    response_excerpt_bytes: int = Field(
        default=1024, ge=0, description="At most this much of a response body is read."
    )
    max_per_host: int = Field(
        default=100, ge=1,
        description="Connections in flight to one host (host and port), so the endpoints of "
        "one receiving host cannot take every slot (half the pool by default). Keep it above "
        "what the busy endpoints a host serves need together (each up to "
        "MAX_IN_FLIGHT_PER_ENDPOINT), or they wait for connections and their limits, seeing "
        "the wait as latency, shrink. It was 50 until 2026-12: a hot endpoint answering in "
        "200 ms at 200/s (40 in flight) beside four others on the same host got 0.86-0.92 of "
        "its offered rate.",
    )
    max_in_flight_per_endpoint: int = Field(
        default=50, ge=1,
        description="The most deliveries of one endpoint in flight at once. Each endpoint's "
        "own limit adapts between 1 and this: it grows while the endpoint answers well and "
        "its deliveries fill it, and shrinks on errors (429, 5xx, time-outs, refused "
        "connections), when its latency grows, and to 1 while it hangs (docs/endpoints.md, "
        "\"Concurrency per endpoint\"). A job beyond an endpoint's limit waits in the "
        "deliverer for a slot (see MAX_WAITING_PER_ENDPOINT). It used to be a fixed "
        "limit (default 10); a value set then stays the ceiling.",
    )
    initial_in_flight_per_endpoint: int = Field(
        default=10, ge=1,
        description="Where an endpoint's adaptive limit starts (at most "
        "MAX_IN_FLIGHT_PER_ENDPOINT), and the least it keeps for want of work: a burst after "
        "a quiet spell starts here. Setting it equal to MAX_IN_FLIGHT_PER_ENDPOINT keeps the "
        "limit there while the endpoint answers well (it still drops on errors).",
    )
    max_waiting_per_endpoint: int = Field(
        default=10, ge=0,
        description="Jobs of one endpoint waiting in the deliverer for a slot while its "
        "latency is not known yet. Once it is, a job waits if its expected wait stays under "
        "MAX_LOCAL_WAIT. A job beyond that is not held (that would fill the shared prefetch "
        "with one slow endpoint's work): it waits DEFER_DELAY in a wait queue and comes back "
        "to the deliverer, still signed, without using an attempt.",
    )
    max_local_wait: float = Field(
        default=0.25, ge=0,
        description="Seconds a job may be expected to wait in the deliverer for a slot of its "
        "endpoint (from the endpoint's latency) before it is deferred instead.",
    )
    paced_prefetch: int = Field(
        default=50, ge=1, le=2000,
        description="Deliveries of rate-limited endpoints in flight at once per paced queue "
        "(each of the 8 paced queues has one active consumer among the replicas).",
    )
    fifo_prefetch: int = Field(
        default=200, ge=1, le=2000,
        description="Deliveries of ordered (FIFO) endpoints held at once per FIFO lane (16 "
        "lanes, one active consumer each among the replicas). A key whose delivery fails "
        "holds its later deliveries here; only when a lane's held deliveries fill this do "
        "other keys of the lane wait too.",
    )
    sign_now_timeout: float = Field(
        default=15.0, gt=0,
        description="Seconds an ordered endpoint's delivery waits for the signer to sign it "
        "(at its turn, for each attempt) before it asks again; not counted as an attempt. "
        "Keep it above the signer's SECRET_WAIT.",
    )
    fifo_max_hold: float = Field(
        default=1500.0, gt=0,
        description="Seconds an ordered endpoint's delivery may stay in the deliverer, "
        "unacknowledged, from when it arrives (waiting behind earlier deliveries of its key, "
        "every attempt and retry delay): a retry that would start later is dead-lettered "
        "(`hold_limit`) and the next delivery of the key goes. Keep it below RabbitMQ's "
        "`consumer_timeout` (30 minutes by default), or the broker closes the lane's channel "
        "and hands its deliveries back to be attempted again.",
    )
    max_pace_wait: float = Field(
        default=2.0, ge=0,
        description="Seconds a delivery of a rate-limited endpoint may wait in the deliverer "
        "for its turn; a longer wait is deferred (DEFER_DELAY) instead of holding a prefetch "
        "slot.",
    )
    pace_margin: float = Field(
        default=0.1, ge=0, le=1,
        description="Share by which a rate-limited endpoint's deliveries are spaced wider "
        "than its limit (0.1: a 5/s endpoint gets one every 220 ms), so the receiver, which "
        "counts arrivals moved by the network and by busy hosts, never sees more than its "
        "limit in a window.",
    )
    defer_delay: str = Field(
        default="1s",
        description="How long a job deferred by MAX_IN_FLIGHT_PER_ENDPOINT waits the first time "
        "(ms, s, m, h); each further deferral of the same attempt waits twice as long, up to "
        "DEFER_MAX — so an endpoint that stays slow costs a broker round trip per job now "
        "and then, not every second. A deferred delivery whose signature grows older than "
        "RESIGN_AFTER meanwhile is re-signed when it comes back.",
    )
    defer_max: str = Field(
        default="1m",
        description="The longest wait of a deferred job (ms, s, m, h).",
    )
    retry_schedule: str = Field(
        default="5s,5m,30m,2h,5h,10h,10h",
        description="Delay after each failed attempt (units ms, s, m, h): n delays = n + 1 "
        "attempts. Each distinct delay is a wait-queue tier.",
    )
    retry_jitter: float = Field(
        default=0.2, ge=0, le=TIER_HEADROOM,
        description="Random share added to or taken off each delay (0.2: a delay of 5 m waits "
        "4 to 6 m), so failures that happened together do not retry together.",
    )
    breaker_after: int = Field(
        default=20, ge=0,
        description="Circuit breaker: failed attempts in a row (retried ones: 5xx, 429, "
        "time-outs, refused connections…) after which an endpoint counts as down. From then "
        "on each of its failed attempts is retried after at least BREAKER_WAIT, in the "
        "smallest tier of its schedule that long (as a receiver's Retry-After), until one of "
        "its attempts is delivered; first attempts are still sent (they find out it is back). "
        "Not for ordered (FIFO) endpoints. Each replica counts on its own. 0: no breaker "
        "(docs/operations.md, \"Circuit breaker\").",
    )
    breaker_wait: float = Field(
        default=60.0, gt=0, le=MAX_RETRY_AFTER_MS / 1000,
        description="Seconds a retry of an endpoint whose circuit breaker is open waits at "
        "least (at most 1 h, as a Retry-After); a schedule with no tier that long waits its "
        "longest. Only waits grow: the attempts a delivery gets stay the schedule's. Its jobs "
        "deferred for want of a slot wait as long (the smallest defer tier that long, or the "
        "longest) instead of doubling from DEFER_DELAY.",
    )
    resign_after: float = Field(
        default=240.0, ge=0,
        description="A delivery signed longer ago than this many seconds goes back to the "
        "signer instead of being POSTed (receivers refuse old timestamps; default tolerance "
        "5 min). 0 disables.",
    )

    catch_up: bool = Field(
        default=False,
        description="Catch-up mode: once an endpoint that was failing answers a retry again, "
        "its deliveries waiting in the retry tiers of CATCH_UP_MIN_TIER and longer are sent "
        "now, at the pace the pipeline takes (CATCH_UP_MAX_QUEUED), instead of waiting out "
        "their delays; every other endpoint's retries keep their schedule "
        "(docs/operations.md, \"Catch-up\"). Off: every retry waits its delay.",
    )
    catch_up_min_tier: str = Field(
        default="30s",
        description="The shortest retry tier a catch-up sweeps (ms, s, m, h): shorter tiers "
        "empty soon enough by themselves, and a sweep reads every message of the tiers it "
        "sweeps.",
    )
    catch_up_max_queued: int = Field(
        default=2000, ge=1,
        description="A catch-up sweep sends early deliveries only while the signer's and the "
        "deliverer's job queues, and the defer tiers together, each hold at most this many "
        "ready messages; above, it waits for them to drain, so a backlog never floods the "
        "pipeline nor outruns a slow endpoint.",
    )
    catch_up_interval: float = Field(
        default=60.0, ge=0,
        description="Seconds between two catch-up requests for one endpoint from one "
        "deliverer replica (the active sweeper drops a request older than the endpoint's last "
        "sweep anyway).",
    )

    headers_key: SecretStr | None = Field(
        default=None, validation_alias="DIHYA_HEADERS_KEY",
        description="The signer's DIHYA_HEADERS_KEY (same value): opens the endpoints' custom "
        "headers the signer sealed into each delivery. Without it, a delivery carrying "
        "custom headers is not sent (attempt error `headers_key`, retried).",
    )

    proxy_url: SecretStr | None = Field(
        default=None,
        description="HTTP proxy every delivery leaves through (`http://host:port`, "
        "credentials as `http://user:password@host:port`), e.g. smokescreen, Squid or "
        "tinyproxy: receivers then allow-list the proxy's addresses. The deliverer still "
        "resolves and vets each endpoint's name and asks the proxy for the vetted address "
        "(`CONNECT <IP>:443`, TLS keeping the name); the proxy's own address is trusted.",
    )

    @field_validator("proxy_url")
    @classmethod
    def _check_proxy(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = urlsplit(value.get_secret_value())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in (
                "", "/"):
            raise ValueError("must be http://host:port (an HTTP proxy)")
        return value

    @field_validator("headers_key")
    @classmethod
    def _check_headers_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            custom_headers.cipher(value.get_secret_value())  # malformed: refuse to start
        return value

    def headers_cipher(self) -> MultiFernet | None:
        """The cipher opening sealed custom headers; ``None`` when DIHYA_HEADERS_KEY is unset."""
        if self.headers_key is None:
            return None
        return custom_headers.cipher(self.headers_key.get_secret_value())

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @property
    def catch_up_min_tier_ms(self) -> int:
        return parse_schedule(self.catch_up_min_tier)[0]

    @field_validator("defer_delay", "defer_max", "catch_up_min_tier")
    @classmethod
    def _check_one_delay(cls, value: str) -> str:
        if len(parse_schedule(value)) != 1:
            raise ValueError("give one delay, e.g. '1s'")
        return value

    @property
    def retry_delays_ms(self) -> tuple[int, ...]:
        return parse_schedule(self.retry_schedule)

    @property
    def breaker_wait_ms(self) -> int:
        return round(self.breaker_wait * 1000)

    @property
    def defer_delay_ms(self) -> int:
        return parse_schedule(self.defer_delay)[0]

    @property
    def defer_delays_ms(self) -> tuple[int, ...]:
        """The defer tiers: DEFER_DELAY doubling up to DEFER_MAX."""
        return topology.defer_tiers(self.defer_delay_ms, parse_schedule(self.defer_max)[0])
