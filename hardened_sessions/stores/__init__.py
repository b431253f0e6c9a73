"""Raw byte stores for the cache engines: bytes in, bytes out, nothing unpickled.

Each store is one small class with the same four verbs, built from a Django
cache's own configuration (its servers, options, ``KEY_PREFIX``, ``VERSION``
and ``KEY_FUNCTION``), but talking to the server without the cache's
serializer, so a pickle planted at a session's key is never unpickled:

``get(key) -> (bytes, handle) | None``
    the stored bytes and the store's own compare-and-set handle of them (memcached's
    cas unique), or ``None`` as the handle where the record's version is all the store
    needs; the engine builds the :class:`~.token.Token` once the record verifies;
``add(key, value, ttl, version) -> Token | None``
    store only if absent (``SET NX`` / memcached ``add``); ``Token(version)``, or
    ``None`` when taken;
``cas(key, value, ttl, token, version, *, head) -> Token | None``
    replace only if the stored record is still the one ``token`` names: its handle
    where it has one (memcached ``cas``), else a record that starts with ``head``,
    the bytes the engine computed for ``token.version`` (a Redis script compares
    them); ``Token(version)``, or ``None`` when it changed or is gone, so a late
    save can never recreate a deleted session;
``delete(key) -> bool``
    whether *this call* deleted something (a Redis client that re-sent the delete after
    a lost reply still answers ``True``: see :mod:`.redis`).

A ``user`` argument to the writes names the session's user; stores whose ``capabilities``
have ``USER_INDEX`` (Redis without Cluster, LocMemCache) also keep the per-user index
(:class:`UserIndex`): ``user_records(user)`` reads it with the records in a few round
trips, ``forget_members(user, keys)`` prunes it, ``delete_many(keys)`` deletes in one.

Stores never parse the records they hold (no module here imports
:mod:`hardened_sessions.record`): what a write must compare comes from the engine.

Every verb raises :class:`~hardened_sessions.exceptions.SessionStoreUnavailable`
when the server cannot answer. ``ttl`` is in seconds, at least 1.

:func:`store_for_cache` picks the class from :data:`STORE_CLASSES`, a table of the
cache backends' dotted paths (a subclass of a listed backend counts as it) and the
dotted paths of their store classes, each built by ``from_cache(cache, alias)``: a new
store is one entry. Caches it cannot serve safely (file, database, dummy, ...) raise
:class:`UnsupportedCache`, which the system check reports at start-up.
Each store class also answers ``capabilities_for(cache)``
(:class:`~hardened_sessions.capabilities.Capability`), from the cache's configuration
alone, without connecting; :func:`cache_capabilities` asks it for a cache alias.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol

from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ..capabilities import Capability
from .token import Handle, Token

__all__ = [
    "STORE_CLASSES",
    "SUPPORTED_BACKENDS",
    "AsyncByteStore",
    "ByteStore",
    "UnsupportedCache",
    "UserIndex",
    "async_store_for_cache",
    "cache_capabilities",
    "kind_of",
    "store_class_for",
    "store_for_cache",
]

# The key under which a session is stored, before the cache's own KEY_PREFIX/VERSION.
KEY_NAMESPACE = "hardened_sessions:"


class UnsupportedCache(Exception):
    """The session cache's backend cannot be served without its (pickling) serializer."""


class ByteStore(Protocol):
    #: ``USER_INDEX`` when ``user`` arguments maintain a per-user index
    #: (:class:`UserIndex`); ``USER_CAP`` when a write takes ``cap`` and enforces it.
    capabilities: Capability

    def get(self, key: str) -> tuple[bytes, Handle] | None: ...

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Token | None: ...

    def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Token,
        version: int,
        user: str | None = None,
        *,
        head: bytes,
    ) -> Token | None: ...

    def delete(self, key: str) -> bool: ...


class AsyncByteStore(Protocol):
    """:class:`ByteStore`'s verbs as coroutines, for the engine's async methods: Redis
    through its asyncio client (:mod:`.redis_async`), memcached and LocMemCache
    through the sync store (:mod:`.threaded`); ``cap`` is the per-user cap of a login's
    write (``hardened_sessions.cap``) on stores that enforce it."""

    async def get(self, key: str) -> tuple[bytes, Handle] | None: ...

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: Any = None,
    ) -> Token | None: ...

    async def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Token,
        version: int,
        user: str | None = None,
        *,
        head: bytes,
        cap: Any = None,
    ) -> Token | None: ...

    async def delete(self, key: str) -> bool: ...


class UserIndex(Protocol):
    """What a store with ``Capability.USER_INDEX`` offers the per-user helpers."""

    def user_members(self, user: str) -> list[str]: ...

    def user_records(self, user: str) -> Iterable[tuple[str, bytes | None]]:
        """``(store key, stored bytes or None)`` of each index member (some may have
        ended: the caller checks each record)."""
        ...

    def forget_members(self, user: str, keys: Any) -> None: ...

    def delete_many(self, keys: Any) -> list[bool]:
        """``delete`` of each key, batched; whether each one was deleted by this call."""
        ...


_REDIS = "hardened_sessions.stores.redis.RedisByteStore"

#: Cache backend (dotted path) -> its byte store class (dotted path, imported on use),
#: which has ``from_cache(cache, alias)`` and ``capabilities_for(cache)``.
STORE_CLASSES: dict[str, str] = {
    "django_redis.cache.RedisCache": _REDIS,
    "django.core.cache.backends.redis.RedisCache": _REDIS,
    "hardened_sessions.redis_cluster.RedisClusterCache": _REDIS,
    "django.core.cache.backends.memcached.PyMemcacheCache": (
        "hardened_sessions.stores.memcached.MemcachedByteStore"
    ),
    "django.core.cache.backends.locmem.LocMemCache": (
        "hardened_sessions.stores.locmem.LocMemByteStore"
    ),
}

#: Cache backend -> the kind of server (``redis``, ``memcached``, ``locmem``): the name
#: of its store's module.
SUPPORTED_BACKENDS = {backend: store.rsplit(".", 2)[-2] for backend, store in STORE_CLASSES.items()}


def backend_path(cache: Any) -> str:
    cls = type(cache)
    return f"{cls.__module__}.{cls.__qualname__}"


def _store_path(cache: Any) -> str:
    """The dotted path of ``cache``'s store class (its backend's, or the nearest listed
    base class's); ``UnsupportedCache`` for a backend not in :data:`STORE_CLASSES`."""
    for cls in type(cache).__mro__:
        path = STORE_CLASSES.get(f"{cls.__module__}.{cls.__qualname__}")
        if path:
            return path
    raise UnsupportedCache(
        f"The session cache backend {backend_path(cache)} is not supported: hardened_sessions "
        "talks to Redis (django-redis or Django's RedisCache), memcached (PyMemcacheCache) "
        "or LocMemCache directly, so that nothing it reads is ever unpickled."
    )


def kind_of(cache: Any) -> str:
    """``redis``, ``memcached`` or ``locmem``; ``UnsupportedCache`` for anything else."""
    return _store_path(cache).rsplit(".", 2)[-2]


def store_class_for(cache: Any) -> Any:
    """The byte store class serving ``cache`` (from :data:`STORE_CLASSES`)."""
    return import_string(_store_path(cache))


def cache_capabilities(alias: str) -> Capability:
    """What the store of cache ``alias`` can do, from its configuration (no connection);
    ``UnsupportedCache`` (or the cache's own error) when it cannot be served."""
    cache = caches[alias]
    return store_class_for(cache).capabilities_for(cache)  # type: ignore[no-any-return]


_lock = threading.Lock()
_stores: dict[str, ByteStore] = {}


def store_for_cache(alias: str) -> ByteStore:
    """The byte store for cache ``alias`` (built once per alias and process)."""
    store = _stores.get(alias)
    if store is not None:
        return store
    cache = caches[alias]
    store = store_class_for(cache).from_cache(cache, alias)
    with _lock:
        return _stores.setdefault(alias, store)


_async_stores: dict[str, AsyncByteStore | None] = {}


def async_store_for_cache(alias: str) -> AsyncByteStore | None:
    """The async store for cache ``alias``, through which the engine's async methods
    run their policy on the event loop: Redis through ``redis.asyncio``
    (:class:`~hardened_sessions.stores.redis_async.AsyncRedisByteStore`; ``None`` where
    that client cannot mirror the sync one, and the async methods then run the sync
    ones in a thread), memcached in a bounded thread pool of its own and LocMemCache
    inline (:mod:`.threaded`). redis-py is imported only for a Redis cache."""
    try:
        return _async_stores[alias]
    except KeyError:
        pass
    store: AsyncByteStore | None
    kind = kind_of(caches[alias])
    if kind == "redis":
        from .redis_async import async_store_for

        store = async_store_for(alias)
    else:
        from . import threaded

        sync_store: Any = store_for_cache(alias)
        if kind == "memcached":
            from .memcached import POOL_WAIT

            store = threaded.ExecutorAsyncStore(
                sync_store,
                sync_store.max_pool_size or threaded.DEFAULT_THREADS,
                name="memcached",
                route=sync_store.home_of,  # one pool per server
                max_wait=POOL_WAIT,
            )
        else:
            store = threaded.InlineAsyncStore(sync_store)
    with _lock:
        return _async_stores.setdefault(alias, store)


def reset_stores() -> None:
    with _lock:
        retired = list(_async_stores.values())
        _stores.clear()
        _async_stores.clear()
    from .threaded import ExecutorAsyncStore

    for store in retired:  # a memcached pool's threads end once idle
        if isinstance(store, ExecutorAsyncStore):
            store.close(wait=False)


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "SESSION_CACHE_ALIAS"):
        reset_stores()
