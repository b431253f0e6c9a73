"""The db engine's statements on a busy database: taking turns, within bounds.

* the in-process queue of the engine's writes to one SQLite database (outside a
  caller's transaction), bounded by the connection's busy timeout;
* the retry of a locked database (or a deadlock victim) a few times, then
  ``SessionStoreUnavailable``, which is also what any other error of the database
  becomes (a missing table is logged as an ERROR that says to run ``migrate``);
* the per-user lock of a login under ``MAX_SESSIONS_PER_USER``: MySQL/MariaDB's
  ``GET_LOCK`` around the transaction, PostgreSQL's transaction-level advisory lock
  inside it, SQLite's write lock (``hardened_sessions.cap`` names the locks).

SQLite on Django's default options (rollback journal, deferred transactions) answers
"database is locked" at once, without waiting, to a transaction that upgrades a read
lock while another connection writes: :func:`upgrades_read_lock` tells the engine
when a transaction must start with a write.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from ..cap import mysql_user_lock_name, user_lock_id
from ..exceptions import SessionStoreUnavailable

__all__ = [
    "lock_user_in_transaction",
    "run",
    "serialised_write",
    "unavailable",
    "upgrades_read_lock",
    "user_lock",
]

logger = logging.getLogger("hardened_sessions")
T = TypeVar("T")

# A locked SQLite database (or a deadlock victim elsewhere) is retried this many
# times, with these pauses, before the request is answered 503.
_LOCK_RETRY_PAUSES = (0.05, 0.1, 0.2)

# Seconds a login waits for the per-user lock held by another login of the same user
# (MAX_SESSIONS_PER_USER) before it fails closed (503).
_USER_LOCK_TIMEOUT = 5

# Python's sqlite3 waits this long for a lock when OPTIONS has no "timeout".
_SQLITE_DEFAULT_TIMEOUT = 5.0

# SQLite database (its file, resolved) -> the lock that serialises the engine's writes
# to it in this process.
_sqlite_write_locks: dict[str, threading.RLock] = {}
_sqlite_write_locks_guard = threading.Lock()


def _is_transient(exc: DatabaseError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text


def _is_missing_schema(exc: DatabaseError) -> bool:
    """The table or one of its columns is not there: migrations were not applied."""
    cause = exc.__cause__
    # PostgreSQL: undefined_table, undefined_column (psycopg 3: sqlstate; 2: pgcode).
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if code in ("42P01", "42703"):
        return True
    # MySQL/MariaDB: ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR.
    if exc.args and exc.args[0] in (1146, 1054):
        return True
    text = str(exc).lower()
    return "no such table" in text or "no such column" in text  # SQLite


def _sqlite_write_lock(connection: BaseDatabaseWrapper) -> threading.RLock | None:
    """The in-process lock of the SQLite database behind ``connection`` (None elsewhere)."""
    if connection.vendor != "sqlite":
        return None
    name = str(connection.settings_dict["NAME"])
    lock = _sqlite_write_locks.get(name)
    if lock is None:
        # Two aliases (or a relative and an absolute NAME) of one file share one lock.
        in_memory = name == ":memory:" or "mode=memory" in name  # as Django tells them
        real = name if in_memory else os.path.realpath(name)
        with _sqlite_write_locks_guard:
            lock = _sqlite_write_locks.setdefault(real, threading.RLock())
            _sqlite_write_locks.setdefault(name, lock)
    return lock


def upgrades_read_lock(connection: BaseDatabaseWrapper) -> bool:
    """An SQLite transaction on this connection starts without the write lock."""
    if connection.vendor != "sqlite":
        return False
    mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode")
    return str(mode or "").upper() not in ("IMMEDIATE", "EXCLUSIVE")


@contextmanager
def serialised_write(connection: BaseDatabaseWrapper, what: str) -> Iterator[None]:
    """Hold the in-process write lock of an SQLite database for one write.

    Not inside a caller's transaction: that transaction may hold SQLite's write lock
    already, while the thread holding this lock waits for it (a deadlock until the
    busy timeout). Bounded by the connection's busy timeout, as SQLite's own wait is."""
    lock = None if connection.in_atomic_block else _sqlite_write_lock(connection)
    if lock is None:
        yield
        return
    options = connection.settings_dict.get("OPTIONS", {})
    timeout = float(options.get("timeout", _SQLITE_DEFAULT_TIMEOUT))
    if not lock.acquire(timeout=max(timeout, 0.0)):
        logger.warning(
            "Session store %r: other threads kept writing for %.1f s; could not %s.",
            connection.alias,
            timeout,
            what,
        )
        raise SessionStoreUnavailable(
            f"The session database {connection.alias!r} could not {what} (locked)."
        )
    try:
        yield
    finally:
        lock.release()


def run(alias: str, operation: Callable[[], T], what: str, *, write: bool = False) -> T:
    """Run one database operation, retrying a locked database within a bound.

    No savepoint inside a caller's transaction: every operation of the engine is one
    statement whose failure answers 503 anyway (a create's key collision is no error,
    see the engine's ``_write_new``). ``write`` serialises it with the engine's other
    writes to the same SQLite database (see :func:`serialised_write`)."""
    connection = connections[alias]
    in_transaction = connection.in_atomic_block
    for pause in (*_LOCK_RETRY_PAUSES, None):
        try:
            with serialised_write(connection, what) if write else nullcontext():
                return operation()
        except DatabaseError as exc:
            if pause is not None and not in_transaction and _is_transient(exc):
                time.sleep(pause)
                continue
            raise unavailable(alias, what, exc) from exc
    raise AssertionError("unreachable")


def unavailable(alias: str, what: str, exc: DatabaseError) -> SessionStoreUnavailable:
    """The store failure that ``exc`` becomes, logged (an ERROR for a missing table)."""
    if _is_missing_schema(exc):
        # Not a passing outage: nothing works until the schema is there.
        logger.error(
            "The session table on database %r is missing or lacks a column "
            "(migrations not applied?): run `manage.py migrate`. Could not %s: %s",
            alias,
            what,
            exc,
        )
        return SessionStoreUnavailable(
            f"The session table on database {alias!r} is missing or out of date; "
            "run manage.py migrate."
        )
    logger.warning("Session store %r failed to %s: %s", alias, what, exc)
    return SessionStoreUnavailable(
        f"The session database {alias!r} could not {what} ({exc.__class__.__name__})."
    )


@contextmanager
def user_lock(connection: BaseDatabaseWrapper, user: str) -> Iterator[None]:
    """Around a login's transaction: MySQL/MariaDB's ``GET_LOCK`` (a connection's lock,
    released after the commit, so the next login reads this one's row), within
    ``_USER_LOCK_TIMEOUT``; on SQLite the engine's in-process write queue (as every
    write of the engine). Inside a caller's transaction MySQL's lock is released
    when this write's savepoint ends, before the caller commits (docs/settings.rst)."""
    if connection.vendor == "sqlite":
        with serialised_write(connection, "enforce MAX_SESSIONS_PER_USER"):
            yield
        return
    if connection.vendor != "mysql":
        yield
        return
    alias = connection.alias
    name = mysql_user_lock_name(str(connection.settings_dict["NAME"]), user)

    def take() -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, %s)", [name, _USER_LOCK_TIMEOUT])
            return cursor.fetchone()[0]

    obtained = run(alias, take, "take a user's login lock")
    if obtained != 1:
        logger.warning(
            "Session store %r: another login of the same user held its lock for "
            "%d s; failing this one.",
            alias,
            _USER_LOCK_TIMEOUT,
        )
        raise SessionStoreUnavailable(
            f"The session database {alias!r} could not take a user's login lock "
            f"within {_USER_LOCK_TIMEOUT} s."
        )
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
        except DatabaseError as exc:
            # The lock belongs to the connection: closing it releases it for sure.
            logger.warning("Could not release a user's login lock on %r: %s", alias, exc)
            connection.close()


def lock_user_in_transaction(connection: BaseDatabaseWrapper, user: str, claim: str) -> None:
    """Inside a login's transaction: PostgreSQL's transaction-level advisory lock on the
    user (waiting at most ``_USER_LOCK_TIMEOUT``: ``lock_timeout`` is set for that
    statement only); SQLite's write lock, taken by ``claim`` (a write that matches no
    row) first on a deferred transaction (an IMMEDIATE one holds it from BEGIN)."""
    alias = connection.alias
    if connection.vendor == "postgresql":

        def lock() -> None:
            with connection.cursor() as cursor:
                # The setting as it was (a caller's transaction may go on after this).
                cursor.execute(
                    "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
                    [f"{_USER_LOCK_TIMEOUT * 1000}ms"],
                )
                previous = cursor.fetchone()[0]
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [user_lock_id(user)])
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])

        run(alias, lock, "take a user's login lock")
    elif upgrades_read_lock(connection):

        def take_write_lock() -> None:
            with connection.cursor() as cursor:
                cursor.execute(claim)

        run(alias, take_write_lock, "take the database's write lock")
