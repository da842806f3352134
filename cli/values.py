"""Pure conversions of command-line values (unit-tested): times, retry schedules, patterns.

Each function raises :class:`ValueError` with an English hint; the command layer turns it
into a translated usage error (exit 2) before anything is sent.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from shared.schedules import parse_schedule as shared_schedule

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """An instant from ISO-8601 (``2025-05-20T12:00:00Z``; without an offset: UTC; a date
    alone: its midnight UTC) or a duration ago (``30m``, ``2h``, ``7d``, ``1w``)."""
    text = value.strip()
    match = _RELATIVE.fullmatch(text.lower())
    if match:
        amount = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=amount)
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z"))
                                        else text)
    except ValueError:
        raise ValueError("expected ISO-8601 (2025-05-20T12:00:00Z) or a duration ago "
                         "(30m, 2h, 7d)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def iso_utc(value: datetime) -> str:
    """``2025-05-20T12:00:00Z`` (microseconds kept when present)."""
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


def parse_schedule(value: str) -> list[float] | None:
    """A retry schedule in seconds, as the API takes it: ``10,60,600`` or ``10s,1m,10m``
    (:func:`shared.schedules.parse_schedule`, a bare number in seconds); ``none`` (a single
    attempt, no retry) gives ``[]``; ``default`` (the deployment's schedule) gives None."""
    text = value.strip().lower()
    if text == "default":
        return None
    if text in ("none", ""):
        return []
    try:
        delays_ms = shared_schedule(text, bare_unit="s")
    except ValueError:
        raise ValueError("expected delays such as 10s,1m,10m (units ms, s, m, h), "
                         "'none' or 'default'") from None
    return [ms // 1000 if ms % 1000 == 0 else ms / 1000 for ms in delays_ms]


def schedule_text(delays: list[float] | None) -> str | None:
    """How a schedule reads back: ``10s, 1m, 1h``; None for the deployment's."""
    if delays is None:
        return None
    if not delays:
        return "-"
    out = []
    for seconds in delays:
        for unit, size in (("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                out.append(f"{int(seconds // size)}{unit}")
                break
        else:
            out.append(f"{seconds:g}s")
    return ", ".join(out)


def parse_rate_limit(value: str) -> dict[str, float | int] | None:
    """``--rate-limit`` as the API takes it: ``5`` (deliveries per second) or ``5/10`` (with a
    burst of 10); ``none`` gives None (no limit). The API checks the ranges."""
    text = value.strip().lower()
    if text == "none":
        return None
    rate, sep, burst = text.partition("/")
    try:
        per_second = float(rate)
        limit: dict[str, float | int] = {
            "per_second": int(per_second) if per_second.is_integer() else per_second}
        if sep:
            limit["burst"] = int(burst)
    except ValueError:
        raise ValueError("expected N or N/BURST, e.g. 5 or 0.5/10, or 'none'") from None
    if not math.isfinite(per_second) or per_second <= 0 or limit.get("burst", 1) < 1:
        raise ValueError("expected a rate above 0 and a burst of at least 1")
    return limit


def rate_limit_text(limit: dict[str, float | int] | None) -> tuple[str, str] | None:
    """A rate limit's parts as they read back (``5``, ``10``); None when not limited."""
    if not limit:
        return None
    return f"{limit['per_second']:g}", str(limit.get("burst", 1))


def parse_header(value: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--header`` (the API checks which names are allowed)."""
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise ValueError("expected NAME=VALUE, e.g. X-Api-Key=abc123")
    return name.strip(), text
