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
    """Configure structlog and tracing for ``service``, and route the standard library's
    logging (aio-pika, aiormq, aiohttp, asyncio, warnings, an uncaught exception) through the
    same processors, so that every line on stdout is one JSON object, tracebacks included."""
    telemetry.setup(service)
    numeric = logging.getLevelName(level.upper())
    structlog.contextvars.bind_contextvars(service=service)
    common: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    last: list[Any] = [structlog.processors.format_exc_info, _scrub_processor]
    renderer: Any
    factory: Any
    if fmt == "json":  # orjson renders bytes, written straight to stdout's buffer
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stdout.buffer)
        # the standard library's handler writes text: the same serializer, decoded
        foreign: Any = structlog.processors.JSONRenderer(
            serializer=lambda obj, **_: orjson.dumps(obj, default=str).decode())
    else:
        renderer = foreign = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stdout)
    structlog.configure(
        processors=[*common, *last, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)  # flushed after each record: lines stay whole
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last,
                    foreign],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """An exception nothing caught: one JSON line (then the interpreter exits as usual)."""
    logging.getLogger("dihya").critical("uncaught_exception", exc_info=(kind, value, tb))
