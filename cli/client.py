"""A small synchronous HTTP client for the Dihya APIs (standard library only).

Synchronous on purpose: a command does one thing after another, and ``urllib`` streams a
response body in chunks, which is all an export needs. Every failure becomes one of two
exceptions — :class:`~cli.errors.ApiError` (the API answered 4xx/5xx; its JSON error body is
decoded) or :class:`~cli.errors.UnreachableError` (no answer) — so the exit code and the advice
shown are decided in one place. The token goes in the ``Authorization`` header only; it is
never part of an error message.
"""

from __future__ import annotations

import contextlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from cli import __version__
from cli.errors import ApiError, UnreachableError

USER_AGENT = f"dihya-cli/{__version__}"
CHUNK = 64 * 1024

Query = Sequence[tuple[str, str]] | Mapping[str, str]


def seg(value: str) -> str:
    """An id as one path segment (``/`` and friends percent-encoded)."""
    return quote(value, safe="")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    data: Any
    """The decoded JSON body; None for an empty one (204)."""


def _decode_error(service: str, status: int, reason: str, raw: bytes) -> ApiError:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        fields = [f for f in detail.get("fields") or [] if isinstance(f, dict)]
        return ApiError(service, status, str(detail.get("code") or status),
                        str(detail.get("message") or reason),
                        [{"field": str(f.get("field")), "message": str(f.get("message"))}
                         for f in fields], body)
    text = raw.decode("utf-8", "replace").strip()[:300]
    return ApiError(service, status, str(status), text or reason, (), body)


class Client:
    """One API (ingest or audit) at ``base_url``."""

    def __init__(self, service: str, base_url: str, token: str | None, timeout: float) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, query: Query | None, body: Any,
                 headers: Mapping[str, str] | None) -> urllib.request.Request:
        url = self.base_url + path
        if query:
            url += "?" + urlencode(list(query.items()) if isinstance(query, Mapping) else query)
        sent = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = orjson.dumps(body)
            sent["Content-Type"] = "application/json"
        # the scheme is http(s): config.check_url refuses anything else
        return urllib.request.Request(url, data=data, headers=sent,  # noqa: S310
                                      method=method)

    @contextlib.contextmanager
    def _open(self, req: urllib.request.Request) -> Iterator[http.client.HTTPResponse]:
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            with exc:
                raw = self._read_all(exc)
            raise _decode_error(self.service, exc.code, exc.reason or "", raw) from None
        except urllib.error.URLError as exc:
            raise UnreachableError(self.service, self.base_url, str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise UnreachableError(self.service, self.base_url, _describe(exc)) from None
        with resp:
            yield resp

    def _read_all(self, resp: Any) -> bytes:
        try:
            return bytes(resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise UnreachableError(self.service, self.base_url, _describe(exc)) from None

    def request(self, method: str, path: str, *, query: Query | None = None, body: Any = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """Send one request; return the decoded answer of a 2xx, raise otherwise."""
        with self._open(self._request(method, path, query, body, headers)) as resp:
            raw = self._read_all(resp)
            status = resp.status
            got = {k.lower(): v for k, v in resp.headers.items()}
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise UnreachableError(self.service, self.base_url,
                              f"HTTP {status} answer is not JSON") from None
        return Response(status, got, data)

    def get(self, path: str, query: Query | None = None) -> Any:
        return self.request("GET", path, query=query).data

    @contextlib.contextmanager
    def stream(self, path: str, query: Query | None = None
               ) -> Iterator[tuple[Mapping[str, str], Iterator[bytes]]]:
        """GET a streamed body: yields the headers and an iterator of chunks. A transfer cut
        short (the server aborts on an error mid-way) raises :class:`UnreachableError` from the
        iterator, so a caller can tell a complete body from a truncated one."""
        req = self._request("GET", path, query, None, {"Accept": "*/*"})
        with self._open(req) as resp:
            got = {k.lower(): v for k, v in resp.headers.items()}
            yield got, self._chunks(resp)

    def _chunks(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        while True:
            try:
                chunk = resp.read1(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise UnreachableError(self.service, self.base_url, _describe(exc),
                                       cut=True) from None
            if not chunk:
                return
            yield chunk


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "the transfer was cut short"
    return str(exc) or type(exc).__name__
