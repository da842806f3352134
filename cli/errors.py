"""Exit codes and the errors that produce them.

A script that runs ``dihya`` decides what to do from the exit code alone: retry later (5),
fix its credentials (3), give up on an id (4), fix its input (1, 2). The codes are part of the
CLI's interface and documented in the README; :func:`exit_code` is the one mapping from an
HTTP status, so every command answers the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum


class Exit(IntEnum):
    """What a ``dihya`` exit status means."""

    OK = 0
    API_ERROR = 1
    """The API refused the request as it stands (4xx other than 401/403/404: invalid body,
    conflict such as a disabled endpoint or an already retried delivery)."""
    USAGE = 2
    """Bad arguments, an unreadable input file or config file; nothing was sent."""
    AUTH = 3
    """401 (no token, or an unknown or revoked one) or 403 (the token's role may not)."""
    NOT_FOUND = 4
    """404: no endpoint, delivery or token with that id."""
    UNAVAILABLE = 5
    """5xx, or the API could not be reached (connection refused, timeout, cut transfer)."""
    CHECK_FAILED = 6
    """The request worked but what it checked did not hold: the test delivery was not
    delivered (non-2xx, unreachable receiver, no attempt in time) or the audit chain is
    broken."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT), as shells report it."""


def exit_code(status: int) -> Exit:
    """The exit code for an HTTP error status."""
    if status in (401, 403):
        return Exit.AUTH
    if status == 404:
        return Exit.NOT_FOUND
    if 400 <= status < 500:
        return Exit.API_ERROR
    return Exit.UNAVAILABLE


class CliError(Exception):
    """An error already worded for the user (a catalog message), with its exit code."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(CliError):
    """Bad input detected before anything was sent (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Exit.USAGE)


class ApiError(Exception):
    """An HTTP error answer of a Dihya API, decoded from its standard JSON error body."""

    def __init__(self, service: str, status: int, code: str, message: str,
                 fields: Sequence[Mapping[str, str]] = (), body: object = None) -> None:
        super().__init__(f"{service} {status} {code}: {message}")
        self.service = service
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.body = body
        self.advice: str | None = None
        """What the command that got this answer tells the user instead of the generic
        explanation (it knows what was asked: a key, a file)."""

    @property
    def exit(self) -> Exit:
        return exit_code(self.status)

    def detail(self, name: str) -> object:
        """A member of the body's ``error`` object (``event_id`` …), None if absent."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get(name) if isinstance(error, dict) else None


class UnreachableError(Exception):
    """The API did not answer: refused connection, DNS failure, timeout, cut transfer."""

    def __init__(self, service: str, base_url: str, reason: str, *, cut: bool = False) -> None:
        super().__init__(f"{service} at {base_url}: {reason}")
        self.service = service
        self.base_url = base_url
        self.reason = reason
        self.cut = cut
        """The API answered, then the body stopped half-way (a streamed export that failed)."""
