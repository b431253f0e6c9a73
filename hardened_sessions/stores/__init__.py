"""Raw byte stores for the cache engines: bytes in, bytes out, nothing unpickled.

Each store is one small class with the same four verbs, built from a Django
cache's own configuration (its servers, options, ``KEY_PREFIX``, ``VERSION``
and ``KEY_FUNCTION``), but talking to the server without the cache's
serializer, so a pickle planted at a session's key is never unpickled:

``get(key) -> (bytes, token) | None``
    the stored bytes and a compare-and-set token, or ``None`` as the token when the
    record's own version is the token (the engine reads it once the record verifies);
``add(key, value, ttl, version) -> token | None``
    store only if absent (``SET NX`` / memcached ``add``); ``None`` when taken;
``cas(key, value, ttl, token, version) -> token | None``
    replace only if the stored record is still the one ``token`` names (a Redis
    script / memcached ``cas``); ``None`` when it changed or is gone, so a late
    save can never recreate a deleted session;
``delete(key) -> bool``
    whether *this call* deleted something (a Redis client that re-sent the delete after
    a lost reply still answers ``True``: see :mod:`.redis`).

A ``user`` argument to the writes names the session's user; stores with
``supports_user_index`` (Redis without Cluster, LocMemCache) also keep the per-user index
(:class:`UserIndex`): ``user_records(user)`` reads it with the records in a few round
trips, ``forget_members(user, keys)`` prunes it, ``delete_many(keys)`` deletes in one.

Every verb raises :class:`~hardened_sessions.exceptions.SessionStoreUnavailable`
when the server cannot answer. ``ttl`` is in seconds, at least 1.

:func:`store_for_cache` picks the class from the cache's ``BACKEND``; caches it
cannot serve safely (file, database, dummy, ...) raise
:class:`UnsupportedCache`, which the system check reports at start-up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol

from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = [
    "SUPPORTED_BACKENDS",
    "AsyncByteStore",
    "ByteStore",
    "UnsupportedCache",
    "UserIndex",
    "async_store_for_cache",
    "kind_of",
    "store_for_cache",
]

# The key under which a session is stored, before the cache's own KEY_PREFIX/VERSION.
KEY_NAMESPACE = "hardened_sessions:"


class UnsupportedCache(Exception):
    """The session cache's backend cannot be served without its (pickling) serializer."""


class ByteStore(Protocol):
    #: Whether ``user`` arguments maintain a per-user index (``user_members``).
    supports_user_index: bool

    def get(self, key: str) -> tuple[bytes, Any] | None: ...

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Any | None: ...

    def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Any,
        version: int,
        user: str | None = None,
    ) -> Any | None: ...

    def delete(self, key: str) -> bool: ...


class AsyncByteStore(Protocol):
    """:class:`ByteStore`'s verbs as coroutines, for a store with a native asyncio
    client (:mod:`.redis_async`); ``cap`` is the per-user cap of a login's write
    (``hardened_sessions.cap``) on stores that enforce it."""

    async def get(self, key: str) -> tuple[bytes, Any] | None: ...

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: Any = None,
    ) -> Any | None: ...

    async def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Any,
        version: int,
        user: str | None = None,
        *,
        cap: Any = None,
    ) -> Any | None: ...

    async def delete(self, key: str) -> bool: ...


class UserIndex(Protocol):
    """What a store with ``supports_user_index`` offers the per-user helpers."""

    def user_members(self, user: str) -> list[str]: ...

    def user_records(self, user: str) -> Iterable[tuple[str, bytes | None]]:
        """``(store key, stored bytes or None)`` of each index member (some may have
        ended: the caller checks each record)."""
        ...

    def forget_members(self, user: str, keys: Any) -> None: ...

    def delete_many(self, keys: Any) -> list[bool]:
        """``delete`` of each key, batched; whether each one was deleted by this call."""
        ...


SUPPORTED_BACKENDS = {
    "django_redis.cache.RedisCache": "redis",
    "django.core.cache.backends.redis.RedisCache": "redis",
    "hardened_sessions.redis_cluster.RedisClusterCache": "redis",
    "django.core.cache.backends.memcached.PyMemcacheCache": "memcached",
    "django.core.cache.backends.locmem.LocMemCache": "locmem",
}


def backend_path(cache: Any) -> str:
    cls = type(cache)
    return f"{cls.__module__}.{cls.__qualname__}"


def kind_of(cache: Any) -> str:
    """``redis``, ``memcached`` or ``locmem``; ``UnsupportedCache`` for anything else."""
    for cls in type(cache).__mro__:
        kind = SUPPORTED_BACKENDS.get(f"{cls.__module__}.{cls.__qualname__}")
        if kind:
            return kind
    raise UnsupportedCache(
        f"The session cache backend {backend_path(cache)} is not supported: hardened_sessions "
        "talks to Redis (django-redis or Django's RedisCache), memcached (PyMemcacheCache) "
        "or LocMemCache directly, so that nothing it reads is ever unpickled."
    )


_lock = threading.Lock()
_stores: dict[str, ByteStore] = {}


def store_for_cache(alias: str) -> ByteStore:
    """The byte store for cache ``alias`` (built once per alias and process)."""
    store = _stores.get(alias)
    if store is not None:
        return store
    cache = caches[alias]
    kind = kind_of(cache)
    if kind == "redis":
        from .redis import RedisByteStore

        store = RedisByteStore.from_cache(cache, alias)
    elif kind == "memcached":
        from .memcached import MemcachedByteStore

        store = MemcachedByteStore.from_cache(cache)
    else:
        from .locmem import LocMemByteStore

        store = LocMemByteStore.from_cache(cache, alias)
    with _lock:
        return _stores.setdefault(alias, store)


_async_stores: dict[str, AsyncByteStore | None] = {}


def async_store_for_cache(alias: str) -> AsyncByteStore | None:
    """The native asyncio store for cache ``alias``
    (:class:`~hardened_sessions.stores.redis_async.AsyncRedisByteStore`), or ``None``
    when its server has no native asyncio client here: the engine's async methods
    then run the sync store in a thread. redis-py is imported only for a Redis cache."""
    try:
        return _async_stores[alias]
    except KeyError:
        pass
    store: AsyncByteStore | None = None
    if kind_of(caches[alias]) == "redis":
        from .redis_async import async_store_for

        store = async_store_for(alias)
    with _lock:
        return _async_stores.setdefault(alias, store)


def reset_stores() -> None:
    with _lock:
        _stores.clear()
        _async_stores.clear()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "SESSION_CACHE_ALIAS"):
        reset_stores()
