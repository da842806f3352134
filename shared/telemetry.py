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

import os
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
    return True


_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
"""OpenTelemetry then loads the provider lazily, in ``get_tracer_provider()``."""
_installed = False


def enabled() -> bool:
    """Whether a real tracer provider is installed (by :func:`setup`, or by a test).

    Asked for every message, so kept cheap: a provider is installed at most once per process
    (``set_tracer_provider`` refuses a second), so a yes is remembered; until then the API's
    provider slot is read directly, since ``get_tracer_provider()`` consults the environment
    on every call while none is installed (5 % of ingest's profile at saturation).
    """
    global _installed
    if not _installed:
        if _PROVIDER_FROM_ENV or not hasattr(trace, "_TRACER_PROVIDER"):
            provider = trace.get_tracer_provider()
            _installed = not isinstance(provider, trace.ProxyTracerProvider)
        else:
            _installed = trace._TRACER_PROVIDER is not None
    return _installed


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
