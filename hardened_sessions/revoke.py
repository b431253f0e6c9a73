"""Per-user sessions: list them, end them ("log out other devices").

The db and cached_db engines keep the user's pk in an indexed column. The cache
engine keeps a per-user index where it can be updated atomically with the
sessions (Redis, LocMemCache); elsewhere (Redis Cluster, memcached) these
helpers raise ``NotImplementedError`` saying why. Deletes go through the
configured engine, so cached copies go too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import router
from django.utils import timezone

from . import keys, record, timeutil
from .backends.base import hash_prefix
from .capabilities import Capability, capabilities_of
from .signals import Reason, emit, reason_and_description, session_revoked

__all__ = [
    "arevoke_user_sessions",
    "auser_sessions",
    "revoke_sessions",
    "revoke_user_sessions",
    "user_sessions",
]

logger = logging.getLogger("hardened_sessions")

_NO_INDEX = (
    "This session cache keeps no per-user index of sessions: on Redis Cluster and "
    "memcached such an index cannot be updated atomically with the sessions themselves "
    "(they live under other keys, on other nodes), and an index that missed a session "
    "would let a revocation miss it too. Use Redis without Cluster, or the db or "
    "cached_db engine, to list or revoke a user's sessions; logging out still works "
    "everywhere, and a password change still ends other sessions lazily through "
    "Django's session hash."
)


def _store_class() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore


def _model_backed(store_class: Any) -> bool:
    return Capability.ROWS in capabilities_of(store_class)


def _user_pk(user: Any) -> str:
    pk = getattr(user, "pk", user)
    if pk is None:
        raise ValueError("The user has no primary key (an unsaved or anonymous user).")
    return str(pk)


def _indexed_store(store_class: Any) -> Any:
    """The byte store of a cache-engine session store, if it keeps a per-user index."""
    if Capability.USER_INDEX not in capabilities_of(store_class):
        raise NotImplementedError(_NO_INDEX)
    store = getattr(store_class(), "_store", None)
    if store is None or Capability.USER_INDEX not in store.capabilities:
        raise NotImplementedError(_NO_INDEX)
    return store


def _indexed_sessions(store: Any, pk: str) -> tuple[list[Any], list[str]]:
    """Live sessions of user ``pk`` from the index, and the index entries that ended.

    The store reads the index and the records in pipelined batches (a few round trips,
    not one per session); its write path keeps the index near the live sessions."""
    from .backends.base import past_deadline
    from .conf import get_config
    from .models import HardenedSession

    config = get_config()
    live, ended = [], []
    now = timeutil.now()
    for store_key, raw in store.user_records(pk):
        try:
            rec = record.decode(raw, store_key, config.max_bytes) if raw is not None else None
        except record.CorruptRecord:
            rec = None
        if rec is None or past_deadline(rec, now, config) or rec.user_id != pk:
            ended.append(store_key)
            continue
        live.append(
            HardenedSession(
                key_hash=store_key,
                expire_date=timeutil.moment_of(rec.deadline),
                created=timeutil.moment_of(rec.created),
                last_activity=timeutil.moment_of(rec.activity),
                user_id=pk,
                size=len(raw) if raw is not None else 0,
                version=rec.version,
            )
        )
    return live, ended


def _revoke_all(store_class: Any, store_keys: list[str]) -> list[bool]:
    """Revoke each session through the engine; whether each one was ended by this call.

    On the cache engine a revocation is exactly the byte store's delete, so the deletes
    go out pipelined (``delete_many``: one write per batch, not a round trip each); an
    engine that revokes otherwise (cached_db, db, a subclass) is called per session."""
    from .backends.base import HardenedSessionBase
    from .backends.cache import SessionStore as CacheStore

    engine = store_class()
    byte_store: Any = getattr(engine, "_store", None)
    if (
        store_keys
        and isinstance(engine, CacheStore)
        and type(engine).revoke is HardenedSessionBase.revoke
        and type(engine)._remove is CacheStore._remove
        and hasattr(byte_store, "delete_many")
    ):
        deleted: list[bool] = byte_store.delete_many(store_keys)
        return deleted
    return [bool(engine.revoke(store_key)) for store_key in store_keys]


def user_sessions(user: Any) -> list[Any]:
    """The live sessions of ``user`` (a user object or its pk), newest activity first,
    as ``HardenedSession`` instances (unsaved ones on the cache engine). Raises
    ``NotImplementedError`` where the store keeps no per-user index."""
    store_class = _store_class()
    if not _model_backed(store_class):
        store = _indexed_store(store_class)
        pk = _user_pk(user)
        live, ended = _indexed_sessions(store, pk)
        store.forget_members(pk, ended)
        return sorted(live, key=lambda s: s.last_activity, reverse=True)
    from .models import HardenedSession

    alias = router.db_for_read(HardenedSession)
    return list(
        HardenedSession.objects.using(alias)
        .filter(user_id=_user_pk(user), expire_date__gt=timezone.now())
        .order_by("-last_activity")
    )


def revoke_sessions(
    key_hashes: Iterable[str],
    *,
    reason: str = Reason.REVOKED,
    description: str | None = None,
    user_ids: Mapping[str, str | None] | None = None,
) -> int:
    """End the sessions stored under these key hashes; return how many were ended.
    ``user_ids`` (key hash -> user pk) names the users in the ``session_revoked`` signals.
    ``reason`` is a :class:`~hardened_sessions.signals.Reason`; a free text is taken as
    the ``description`` of ``Reason.REVOKED``."""
    reason, description = reason_and_description(reason, description)
    store_class = _store_class()
    users = user_ids or {}
    targets = list(dict.fromkeys(key_hashes))
    ended = 0
    for store_key, was_ended in zip(targets, _revoke_all(store_class, targets), strict=True):
        if was_ended:
            ended += 1
            emit(
                session_revoked,
                store_class,
                key_hash_prefix=hash_prefix(store_key),
                user_id=users.get(store_key),
                reason=reason,
                description=description,
            )
    return ended


def revoke_user_sessions(
    user: Any,
    *,
    keep: str | None = None,
    reason: str = Reason.REVOKED,
    description: str | None = None,
) -> int:
    """End every session of ``user`` (a user object or its pk) except the one whose
    session key is ``keep``; return how many were ended (sessions this call deleted, not
    ones found gone). Raises ``NotImplementedError`` where the cache engine keeps no
    per-user index. ``reason`` and ``description`` as for :func:`revoke_sessions`."""
    reason, description = reason_and_description(reason, description)
    store_class = _store_class()
    pk = _user_pk(user)
    keep_hash = keys.store_key(keep) if keys.is_well_formed(keep) and keep else None
    if _model_backed(store_class):
        from .models import HardenedSession

        alias = router.db_for_write(HardenedSession)
        now = timezone.now()
        rows = HardenedSession.objects.using(alias).filter(user_id=pk)
        # Expired rows not yet swept go too, but were no live session: not counted.
        expiries = dict(rows.values_list("pk", "expire_date"))
        store_keys = list(expiries)
        live_hashes = {k for k, expiry in expiries.items() if expiry > now}
        index, ended_meanwhile = None, list[str]()
    else:
        index = _indexed_store(store_class)
        live, ended_meanwhile = _indexed_sessions(index, pk)
        store_keys = [session.key_hash for session in live]
        live_hashes = set(store_keys)
    targets = [store_key for store_key in store_keys if store_key != keep_hash]
    ended = 0
    for store_key, was_ended in zip(targets, _revoke_all(store_class, targets), strict=True):
        if was_ended and store_key in live_hashes:
            ended += 1
            emit(
                session_revoked,
                store_class,
                key_hash_prefix=hash_prefix(store_key),
                user_id=pk,
                reason=reason,
                description=description,
            )
    if index is not None:
        index.forget_members(pk, [*ended_meanwhile, *targets])
    if ended:
        logger.info("Ended %d session(s) of user %s (%s).", ended, pk, description)
    return ended


# --- async twins ----------------------------------------------------------------------


class _Fetched:
    """The records of a user's index, read ahead by the async store, shaped as the sync
    store answers them (``_indexed_sessions`` then decodes them: no I/O there)."""

    def __init__(self, rows: list[tuple[str, bytes | None]]) -> None:
        self._rows = rows

    def user_records(self, user: str) -> list[tuple[str, bytes | None]]:
        return self._rows


def _async_index(store_class: Any) -> Any | None:
    """The asyncio byte store behind the cache engine (Redis), or ``None`` when
    the sync helper has to run in a thread: another engine, a subclass that revokes
    otherwise, or a cache with no native asyncio client. ``NotImplementedError`` where
    the cache keeps no per-user index, as the sync helpers."""
    from .backends.base import HardenedSessionBase
    from .backends.cache import SessionStore as CacheStore
    from .stores import async_store_for_cache

    caps = capabilities_of(store_class)
    if Capability.CACHE not in caps or Capability.ROWS in caps:
        return None
    if (
        store_class.revoke is not HardenedSessionBase.revoke
        or store_class._remove is not CacheStore._remove
    ):
        return None
    _indexed_store(store_class)
    store = async_store_for_cache(settings.SESSION_CACHE_ALIAS)
    # Only the asyncio Redis store reads the index natively; LocMemCache's inline
    # store has the sync index only.
    return store if hasattr(store, "user_records") else None


async def _aindexed_sessions(store: Any, pk: str) -> tuple[list[Any], list[str]]:
    rows = [(store_key, raw) async for store_key, raw in store.user_records(pk)]
    return _indexed_sessions(_Fetched(rows), pk)


async def _asend_revoked(
    store_class: Any, store_keys: list[str], pk: str, reason: Reason, description: str
) -> None:
    """``session_revoked`` for each ended session, sent as the sync helper sends it: in
    a thread (receivers are sync code, they may use the database), and only when
    someone listens or metrics count it."""
    from .conf import get_config

    if not store_keys:
        return
    if not (get_config().metrics or session_revoked.has_listeners(store_class)):
        return

    def send() -> None:
        for store_key in store_keys:
            emit(
                session_revoked,
                store_class,
                key_hash_prefix=hash_prefix(store_key),
                user_id=pk,
                reason=reason,
                description=description,
            )

    await sync_to_async(send)()


async def auser_sessions(user: Any) -> list[Any]:
    """:func:`user_sessions` for async code. On the cache engine over Redis it reads the
    index and the records through ``redis.asyncio`` in the event loop; elsewhere it
    runs :func:`user_sessions` in a thread."""
    store_class = _store_class()
    store = _async_index(store_class)
    if store is None:
        return await sync_to_async(user_sessions)(user)
    pk = _user_pk(user)
    live, ended = await _aindexed_sessions(store, pk)
    if ended:
        await store.forget_members(pk, ended)
    return sorted(live, key=lambda s: s.last_activity, reverse=True)


async def arevoke_user_sessions(
    user: Any,
    *,
    keep: str | None = None,
    reason: str = Reason.REVOKED,
    description: str | None = None,
) -> int:
    """:func:`revoke_user_sessions` for async code: the same arguments, the same count,
    the same ``session_revoked`` signals. On the cache engine over Redis the index,
    the records and the deletes go through ``redis.asyncio`` in the event loop;
    elsewhere it runs :func:`revoke_user_sessions` in a thread."""
    store_class = _store_class()
    store = _async_index(store_class)
    if store is None:
        return await sync_to_async(revoke_user_sessions)(
            user, keep=keep, reason=reason, description=description
        )
    reason, description = reason_and_description(reason, description)
    pk = _user_pk(user)
    keep_hash = keys.store_key(keep) if keys.is_well_formed(keep) and keep else None
    live, ended_meanwhile = await _aindexed_sessions(store, pk)
    targets = [session.key_hash for session in live if session.key_hash != keep_hash]
    deleted = await store.delete_many(targets) if targets else []
    ended = [store_key for store_key, was in zip(targets, deleted, strict=True) if was]
    await _asend_revoked(store_class, ended, pk, reason, description)
    if ended_meanwhile or targets:
        await store.forget_members(pk, [*ended_meanwhile, *targets])
    if ended:
        logger.info("Ended %d session(s) of user %s (%s).", len(ended), pk, description)
    return len(ended)


def password_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of the user model: a new password ends the user's other sessions.

    ``AbstractBaseUser.set_password()`` leaves the raw password in ``_password`` until
    the save completes, which is how a password change is told from any other save.
    The session of the request being handled (a password change view) survives; a
    password reset or ``manage.py changepassword`` ends them all.
    """
    from .conf import get_config
    from .middleware import current_session

    if getattr(instance, "_password", None) is None or instance.pk is None:
        return
    if not get_config().revoke_on_password_change:
        return
    session = current_session.get()
    keep = getattr(session, "session_key", None)
    try:
        revoke_user_sessions(instance, keep=keep, reason=Reason.PASSWORD_CHANGE)
    except NotImplementedError:
        # No per-user index here: Django's session hash still ends them lazily.
        logger.debug("No per-user index; other sessions end at their next request.")
