"""The infrastructure / message classifier (shared.outages): what holds, what counts."""

from __future__ import annotations

import socket
import sqlite3

import aiormq.exceptions
import asyncpg.exceptions
import pytest
import sqlalchemy.exc
from hypothesis import given
from hypothesis import strategies as st

from shared.outages import describe, is_infrastructure


def _sqlite(message: str, name: str | None) -> sqlite3.Error:
    exc = sqlite3.OperationalError(message)
    if name is not None:
        exc.sqlite_errorname = name  # as the driver sets it
    return exc


def _wrapped(orig: BaseException, cls: type[sqlalchemy.exc.DBAPIError] =
             sqlalchemy.exc.OperationalError, invalidated: bool = False) -> BaseException:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


INFRASTRUCTURE: list[BaseException] = [
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(104, "reset"),
    TimeoutError(),
    socket.gaierror(-3, "Temporary failure in name resolution"),
    asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock"),
    _wrapped(ConnectionRefusedError(111, "refused")),
    _wrapped(Exception("server closed the connection"), sqlalchemy.exc.InterfaceError),
    _wrapped(Exception("anything"), sqlalchemy.exc.DBAPIError, invalidated=True),
    sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
    sqlalchemy.exc.DisconnectionError("dead"),
    _sqlite("database is locked", "SQLITE_BUSY"),
    _sqlite("disk I/O error", "SQLITE_IOERR_WRITE"),
    _sqlite("unable to open database file", "SQLITE_CANTOPEN"),
    _sqlite("database is locked", None),
    _wrapped(_sqlite("database is locked", "SQLITE_BUSY")),
    aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
    aiormq.exceptions.ChannelInvalidStateError("closed"),
    aiormq.exceptions.ChannelClosed(406, "PRECONDITION_FAILED"),
    aiormq.exceptions.DeliveryError(None, None),  # type: ignore[arg-type]  # broker's nack
]

OWN: list[BaseException] = [
    ValueError("bad body"),
    KeyError("field"),
    RuntimeError("handler bug"),
    _wrapped(Exception("duplicate key"), sqlalchemy.exc.IntegrityError),
    _wrapped(_sqlite("no such table: events", "SQLITE_ERROR")),
    _sqlite('near "SELEC": syntax error', "SQLITE_ERROR"),
    _sqlite("no such column: x", None),
    asyncpg.exceptions.UniqueViolationError("duplicate key"),
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
    # unroutable (basic.return): the message's routing; built bare, its __init__ wants a frame
    aiormq.exceptions.PublishError.__new__(aiormq.exceptions.PublishError),
]


@pytest.mark.parametrize("exc", INFRASTRUCTURE, ids=lambda e: type(e).__name__)
def test_infrastructure(exc: BaseException) -> None:
    assert is_infrastructure(exc)


@pytest.mark.parametrize("exc", OWN, ids=lambda e: type(e).__name__)
def test_the_message_own(exc: BaseException) -> None:
    assert not is_infrastructure(exc)


def _chain(outer: list[BaseException], inner: BaseException, how: list[bool]) -> BaseException:
    """``inner`` wrapped in each of ``outer`` in turn, as cause (True) or context (False)."""
    current = inner
    for wrapper, as_cause in zip(outer, how, strict=False):
        wrapper = type(wrapper)(*wrapper.args)  # a fresh instance for each use
        if as_cause:
            wrapper.__cause__ = current
        else:
            wrapper.__context__ = current
        current = wrapper
    return current


_wrappers = st.lists(st.sampled_from([ValueError("x"), RuntimeError("y"), KeyError("z")]),
                     max_size=5)


@given(_wrappers, st.sampled_from(INFRASTRUCTURE), st.lists(st.booleans(), min_size=5))
def test_infrastructure_found_under_wrappers(outer: list[BaseException], inner: BaseException,
                                             how: list[bool]) -> None:
    """Drivers and handlers wrap errors: an infrastructure cause anywhere decides."""
    assert is_infrastructure(_chain(outer, inner, how))


@given(_wrappers, st.sampled_from(OWN), st.lists(st.booleans(), min_size=5))
def test_own_failure_stays_own_under_wrappers(outer: list[BaseException], inner: BaseException,
                                              how: list[bool]) -> None:
    assert not is_infrastructure(_chain(outer, inner, how))


def test_exception_groups_are_looked_into() -> None:
    group = ExceptionGroup("gathered", [ValueError("x"), ConnectionResetError()])
    assert is_infrastructure(group)
    assert not is_infrastructure(ExceptionGroup("gathered", [ValueError("x")]))


def test_a_cycle_ends_the_walk() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not is_infrastructure(a)


def test_describe_names_classes_never_messages() -> None:
    exc = _wrapped(ConnectionRefusedError(111, "password=hunter2"))
    text = describe(exc)
    assert text == "OperationalError < ConnectionRefusedError"
    assert "hunter2" not in text
