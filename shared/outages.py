"""Which failures are a dependency's (the database, the broker path) and not the message's.

The consumer (:class:`shared.broker.Consumer`) asks :func:`is_infrastructure` about every
exception a handler raises. An infrastructure failure says nothing about the message: it is
held, unsettled, until the dependency is back, and so never counts towards the queue's
delivery limit (RabbitMQ 3.10 counts every requeue, channel close and connection loss; see
docs/operations.md, "Dependency outages"). Every other failure is the message's own (bad
content, a handler bug): requeued after a backoff, then parked by the delivery limit.

Pure and without I/O: the decision is unit-tested alone. The exception, its ``__cause__`` and
``__context__`` chain and the members of an exception group are all looked at, since drivers
wrap one another (SQLAlchemy wraps asyncpg and sqlite3; aio-pika wraps aiormq).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator

import aiormq.exceptions
import asyncpg.exceptions
import sqlalchemy.exc

MAX_CHAIN = 16
"""Most exceptions looked at in one chain (a cycle or a very long chain ends the walk)."""

_SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR",
                     "SQLITE_FULL", "SQLITE_NOMEM", "SQLITE_PROTOCOL")
"""SQLite result codes (``sqlite3.Error.sqlite_errorname``, prefixes: extended codes such as
``SQLITE_IOERR_WRITE`` too) that say the file is busy or unreachable, not that the statement
is wrong. ``no such table`` or a syntax error (``SQLITE_ERROR``) stay the message's."""

_SQLITE_TRANSIENT_TEXT = ("database is locked", "unable to open database file",
                          "disk i/o error", "database or disk is full")
"""The same, read from the message when the driver gave no result code."""

_ASYNCPG_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,      # class 08: connection failures
    asyncpg.exceptions.OperatorInterventionError,    # class 57P: shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,   # class 53: disk full, too many connections
    asyncpg.exceptions.TransactionRollbackError,     # class 40: serialization, deadlock
)

_AMQP_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,        # the connection is gone or refused
    aiormq.exceptions.ChannelClosed,              # the channel closed under the publish
    aiormq.exceptions.ChannelInvalidStateError,   # published on a closed channel
)


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it wraps) says a dependency is unavailable.

    Infrastructure: connection-level errors of SQLAlchemy (a connection invalidated, the pool
    timing out, ``OperationalError``/``InterfaceError`` of a server database), of asyncpg
    (connection, operator intervention, resources, transaction rollback), SQLite busy, locked,
    unopenable or I/O failures, refused or reset connections and timeouts (``OSError``'s
    ``ConnectionError``, ``TimeoutError``, name resolution), and broker publish failures (the
    connection or channel gone, a publish nacked by the broker, a confirm that timed out).

    The message's own: everything else — validation errors, a handler bug, a constraint
    violation, an unroutable publish (``PublishError``: the routing comes from the message).
    """
    return any(_is_infrastructure_one(e) for e in _chain(exc))


def describe(exc: BaseException) -> str:
    """The class names of ``exc``'s chain, outermost first (``OperationalError <
    ConnectionRefusedError``), for a log line: never the messages, which can hold SQL
    parameters or a DSN (secrets never reach logs)."""
    return " < ".join(dict.fromkeys(type(e).__name__ for e in _chain(exc)))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what it was raised from or during, and an exception group's members."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < MAX_CHAIN:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        if isinstance(current, sqlalchemy.exc.DBAPIError) and isinstance(
                current.orig, BaseException):
            todo.append(current.orig)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _is_infrastructure_one(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            return _sqlite_transient(exc.orig)  # SQLAlchemy's class says nothing for SQLite
        return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
    if isinstance(exc, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
        return True  # a connection found dead, or the pool timing out
    if isinstance(exc, sqlite3.Error):
        return _sqlite_transient(exc)
    if isinstance(exc, _ASYNCPG_INFRASTRUCTURE + _AMQP_INFRASTRUCTURE):
        return True
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        # a publish nacked by the broker (an overflowing queue rejecting it): the broker's
        # state; a returned one (PublishError, unroutable) is the message's routing
        return not isinstance(exc, aiormq.exceptions.PublishError)
    return isinstance(exc, ConnectionError | TimeoutError | socket.gaierror)


def _sqlite_transient(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_SQLITE_TRANSIENT)
    text = str(exc).lower()
    return any(part in text for part in _SQLITE_TRANSIENT_TEXT)
