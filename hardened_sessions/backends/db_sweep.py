"""The db engine's expiry sweep, and the lock that lets one runner sweep at a time.

:meth:`SessionStore.delete_expired <hardened_sessions.backends.db.SessionStore.delete_expired>`
(what ``manage.py clearexpiredsessions``, ``clearsessions`` and ``clear_expired()``
run) deletes the expired rows in batches: one ``SELECT`` of primary keys and one
``DELETE`` that checks the deadline again, so a session renewed in between stays.
With ``METADATA_RETENTION`` it then clears the device metadata of the sessions not
written for longer. :func:`single_runner` is the runner lock: PostgreSQL's advisory
lock, MySQL/MariaDB's ``GET_LOCK``; a second sweep stands down.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError, connections, models, router

from ..conf import get_config
from ..signals import emit, sessions_swept
from .db_locks import unavailable
from .db_sql import expired_delete

if TYPE_CHECKING:
    from .db import SessionStore

__all__ = ["LOCK_ID", "LOCK_NAME", "delete_expired", "mysql_lock_name", "single_runner"]

logger = logging.getLogger("hardened_sessions")

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
        raise unavailable(alias, "take the sweep's runner lock", exc) from exc
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


def delete_expired(
    store_class: type[SessionStore],
    batch_size: int,
    using: str | None,
    progress: Callable[[int], None] | None,
) -> int:
    """The sweep of ``store_class.delete_expired`` (see there); how many rows were
    deleted. ``sessions_swept`` is sent by ``store_class``, once per batch."""
    from django.utils import timezone

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    model = store_class.get_model_class()
    alias = using or router.db_for_write(model)
    # The DELETE binds one parameter per key and one for the deadline: within what
    # the database takes in one statement (SQLite before 3.32: 999).
    limit = connections[alias].features.max_query_params
    if limit is not None:
        batch_size = min(batch_size, limit - 1)
    now = timezone.now()
    total = 0
    while True:
        batch = store_class._run(
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
        deleted = _delete_expired_batch(store_class, alias, batch)
        total += deleted
        if deleted:
            # One signal per batch: the DELETE does not say which rows it took.
            emit(sessions_swept, store_class, count=deleted, using=alias)
        if progress is not None:
            progress(deleted)
        if not deleted:
            break  # what is left was renewed meanwhile: not expired any more
    retention = get_config().metadata_retention
    if retention is not None:
        _forget_device_metadata(store_class, alias, now - timedelta(seconds=retention), batch_size)
    return total


def _forget_device_metadata(
    store_class: type[SessionStore], alias: str, cutoff: datetime, batch_size: int
) -> int:
    """Clear ``ip_address`` and ``user_agent`` of the rows last written at or before
    ``cutoff``, in batches; how many were cleared. Every write of a session stores
    its metadata again and moves ``last_activity``, which each ``UPDATE`` checks
    again: metadata written meanwhile stays. The session itself is left alone."""
    model = store_class.get_model_class()
    manager = model.objects.using(alias)
    held = models.Q(ip_address__isnull=False) | ~models.Q(user_agent="")
    # Parameters: one per key, and four more (the empty user agent the filter
    # compares with, the cutoff, the two new values); a margin of eight.
    limit = connections[alias].features.max_query_params
    if limit is not None:
        batch_size = max(1, min(batch_size, limit - 8))
    total = 0
    while True:
        batch = store_class._run(
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

        cleared = store_class._run(
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


def _delete_expired_batch(
    store_class: type[SessionStore], alias: str, key_hashes: list[str]
) -> int:
    """Delete those of ``key_hashes`` whose deadline has passed, checked in the
    ``DELETE`` itself."""
    from django.utils import timezone

    connection = connections[alias]
    meta = store_class.get_model_class()._meta
    expire_date = meta.get_field("expire_date")
    sql = expired_delete(connection, meta, len(key_hashes))

    def delete() -> int:
        params = [*key_hashes, expire_date.get_db_prep_value(timezone.now(), connection)]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)

    return store_class._run(alias, delete, "delete expired sessions", write=True)
