"""OpenTelemetry tracing: one trace per event, carried across the broker in W3C headers.

Off by default. Set the standard variables to turn it on, e.g.
``OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318`` (or ``OTEL_TRACES_EXPORTER=otlp`` /
``console``); ``OTEL_SERVICE_NAME`` overrides ``dihya-<service>``. Sampling and batching
follow the SDK's own ``OTEL_*`` variables.

Propagation needs no per-service code: :class:`shared.broker.Publisher` injects the current
context (``traceparent``) into every message's headers, and :class:`shared.broker.Consumer`
runs each handler inside a consumer span continuing the context it extracts. The deliverer adds
``traceparent`` to the outgoing HTTP request, so the receiver can join the trace too.

While no SDK tracer provider is installed (tracing off), :func:`inject`, :func:`consuming` and
:func:`span` do nothing at all: extracting a context and entering a no-op span for every
message cost ingest about a tenth of its time per event (bench profile) for traces nobody
records.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

tracer = trace.get_tracer("dihya")


def setup(service: str) -> bool:
    """Install an SDK tracer provider when the ``OTEL_*`` environment asks for export."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporter_name in ("", "none") and not endpoint:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    name = os.environ.get("OTEL_SERVICE_NAME", f"dihya-{service}")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    refresh()
    return True


RECHECK_INTERVAL = 1.0
"""Seconds a "no provider installed" answer of :func:`enabled` is kept before it asks again."""
_installed = False
_absent_until = -math.inf


def enabled() -> bool:
    """Whether a real tracer provider is installed (by :func:`setup`, or by a test).

    Asked for every message, so kept cheap with the public API alone: a provider is installed
    at most once per process (``set_tracer_provider`` refuses a second), so a yes is
    remembered for good; a no for :data:`RECHECK_INTERVAL` — ``get_tracer_provider()``
    consults the environment on every call while none is installed (2 µs, 5 % of ingest's
    profile at saturation when asked per message). A provider installed by other code is thus
    noticed within a second; call :func:`refresh` right after installing one.
    """
    global _installed, _absent_until
    if _installed:
        return True
    now = time.monotonic()
    if now < _absent_until:
        return False
    _installed = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    _absent_until = now + RECHECK_INTERVAL
    return _installed


def refresh() -> None:
    """Forget a remembered "no provider": the next :func:`enabled` asks OpenTelemetry."""
    global _absent_until
    _absent_until = -math.inf


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current trace context (``traceparent``) into message or request headers."""
    if enabled():
        propagate.inject(carrier)


@contextmanager
def consuming(queue: str, headers: Mapping[str, Any] | None) -> Iterator[Span | None]:
    """A consumer span for one message, continuing the trace its headers carry."""
    if not enabled():
        yield None
        return
    carrier = {k: v for k, v in (headers or {}).items() if isinstance(v, str)}
    parent = propagate.extract(carrier)
    with tracer.start_as_current_span(
        f"{queue} process", context=parent, kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "rabbitmq", "messaging.destination.name": queue},
    ) as span:
        yield span


@contextmanager
def span(name: str, *, kind: SpanKind, attributes: Mapping[str, Any]) -> Iterator[Span | None]:
    """A span of the current trace (``None`` while tracing is off: set attributes only if any)."""
    if not enabled():
        yield None
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=dict(attributes)) as current:
        yield current
