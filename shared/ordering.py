"""Ordered (FIFO) endpoints: which key a delivery belongs to, and which lane carries the key.

Pure functions, used by ingest (to route a FIFO endpoint's job to its lane) and by the
deliverer (which holds the later deliveries of a key behind the one in flight).

* The **key** of a delivery is the value found at the endpoint's ``ordering_key`` in the event
  (a dotted path such as ``data.user_id``): a string as it is, any other JSON value as its
  compact JSON text (so ``42`` and ``"42"`` are one key). A path that leads nowhere gives the
  empty key ``""``; an endpoint without ``ordering_key`` puts every delivery under ``""``
  (the whole endpoint is one ordered stream).
* The **lane** of a key is ``crc32(endpoint_id NUL key) mod lanes``: every delivery of one key
  of one endpoint goes through the same single-active-consumer queue
  (:func:`shared.topology.fifo_queue`). Changing the number of lanes moves keys to other lanes,
  which may reorder the deliveries in flight at that moment (see docs/ordering.md).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping

import orjson

from shared.contracts import Event

PATH_PATTERN = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$"
"""An ``ordering_key``: one to eight dot-separated names (letters, digits, ``_``, ``-``)."""
MAX_KEY_CHARS = 256
"""A key longer than this is cut to it (the lane and the comparison use the cut text)."""

_PATH = re.compile(PATH_PATTERN)


def valid_path(path: str) -> bool:
    """Is ``path`` a usable ``ordering_key``?"""
    return bool(_PATH.match(path))


def key_of(event: Event, path: str | None) -> str:
    """The ordering key of ``event`` for an endpoint whose ``ordering_key`` is ``path``."""
    if path is None:
        return ""
    value: object = event.model_dump(mode="json", exclude_none=True)
    for name in path.split("."):
        if not isinstance(value, Mapping) or name not in value:
            return ""
        value = value[name]
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(
        value, option=orjson.OPT_SORT_KEYS).decode()
    return text[:MAX_KEY_CHARS]


def lane_of(endpoint_id: str, key: str, lanes: int) -> int:
    """The lane (0 ≤ lane < ``lanes``) of ``key`` of endpoint ``endpoint_id``."""
    return zlib.crc32(f"{endpoint_id}\x00{key}".encode()) % lanes
