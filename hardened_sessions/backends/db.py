"""Session engine on the ORM: ``SESSION_ENGINE = "hardened_sessions.backends.db"``.

Rows live in :class:`hardened_sessions.models.HardenedSession`, on the database
the routers choose (``db_for_read`` for loads, ``db_for_write`` for the rest).

* load and ``exists()``: one ``SELECT``, in a caller's transaction too (no savepoint);
* create: one ``INSERT`` (``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite, so a
  key collision leaves a caller's transaction usable); a collision retries with a
  fresh key;
* save: one ``UPDATE … WHERE key_hash = %s AND version = %s``; on a conflict the
  base class re-reads the row in a transaction (``SELECT … FOR UPDATE`` where the
  database has it) and writes the merge;
* delete: one ``DELETE``;
* with ``MAX_SESSIONS_PER_USER``, the write of a session gaining its user (a login)
  runs in one transaction under a per-user lock, with the trim (or refusal) of the
  user's other sessions (see :meth:`SessionStore._capped_write`, :mod:`..cap`);
* errors of the database (unreachable, locked past its timeout, a write refused by a
  trigger or a foreign key) become ``SessionStoreUnavailable``; a locked database is
  retried a few times first; a missing table is logged as an ERROR that says to run
  ``manage.py migrate``.

SQLite on Django's default options (no ``OPTIONS``: rollback journal, deferred
transactions) works in one process: the engine's own writes to one SQLite database
are serialised in-process (only outside a caller's transaction, which may hold
SQLite's write lock already), and the read-merge-write starts with a write, so that
its transaction takes the write lock up front (SQLite answers "database is locked" at
once, without waiting, to a transaction that upgrades a read lock while another
connection writes). Several processes need the ``OPTIONS`` the README recommends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    connections,
    models,
    router,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper

from ..cap import UserCap, cap_for, mysql_user_lock_name, user_lock_id
from ..cap import refuse as refuse_login
from ..cap import report as report_cap
from ..conf import get_config
from ..device import stored_ip, stored_user_agent
from ..exceptions import SessionStoreUnavailable
from ..record import Record
from ..signals import emit, sessions_swept
from .base import HardenedSessionBase, Token, hash_prefix

__all__ = ["LOCK_ID", "SessionStore", "mysql_lock_name", "single_runner"]

logger = logging.getLogger("hardened_sessions")
T = TypeVar("T")

# A locked SQLite database (or a deadlock victim elsewhere) is retried this many
# times, with these pauses, before the request is answered 503.
_LOCK_RETRY_PAUSES = (0.05, 0.1, 0.2)

# (vendor, table, statement, columns) -> the SQL of the hot path (SessionStore._sql).
_STATEMENTS: dict[tuple[str, str, str, tuple[str, ...]], str] = {}

# Vendors whose INSERT can skip a primary-key collision without an error
# (``ON CONFLICT (key_hash) DO NOTHING``): PostgreSQL, and SQLite from 3.24 (Django
# 5.2 needs 3.31).
_INSERT_OR_NOTHING = frozenset({"postgresql", "sqlite"})
# MySQL/MariaDB: ER_DUP_ENTRY. A duplicate key fails only its statement there, never
# the transaction around it.
_MYSQL_DUPLICATE_KEY = 1062

# Seconds a login waits for the per-user lock held by another login of the same user
# (MAX_SESSIONS_PER_USER) before it fails closed (503).
_USER_LOCK_TIMEOUT = 5
# Databases whose logins take a per-user lock (hardened_sessions.cap).
_USER_LOCKING = frozenset({"postgresql", "mysql", "sqlite"})

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


def _upgrades_read_lock(connection: BaseDatabaseWrapper) -> bool:
    """An SQLite transaction on this connection starts without the write lock."""
    if connection.vendor != "sqlite":
        return False
    mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode")
    return str(mode or "").upper() not in ("IMMEDIATE", "EXCLUSIVE")


@contextmanager
def _serialised_write(connection: BaseDatabaseWrapper, what: str) -> Iterator[None]:
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


def moment_of(ts: int) -> datetime:
    """A stored timestamp as the DateTimeField value Django expects under USE_TZ."""
    if settings.USE_TZ:
        return datetime.fromtimestamp(ts, tz=UTC)
    return datetime.fromtimestamp(ts)


# --- one sweep runner at a time ---------------------------------------------------------

LOCK_NAME = "hardened_sessions.clearexpiredsessions"
# A stable 63-bit number for pg_try_advisory_lock, derived from the name.
LOCK_ID = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big") >> 1


def mysql_lock_name(database: str) -> str:
    """GET_LOCK names are server-wide (PostgreSQL's advisory locks are per database), so
    the name says which database it guards; hashed to stay within MySQL's 64 characters."""
    return f"{LOCK_NAME}:{hashlib.sha256(database.encode()).hexdigest()[:24]}"


@contextmanager
def single_runner(alias: str) -> Iterator[bool]:
    """Hold the database's advisory lock for the block; yield whether it was obtained
    (True where the database has no such lock)."""
    connection = connections[alias]
    vendor = connection.vendor
    if vendor not in ("postgresql", "mysql"):
        yield True
        return
    name = mysql_lock_name(connection.settings_dict["NAME"])
    # PostgreSQL in a caller's transaction: a transaction lock, released by its commit or
    # rollback. A session lock would be released by a statement after the sweep, which
    # fails once a failed batch has aborted the transaction: the connection would keep
    # the lock, and every later sweep would stand down.
    in_transaction = vendor == "postgresql" and connection.in_atomic_block
    try:
        with connection.cursor() as cursor:
            if in_transaction:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_ID])
            elif vendor == "postgresql":
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
            else:
                cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
            obtained = bool(cursor.fetchone()[0])
    except DatabaseError as exc:
        raise SessionStore._unavailable(alias, "take the sweep's runner lock", exc) from exc
    try:
        yield obtained
    finally:
        if obtained and not in_transaction:
            try:
                with connection.cursor() as cursor:
                    if vendor == "postgresql":
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
                    else:
                        cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
            except DatabaseError as exc:
                # The lock belongs to the connection: closing it releases the lock for
                # sure (and never hides the sweep's own outcome behind this error).
                logger.warning("Could not release the sweep's runner lock on %r: %s", alias, exc)
                connection.close()


class SessionStore(HardenedSessionBase):
    def __init__(self, session_key: str | None = None) -> None:
        super().__init__(session_key)

    @classmethod
    def get_model_class(cls) -> Any:
        # Imported lazily so that importing the engine does not need the app registry.
        from ..models import HardenedSession

        return HardenedSession

    @property
    def model(self) -> Any:
        return self.get_model_class()

    def _db_read(self) -> str:
        return router.db_for_read(self.model)

    def _db_write(self) -> str:
        return router.db_for_write(self.model)

    @classmethod
    def _run(cls, alias: str, operation: Callable[[], T], what: str, *, write: bool = False) -> T:
        """Run one database operation, retrying a locked database within a bound.

        No savepoint inside a caller's transaction: every operation here is one
        statement whose failure answers 503 anyway (a create's key collision is no
        error, see :meth:`_write_new`). ``write`` serialises it with the engine's other
        writes to the same SQLite database (see :func:`_serialised_write`)."""
        connection = connections[alias]
        in_transaction = connection.in_atomic_block
        for pause in (*_LOCK_RETRY_PAUSES, None):
            try:
                with _serialised_write(connection, what) if write else nullcontext():
                    return operation()
            except DatabaseError as exc:
                if pause is not None and not in_transaction and _is_transient(exc):
                    time.sleep(pause)
                    continue
                raise cls._unavailable(alias, what, exc) from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _unavailable(alias: str, what: str, exc: DatabaseError) -> SessionStoreUnavailable:
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

    def _columns(self, data: memoryview, rec: Record) -> dict[str, Any]:
        columns = {
            "data": data,
            "expire_date": moment_of(rec.deadline),
            "last_activity": moment_of(rec.activity),
            "user_id": rec.user_id,
            "size": len(data),
            "version": rec.version,
        }
        if self.device is not None:
            # Reduced here, before anything is written, to what DEVICE_METADATA keeps.
            config = self.config
            columns["ip_address"] = stored_ip(self.device.get("ip"), config.device_ip)
            columns["user_agent"] = stored_user_agent(
                self.device.get("user_agent"), config.device_user_agent
            )
        return columns

    # -- primitives ------------------------------------------------------------

    def _sql(self, alias: str, kind: str, names: tuple[str, ...] = ()) -> str:
        """The hot path's statements, built once per vendor, table and column set.

        Building and compiling a QuerySet for every load and save costs more than the
        I/O on SQLite (``bench/run.py --only profile``). Django's own cursor keeps the
        routers, the connection's options, the error wrapping and the ``%s`` style."""
        connection = connections[alias]
        meta = self.model._meta
        key = (connection.vendor, meta.db_table, kind, names)
        sql = _STATEMENTS.get(key)
        if sql is None:
            quote = connection.ops.quote_name

            def column(name: str) -> str:
                return quote(meta.get_field(name).column)

            table = quote(meta.db_table)
            where = f"{column('key_hash')} = %s"
            if kind == "select":
                sql = f"SELECT {column('data')}, {column('version')} FROM {table} WHERE {where}"
            elif kind == "select_for_update":
                sql = f"SELECT {column('data')}, {column('version')} FROM {table} WHERE {where}"
                if connection.features.has_select_for_update:
                    sql += " FOR UPDATE"
            elif kind == "claim":
                # Matches no row, but takes SQLite's write lock (see _read_for_update).
                sql = f"UPDATE {table} SET {column('version')} = {column('version')} WHERE 0 = 1"
            elif kind == "insert":
                sql = (
                    f"INSERT INTO {table} ({', '.join(column(n) for n in names)}) "
                    f"VALUES ({', '.join(['%s'] * len(names))})"
                )
                if connection.vendor in _INSERT_OR_NOTHING:
                    sql += f" ON CONFLICT ({column('key_hash')}) DO NOTHING"
            elif kind == "delete":
                sql = f"DELETE FROM {table} WHERE {where}"
            else:
                sets = ", ".join(f"{column(name)} = %s" for name in names)
                sql = f"UPDATE {table} SET {sets} WHERE {where} AND {column('version')} = %s"
            _STATEMENTS[key] = sql
        return sql

    def _read(self, store_key: str) -> tuple[bytes, Token] | None:
        alias = self._db_read()
        sql = self._sql(alias, "select")

        def select() -> Any:
            with connections[alias].cursor() as cursor:
                cursor.execute(sql, [store_key])
                return cursor.fetchone()

        row = self._run(alias, select, "read a session")
        if row is None:
            return None
        data, version = row
        return bytes(data) if isinstance(data, memoryview) else data, version

    def _read_for_update(self, store_key: str) -> tuple[bytes, Token] | None:
        alias = self._db_write()
        connection = connections[alias]
        sql = self._sql(alias, "select_for_update")
        # SQLite without transaction_mode="IMMEDIATE": the transaction took no lock at
        # BEGIN. A SELECT first would take a read lock, and the UPDATE after it would
        # have to upgrade it; while another connection writes, SQLite refuses that
        # upgrade at once ("database is locked", its busy timeout never consulted).
        # A write as the first statement waits for the write lock instead.
        claim = self._sql(alias, "claim") if _upgrades_read_lock(connection) else None

        def select() -> Any:
            with connection.cursor() as cursor:
                if claim is not None:
                    cursor.execute(claim)
                cursor.execute(sql, [store_key])
                return cursor.fetchone()

        row = self._run(alias, select, "read a session for update")
        if row is None:
            return None
        data, version = row
        return bytes(data) if isinstance(data, memoryview) else data, version

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        alias = self._db_write()
        connection = connections[alias]
        row = self.model(
            key_hash=store_key, created=moment_of(rec.created), **self._columns(data, rec)
        )
        fields = self.model._meta.local_concrete_fields
        names = tuple(field.name for field in fields)
        params = [field.get_db_prep_save(field.pre_save(row, True), connection) for field in fields]
        sql = self._sql(alias, "insert", names)
        vendor = connection.vendor

        def insert() -> int:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    return int(cursor.rowcount)
            except IntegrityError as exc:
                if vendor == "mysql" and exc.args and exc.args[0] == _MYSQL_DUPLICATE_KEY:
                    return 0
                raise

        write = insert
        if vendor not in _INSERT_OR_NOTHING and vendor != "mysql":
            # Another database: a collision is an IntegrityError, which may break a
            # caller's transaction, so the INSERT runs in a savepoint there.
            def insert_in_savepoint() -> int:
                try:
                    with transaction.atomic(using=alias):
                        return insert()
                except IntegrityError:
                    return 0

            write = insert_in_savepoint
        cap = cap_for(self.config, rec.user_id, None)
        if cap is not None:
            inserted = self._capped_write(alias, store_key, cap, write, "create a session")
        else:
            inserted = self._run(alias, write, "create a session", write=True)
        if not inserted:
            return None
        return rec.version

    def _write_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        alias = self._db_write()
        connection = connections[alias]
        columns = self._columns(data, rec)
        names = tuple(columns)
        meta = self.model._meta
        params = [
            meta.get_field(name).get_db_prep_save(columns[name], connection) for name in names
        ]
        params += [store_key, token]
        sql = self._sql(alias, "update", names)

        def update() -> int:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return int(cursor.rowcount)

        previous = self._record.user_id if self._record is not None else None
        cap = cap_for(self.config, rec.user_id, previous)
        if cap is not None:
            updated = self._capped_write(
                alias, store_key, cap, update, "save a session", existing=True
            )
        else:
            updated = self._run(alias, update, "save a session", write=True)
        if not updated:
            return None
        return rec.version

    # -- MAX_SESSIONS_PER_USER (hardened_sessions.cap) ------------------------------

    def _capped_write(
        self,
        alias: str,
        store_key: str,
        cap: UserCap,
        write: Callable[[], int],
        what: str,
        *,
        existing: bool = False,
    ) -> int:
        """``write`` (the INSERT or UPDATE of a session gaining its user; rows written)
        and the cap, in one transaction under the user's lock: the user's other live
        sessions are trimmed to the newest ``limit - 1`` (by creation), or, under the
        refuse policy with ``limit`` of them live, nothing is written (the session's
        ``existing`` row is deleted) and ``SessionLimitReached`` is raised.

        The lock (see :meth:`_user_lock`) makes two logins of one user take turns, each
        seeing the other's committed row: they can never each end the other."""
        connection = connections[alias]
        refused = False
        with self._user_lock(connection, cap.user):
            atomic = transaction.atomic(using=alias)
            self._run(alias, atomic.__enter__, "start a transaction")
            try:
                self._lock_user_in_transaction(connection, cap.user)
                others = self._live_others(alias, cap.user, store_key)
                if cap.refuse and len(others) >= cap.limit:
                    refused = True
                    written = 0
                    if existing:
                        self._remove(store_key)
                else:
                    written = self._run(alias, write, what)
                    if written:
                        for key_hash in others[cap.limit - 1 :]:
                            if self._remove(key_hash):
                                cap.ended.append(key_hash)
            except BaseException as exc:
                atomic.__exit__(type(exc), exc, exc.__traceback__)
                raise
            try:
                atomic.__exit__(None, None, None)
            except DatabaseError as exc:
                raise self._unavailable(alias, "commit a login's session", exc) from exc
        if refused:
            raise refuse_login(type(self), store_key, cap)
        report_cap(type(self), cap, cap.ended)
        return written

    @contextmanager
    def _user_lock(self, connection: BaseDatabaseWrapper, user: str) -> Iterator[None]:
        """Around the transaction: MySQL/MariaDB's ``GET_LOCK`` (a connection's lock,
        released after the commit, so the next login reads this one's row), within
        ``_USER_LOCK_TIMEOUT``; on SQLite the engine's in-process write queue (as every
        write of the engine). Inside a caller's transaction MySQL's lock is released
        when this write's savepoint ends, before the caller commits (docs/settings.rst)."""
        if connection.vendor == "sqlite":
            with _serialised_write(connection, "enforce MAX_SESSIONS_PER_USER"):
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

        obtained = self._run(alias, take, "take a user's login lock")
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

    def _lock_user_in_transaction(self, connection: BaseDatabaseWrapper, user: str) -> None:
        """Inside the transaction: PostgreSQL's transaction-level advisory lock on the
        user (waiting at most ``_USER_LOCK_TIMEOUT``: ``lock_timeout`` is set for that
        statement only); SQLite's write lock, taken by a write first on a deferred
        transaction (an IMMEDIATE one holds it from BEGIN)."""
        alias = connection.alias
        if connection.vendor == "postgresql":

            def lock() -> None:
                with connection.cursor() as cursor:
                    # The setting as it was (a caller's transaction may go on after this).
                    cursor.execute(
                        "SELECT current_setting('lock_timeout'), "
                        "set_config('lock_timeout', %s, true)",
                        [f"{_USER_LOCK_TIMEOUT * 1000}ms"],
                    )
                    previous = cursor.fetchone()[0]
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [user_lock_id(user)])
                    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])

            self._run(alias, lock, "take a user's login lock")
        elif _upgrades_read_lock(connection):
            claim = self._sql(alias, "claim")

            def take_write_lock() -> None:
                with connection.cursor() as cursor:
                    cursor.execute(claim)

            self._run(alias, take_write_lock, "take the database's write lock")

    def _live_others(self, alias: str, user: str, store_key: str) -> list[str]:
        """Key hashes of the user's other live sessions, newest first (by creation).
        Expired rows not swept yet are no sessions: they take no slot."""
        from django.utils import timezone

        connection = connections[alias]
        now = timezone.now()

        def others() -> list[str]:
            rows = (
                self.model.objects.using(alias)
                .filter(user_id=user, expire_date__gt=now)
                .exclude(pk=store_key)
                .order_by("-created", "-last_activity", "-pk")
            )
            if connection.vendor not in _USER_LOCKING and (
                connection.features.has_select_for_update
            ):
                # No per-user lock on this database: at least the rows read stay put.
                rows = rows.select_for_update()
            return list(rows.values_list("pk", flat=True))

        return self._run(alias, others, "list a user's sessions")

    def _remove(self, store_key: str) -> bool:
        alias = self._db_write()
        connection = connections[alias]
        sql = self._sql(alias, "delete")

        def delete() -> int:
            with connection.cursor() as cursor:
                cursor.execute(sql, [store_key])
                return int(cursor.rowcount)

        # A refusal (a trigger, a foreign key a project added) is an IntegrityError:
        # a store failure like any other (503, and cycle_key fails closed).
        return bool(self._run(alias, delete, "delete a session", write=True))

    def _discard(self, store_key: str) -> None:
        alias = self._db_write()
        if not connections[alias].in_atomic_block:
            super()._discard(store_key)
            return
        # Inside a caller's transaction the load goes on after a failed best-effort
        # delete, so the failure must not break that transaction (PostgreSQL refuses
        # every statement after an error): a savepoint, rolled back on failure.
        try:
            with transaction.atomic(using=alias):
                self._remove(store_key)
        except (SessionStoreUnavailable, DatabaseError):
            logger.warning("Could not delete expired session %s….", hash_prefix(store_key))

    @contextmanager
    def _conflict_guard(self) -> Iterator[None]:
        # The transaction's BEGIN (IMMEDIATE on SQLite: it takes the write lock) and its
        # COMMIT meet a locked or failing database like any other statement: retried
        # within the bound, then SessionStoreUnavailable, never a bare DatabaseError.
        alias = self._db_write()
        connection = connections[alias]
        with _serialised_write(connection, "merge a concurrent save"):
            atomic = transaction.atomic(using=alias)
            self._run(alias, atomic.__enter__, "start a transaction")
            try:
                yield
            except BaseException as exc:
                atomic.__exit__(type(exc), exc, exc.__traceback__)
                raise
            try:
                atomic.__exit__(None, None, None)
            except DatabaseError as exc:
                logger.warning("Session store %r failed to commit a merged save: %s", alias, exc)
                raise SessionStoreUnavailable(
                    f"The session database {alias!r} could not commit a merged save "
                    f"({exc.__class__.__name__})."
                ) from exc

    # -- maintenance -----------------------------------------------------------

    @classmethod
    def clear_expired(cls) -> None:
        """Delete expired rows (Django's ``clearsessions`` calls this): the same sweep as
        ``manage.py clearexpiredsessions``, and nothing when another sweep holds the
        database's runner lock."""
        alias = router.db_for_write(cls.get_model_class())
        with single_runner(alias) as obtained:
            if not obtained:
                logger.info(
                    "Another sweep of expired sessions runs on %r; not starting one.", alias
                )
                return
            cls.delete_expired(using=alias)

    @classmethod
    def delete_expired(
        cls,
        batch_size: int = 1000,
        *,
        using: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete the rows expired now, in batches of ``batch_size``; how many were
        deleted. Each batch is one ``SELECT`` of primary keys and one ``DELETE`` that
        checks the deadline again, so a session renewed in between stays.

        With ``METADATA_RETENTION``, then clears the device metadata of the sessions
        (live ones too) not written for longer (see :meth:`_forget_device_metadata`)."""
        from django.utils import timezone

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
        model = cls.get_model_class()
        alias = using or router.db_for_write(model)
        # The DELETE binds one parameter per key and one for the deadline: within what
        # the database takes in one statement (SQLite before 3.32: 999).
        limit = connections[alias].features.max_query_params
        if limit is not None:
            batch_size = min(batch_size, limit - 1)
        now = timezone.now()
        total = 0
        while True:
            batch = cls._run(
                alias,
                lambda: list(
                    model.objects.using(alias)
                    .filter(expire_date__lte=now)
                    .order_by()
                    .values_list("pk", flat=True)[:batch_size]
                ),
                "list expired sessions",
            )
            if not batch:
                break
            deleted = cls._delete_expired_batch(alias, batch)
            total += deleted
            if deleted:
                # One signal per batch: the DELETE does not say which rows it took.
                emit(sessions_swept, cls, count=deleted, using=alias)
            if progress is not None:
                progress(deleted)
            if not deleted:
                break  # what is left was renewed meanwhile: not expired any more
        retention = get_config().metadata_retention
        if retention is not None:
            cls._forget_device_metadata(alias, now - timedelta(seconds=retention), batch_size)
        return total

    @classmethod
    def _forget_device_metadata(cls, alias: str, cutoff: datetime, batch_size: int) -> int:
        """Clear ``ip_address`` and ``user_agent`` of the rows last written at or before
        ``cutoff``, in batches; how many were cleared. Every write of a session stores
        its metadata again and moves ``last_activity``, which each ``UPDATE`` checks
        again: metadata written meanwhile stays. The session itself is left alone."""
        model = cls.get_model_class()
        manager = model.objects.using(alias)
        held = models.Q(ip_address__isnull=False) | ~models.Q(user_agent="")
        # Parameters: one per key, and four more (the empty user agent the filter
        # compares with, the cutoff, the two new values); a margin of eight.
        limit = connections[alias].features.max_query_params
        if limit is not None:
            batch_size = max(1, min(batch_size, limit - 8))
        total = 0
        while True:
            batch = cls._run(
                alias,
                lambda: list(
                    manager.filter(held, last_activity__lte=cutoff)
                    .order_by()
                    .values_list("pk", flat=True)[:batch_size]
                ),
                "list sessions past METADATA_RETENTION",
            )
            if not batch:
                break

            def clear(keys: list[str] = batch) -> int:
                found = manager.filter(held, pk__in=keys, last_activity__lte=cutoff)
                return int(found.update(ip_address=None, user_agent=""))

            cleared = cls._run(
                alias, clear, "clear device metadata past METADATA_RETENTION", write=True
            )
            total += cleared
            if not cleared:
                break  # the rest was written meanwhile: its metadata is fresh
        if total:
            logger.info(
                "Cleared the device metadata of %d session(s) on %r (METADATA_RETENTION).",
                total,
                alias,
            )
        return total

    @classmethod
    def _delete_expired_batch(cls, alias: str, key_hashes: list[str]) -> int:
        """Delete those of ``key_hashes`` whose deadline has passed, checked in the
        ``DELETE`` itself."""
        from django.utils import timezone

        connection = connections[alias]
        meta = cls.get_model_class()._meta
        quote = connection.ops.quote_name
        expire_date = meta.get_field("expire_date")
        sql = (
            f"DELETE FROM {quote(meta.db_table)} "
            f"WHERE {quote(meta.get_field('key_hash').column)} "
            f"IN ({', '.join(['%s'] * len(key_hashes))}) "
            f"AND {quote(expire_date.column)} <= %s"
        )

        def delete() -> int:
            params = [*key_hashes, expire_date.get_db_prep_value(timezone.now(), connection)]
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return int(cursor.rowcount)

        return cls._run(alias, delete, "delete expired sessions", write=True)
