"""``MAX_SESSIONS_PER_USER`` on the db engine: a login's write and the cap, in one step.

The write of a session gaining its user (a login: the ``INSERT`` of a new session or
the ``UPDATE`` of an anonymous one) runs in one transaction under a per-user lock
(:func:`.db_locks.user_lock`, :func:`.db_locks.lock_user_in_transaction`), with the
trim of the user's other live sessions to the newest ``limit - 1`` or, under the
refuse policy, the refusal (:mod:`hardened_sessions.cap` decides, reports and
refuses). Two logins of one user take turns, each seeing the other's committed row:
they can never each end the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import DatabaseError, connections, transaction

from ..cap import UserCap
from ..cap import refuse as refuse_login
from ..cap import report as report_cap
from .db_locks import lock_user_in_transaction, unavailable, user_lock

if TYPE_CHECKING:
    from .db import SessionStore

__all__ = ["capped_write"]

# Databases whose logins take a per-user lock (hardened_sessions.cap).
_USER_LOCKING = frozenset({"postgresql", "mysql", "sqlite"})


def capped_write(
    store: SessionStore,
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
    ``existing`` row is deleted) and ``SessionLimitReached`` is raised. Rows go through
    the store's own ``_remove`` (cached_db's deletes the cached copy too)."""
    connection = connections[alias]
    refused = False
    with user_lock(connection, cap.user):
        atomic = transaction.atomic(using=alias)
        store._run(alias, atomic.__enter__, "start a transaction")
        try:
            lock_user_in_transaction(connection, cap.user, store._sql(alias, "claim"))
            others = _live_others(store, alias, cap.user, store_key)
            if cap.refuse and len(others) >= cap.limit:
                refused = True
                written = 0
                if existing:
                    store._remove(store_key)
            else:
                written = store._run(alias, write, what)
                if written:
                    for key_hash in others[cap.limit - 1 :]:
                        if store._remove(key_hash):
                            cap.ended.append(key_hash)
        except BaseException as exc:
            atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            atomic.__exit__(None, None, None)
        except DatabaseError as exc:
            raise unavailable(alias, "commit a login's session", exc) from exc
    if refused:
        raise refuse_login(type(store), store_key, cap)
    report_cap(type(store), cap, cap.ended)
    return written


def _live_others(store: SessionStore, alias: str, user: str, store_key: str) -> list[str]:
    """Key hashes of the user's other live sessions, newest first (by creation).
    Expired rows not swept yet are no sessions: they take no slot."""
    from django.utils import timezone

    connection = connections[alias]
    now = timezone.now()
    model = store.model

    def others() -> list[str]:
        rows = (
            model.objects.using(alias)
            .filter(user_id=user, expire_date__gt=now)
            .exclude(pk=store_key)
            .order_by("-created", "-last_activity", "-pk")
        )
        if connection.vendor not in _USER_LOCKING and (connection.features.has_select_for_update):
            # No per-user lock on this database: at least the rows read stay put.
            rows = rows.select_for_update()
        return list(rows.values_list("pk", flat=True))

    return store._run(alias, others, "list a user's sessions")
