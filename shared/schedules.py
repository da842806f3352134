"""Retry schedules written as text: ``"5s,5m,30m"``, one parser for every place that reads one.

The deliverer reads its deployment schedule from ``DIHYA_DELIVERER_RETRY_SCHEDULE`` (and its
defer delays) with it; the CLI reads an endpoint's own schedule (``--retry-schedule``) with it.
The one difference is explicit, in ``bare_unit``: a setting must name its unit (``5`` is refused,
a typo there would silently mean something else for every delivery), while the CLI takes a bare
number as seconds, the unit the HTTP API's ``retry_schedule`` uses. The CLI's own words
``none`` (a single attempt: the API's ``[]``) and ``default`` (the deployment's: the API's
``null``) are API values, not schedules, and stay in the CLI.
"""

from __future__ import annotations

import re
from typing import Literal

Unit = Literal["ms", "s", "m", "h"]
UNIT_MS: dict[str, int] = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_schedule(text: str, *, bare_unit: Unit | None = None) -> tuple[int, ...]:
    """``"5s,5m,30m"`` → ``(5000, 300000, 1800000)``: delays in whole milliseconds.

    Units ``ms``, ``s``, ``m``, ``h``; a number without a unit is read in ``bare_unit``, and
    refused when that is None. Every delay must be positive. An empty text means no retry at
    all (a single attempt): ``()``. Raises :class:`ValueError` naming the bad part.
    """
    if not text.strip():
        return ()
    delays = []
    for part in text.split(","):
        match = _DELAY.match(part)
        unit = (match.group(2) or bare_unit) if match else None
        if match is None or unit is None:
            raise ValueError(f"bad delay {part.strip()!r}: use a number and a unit "
                             "(ms, s, m or h), e.g. '5s,5m,30m'")
        delay = round(float(match.group(1)) * UNIT_MS[unit])
        if delay <= 0:
            raise ValueError(f"bad delay {part.strip()!r}: must be positive")
        delays.append(delay)
    return tuple(delays)
