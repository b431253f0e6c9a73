"""Session engine on the ORM: ``SESSION_ENGINE = "hardened_sessions.backends.db"``.

Rows live in :class:`hardened_sessions.models.HardenedSession`, on the database
the routers choose (``db_for_read`` for loads, ``db_for_write`` for the rest).

* create: one ``INSERT``; a primary-key collision retries with a fresh key;
* save: one ``UPDATE … WHERE key_hash = %s AND version = %s``; on a conflict the
  base class re-reads the row in a transaction (``SELECT … FOR UPDATE`` where the
  database has it; SQLite serialises through ``transaction_mode="IMMEDIATE"``)
  and writes the merge;
* errors of the database (unreachable, locked past its timeout) become
  ``SessionStoreUnavailable``; a locked SQLite file is retried a few times first.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    connections,
    router,
    transaction,
)

from ..exceptions import SessionStoreUnavailable
from ..record import Record
from ..signals import session_revoked
from .base import HardenedSessionBase, Token, hash_prefix

__all__ = ["SessionStore"]

logger = logging.getLogger("hardened_sessions")
T = TypeVar("T")

# A locked SQLite database (or a deadlock victim elsewhere) is retried this many
# times, with these pauses, before the request is answered 503.
_LOCK_RETRY_PAUSES = (0.05, 0.1, 0.2)

# (vendor, table, statement, columns) -> the SQL of the hot path (SessionStore._sql).
_STATEMENTS: dict[tuple[str, str, str, tuple[str, ...]], str] = {}


def _is_transient(exc: DatabaseError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text


def ip_or_none(value: str | None) -> str | None:
    """``value`` if it is an IP address the column can hold, else ``None``: REMOTE_ADDR
    holds whatever the server, a proxy or a middleware put there."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if getattr(address, "scope_id", None):  # fe80::1%eth0: no inet column takes it
        return None
    return str(address)


def moment_of(ts: int) -> datetime:
    """A stored timestamp as the DateTimeField value Django expects under USE_TZ."""
    if settings.USE_TZ:
        return datetime.fromtimestamp(ts, tz=UTC)
    return datetime.fromtimestamp(ts)


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

    def _run(self, alias: str, operation: Callable[[], T], what: str) -> T:
        """Run one database operation, retrying a locked database within a bound."""
        in_transaction = connections[alias].in_atomic_block
        for pause in (*_LOCK_RETRY_PAUSES, None):
            try:
                if in_transaction:
                    # Inside the caller's transaction: a savepoint keeps a failure here
                    # from breaking the rest of it.
                    with transaction.atomic(using=alias):
                        return operation()
                return operation()
            except IntegrityError:
                raise
            except DatabaseError as exc:
                if pause is not None and not in_transaction and _is_transient(exc):
                    time.sleep(pause)
                    continue
                logger.warning("Session store %r failed to %s: %s", alias, what, exc)
                raise SessionStoreUnavailable(
                    f"The session database {alias!r} could not {what} ({exc.__class__.__name__})."
                ) from exc
        raise AssertionError("unreachable")

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
            columns["ip_address"] = ip_or_none(self.device.get("ip"))
            columns["user_agent"] = (self.device.get("user_agent") or "")[:300]
        return columns

    # -- primitives ------------------------------------------------------------

    def _sql(self, alias: str, kind: str, names: tuple[str, ...] = ()) -> str:
        """The hot path's two statements, built once per vendor, table and column set.

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
        rows = self._run(
            alias,
            lambda: list(
                self.model.objects.using(alias)
                .select_for_update()
                .filter(pk=store_key)
                .values_list("data", "version")[:1]
            ),
            "read a session for update",
        )
        if not rows:
            return None
        data, version = rows[0]
        return bytes(data) if isinstance(data, memoryview) else data, version

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        alias = self._db_write()
        columns = self._columns(data, rec)
        row = self.model(key_hash=store_key, created=moment_of(rec.created), **columns)

        try:
            self._run(alias, lambda: row.save(using=alias, force_insert=True), "create a session")
        except IntegrityError:
            return None
        self._enforce_cap(store_key, rec)
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

        if not self._run(alias, update, "save a session"):
            return None
        self._enforce_cap(store_key, rec)
        return rec.version

    def _enforce_cap(self, store_key: str, rec: Record) -> None:
        """With MAX_SESSIONS_PER_USER, a session that just gained its user ends the
        user's oldest other sessions beyond the cap."""
        cap = self.config.max_sessions_per_user
        previous = self._record.user_id if self._record is not None else None
        if cap is None or rec.user_id is None or rec.user_id == previous:
            return
        from django.utils import timezone

        alias = self._db_write()
        user_id = rec.user_id
        now = timezone.now()
        others = self._run(
            alias,
            lambda: list(
                self.model.objects.using(alias)
                # Expired rows not swept yet are no sessions: they take no slot.
                .filter(user_id=user_id, expire_date__gt=now)
                .exclude(pk=store_key)
                .order_by("-created", "-last_activity")
                .values_list("pk", flat=True)
            ),
            "list a user's sessions",
        )
        for key_hash in others[cap - 1 :]:
            if self._remove(key_hash):
                session_revoked.send(
                    sender=type(self),
                    key_hash_prefix=hash_prefix(key_hash),
                    user_id=user_id,
                    reason="over MAX_SESSIONS_PER_USER",
                )

    def _remove(self, store_key: str) -> bool:
        alias = self._db_write()
        deleted, _ = self._run(
            alias,
            lambda: self.model.objects.using(alias).filter(pk=store_key).delete(),
            "delete a session",
        )
        return bool(deleted)

    @contextmanager
    def _conflict_guard(self) -> Iterator[None]:
        # The transaction's BEGIN (IMMEDIATE on SQLite: it takes the write lock) and its
        # COMMIT meet a locked or failing database like any other statement: retried
        # within the bound, then SessionStoreUnavailable, never a bare DatabaseError.
        alias = self._db_write()
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
        """Delete expired rows (Django's ``clearsessions`` calls this)."""
        cls.delete_expired()

    @classmethod
    def delete_expired(cls, batch_size: int = 1000) -> int:
        """Delete expired rows in batches of ``batch_size``; return how many were deleted."""
        from django.utils import timezone

        model = cls.get_model_class()
        alias = router.db_for_write(model)
        now = timezone.now()
        total = 0
        while True:
            batch = list(
                model.objects.using(alias)
                .filter(expire_date__lt=now)
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                return total
            deleted, _ = model.objects.using(alias).filter(pk__in=batch).delete()
            total += deleted
