"""structlog setup: JSON lines on stdout (or a console renderer), with secrets scrubbed.

:func:`setup` is each service's one observability call: it also turns tracing on when the
``OTEL_*`` environment asks for it (:mod:`shared.telemetry`), and every log line written inside
a span carries its ``trace_id``, so logs and traces join.

Scrubbing is defence in depth: code never logs a secret on purpose, and this processor masks
anything that still looks like one (a ``whsec_`` secret, a bearer token, a URL password).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

from shared import telemetry

_SENSITIVE_KEYS = frozenset({"secret", "token", "authorization", "password", "api_key"})
_PATTERNS = (
    re.compile(r"whsec_[A-Za-z0-9+/=_-]+"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?<=://)([^:/@\s]+):([^@/\s]+)@"),
)


_MAYBE = re.compile(r"whsec_|(?i:bearer)\s|://")
"""What each pattern needs to match at all: one search spares the three substitutions for the
ids, hosts and reasons that make up nearly every logged string."""


def scrub(value: str) -> str:
    """Mask secret-looking substrings of ``value``."""
    if _MAYBE.search(value) is None:
        return value
    value = _PATTERNS[0].sub("whsec_***", value)
    value = _PATTERNS[1].sub("Bearer ***", value)
    return _PATTERNS[2].sub(r"\1:***@", value)


def _scrub_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key.lower() in _SENSITIVE_KEYS:
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = scrub(value)
    return event_dict


def _trace_ids(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
    return event_dict


def setup(service: str, *, fmt: str = "json", level: str = "info") -> None:
    """Configure structlog (and stdlib logging, for libraries) and tracing for ``service``."""
    telemetry.setup(service)
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(stream=sys.stdout, level=numeric, format="%(name)s %(message)s")
    renderer: Any
    factory: Any
    if fmt == "json":  # orjson renders bytes, written straight to stdout's buffer
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stdout.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
