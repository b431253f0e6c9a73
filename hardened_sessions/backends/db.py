"""Session engine on the ORM: ``SESSION_ENGINE = "hardened_sessions.backends.db"``.

Rows live in :class:`hardened_sessions.models.HardenedSession`, on the database
the routers choose (``db_for_read`` for loads, ``db_for_write`` for the rest).
This module holds the engine's five primitives; its sibling modules hold the parts
each primitive leans on: ``db_sql.py`` (the statements' SQL), ``db_locks.py``
(SQLite's write queue, the retry of a locked database, the per-user lock, and what a
database error becomes), ``db_cap.py`` (``MAX_SESSIONS_PER_USER``) and
``db_sweep.py`` (the expiry sweep and its runner lock).

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
  user's other sessions (see :mod:`.db_cap`, :mod:`..cap`);
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
connection writes). Several processes need the ``OPTIONS`` that docs/settings.rst,
"SQLite", recommends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import DatabaseError, IntegrityError, connections, router, transaction

from ..cap import cap_for
from ..capabilities import Capability
from ..device import stored_ip, stored_user_agent
from ..exceptions import SessionStoreUnavailable
from ..record import Record
from ..timeutil import moment_of
from . import db_locks, db_sql, db_sweep
from .base import HardenedSessionBase, Token, hash_prefix
from .core import Handle
from .db_cap import capped_write

# The sweep's runner lock, imported from here by projects and by
# ``manage.py clearexpiredsessions`` before it had a module of its own.
from .db_sweep import LOCK_ID, LOCK_NAME, mysql_lock_name, single_runner

__all__ = ["LOCK_ID", "LOCK_NAME", "SessionStore", "mysql_lock_name", "single_runner"]

logger = logging.getLogger("hardened_sessions")
T = TypeVar("T")


class SessionStore(HardenedSessionBase):
    @classmethod
    def capabilities(cls) -> Capability:
        """Rows of the model: listed per user, capped in the write (``db_cap``)."""
        return Capability.ROWS | Capability.USER_INDEX | Capability.USER_CAP

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
        """Run one database operation, retrying a locked database within a bound (see
        :func:`.db_locks.run`); ``write`` serialises it with the engine's other writes
        to the same SQLite database."""
        return db_locks.run(alias, operation, what, write=write)

    @staticmethod
    def _unavailable(alias: str, what: str, exc: DatabaseError) -> SessionStoreUnavailable:
        return db_locks.unavailable(alias, what, exc)

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
        """The hot path's statements, built once per vendor, table and column set (see
        :mod:`.db_sql`)."""
        return db_sql.statement(connections[alias], self.model._meta, kind, names)

    def _read(self, store_key: str) -> tuple[bytes, Handle] | None:
        """The record and its row's version column (the handle: what the ``UPDATE``
        compares, the same number the record carries)."""
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

    def _read_for_update(self, store_key: str) -> tuple[bytes, Handle] | None:
        alias = self._db_write()
        connection = connections[alias]
        sql = self._sql(alias, "select_for_update")
        # SQLite without transaction_mode="IMMEDIATE": the transaction took no lock at
        # BEGIN. A SELECT first would take a read lock, and the UPDATE after it would
        # have to upgrade it; while another connection writes, SQLite refuses that
        # upgrade at once ("database is locked", its busy timeout never consulted).
        # A write as the first statement waits for the write lock instead.
        claim = self._sql(alias, "claim") if db_locks.upgrades_read_lock(connection) else None

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
                if vendor == "mysql" and exc.args and exc.args[0] == db_sql.MYSQL_DUPLICATE_KEY:
                    return 0
                raise

        write = insert
        if vendor not in db_sql.INSERT_OR_NOTHING and vendor != "mysql":
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
            inserted = capped_write(self, alias, store_key, cap, write, "create a session")
        else:
            inserted = self._run(alias, write, "create a session", write=True)
        if not inserted:
            return None
        return Token(rec.version)

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
        params += [store_key, token.version]
        sql = self._sql(alias, "update", names)

        def update() -> int:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return int(cursor.rowcount)

        previous = self._record.user_id if self._record is not None else None
        cap = cap_for(self.config, rec.user_id, previous)
        if cap is not None:
            updated = capped_write(
                self, alias, store_key, cap, update, "save a session", existing=True
            )
        else:
            updated = self._run(alias, update, "save a session", write=True)
        if not updated:
            return None
        return Token(rec.version)

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
        with db_locks.serialised_write(connection, "merge a concurrent save"):
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
        (live ones too) not written for longer (see :mod:`.db_sweep`)."""
        return db_sweep.delete_expired(cls, batch_size, using, progress)
