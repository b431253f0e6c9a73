"""Session engine on a cache: ``SESSION_ENGINE = "hardened_sessions.backends.cache"``.

The cache named by ``SESSION_CACHE_ALIAS`` must be Redis (django-redis,
Django's ``RedisCache`` or :class:`hardened_sessions.redis_cluster.RedisClusterCache`),
memcached (``PyMemcacheCache``) or ``LocMemCache``; the engine talks to it through
a raw byte store (:mod:`hardened_sessions.stores`), never through the cache's
pickling serializer.

One round trip per operation: a load is one GET, a create one ``SET NX`` /
``add``, a save one compare-and-set (a Redis script / memcached ``cas``), a
delete one DEL. Entries expire with the record's earliest deadline; the record's
own deadlines are checked again on every load.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .. import record, timeutil
from ..cap import UserCap, cap_for
from ..cap import refuse as refuse_login
from ..cap import report as report_cap
from ..capabilities import Capability
from ..exceptions import SessionLimitReached
from ..record import Record
from ..stores import (
    AsyncByteStore,
    ByteStore,
    async_store_for_cache,
    cache_capabilities,
    store_for_cache,
)
from .base import HardenedSessionBase, Token
from .core import Handle

__all__ = ["SessionStore"]


def ttl_for(rec: Record) -> int:
    """Seconds until the record's earliest deadline (at least 1)."""
    return timeutil.ttl_for(rec.deadline)


def _cap_kwargs(cap: UserCap | None) -> dict[str, Any]:
    return {} if cap is None else {"cap": cap}


_PRIMITIVES = ("_read", "_write_new", "_write_update", "_remove", "_read_for_update")
_intact: dict[type, bool] = {}


def _twins_intact(cls: type) -> bool:
    """False when ``cls`` overrides a sync primitive of the cache engine but not its
    async twin (``_read`` but not ``_aread``...): the async path would skip the
    override."""
    known = _intact.get(cls)
    if known is None:
        known = _intact[cls] = not any(
            getattr(cls, name) is not getattr(SessionStore, name)
            and getattr(cls, "_a" + name[1:]) is getattr(SessionStore, "_a" + name[1:])
            for name in _PRIMITIVES
        )
    return known


class SessionStore(HardenedSessionBase):
    """The cache engine. Its async methods run the policy on the event loop: on Redis
    through ``redis.asyncio`` (:mod:`hardened_sessions.stores.redis_async`), on
    memcached with each command in a bounded pool of threads and on LocMemCache inline
    (:mod:`hardened_sessions.stores.threaded`); docs/engines.rst, "Async"."""

    def __init__(self, session_key: str | None = None) -> None:
        alias = settings.SESSION_CACHE_ALIAS
        self._store: ByteStore = store_for_cache(alias)
        # The async store (stores/redis_async.py, stores/threaded.py), or None (Redis
        # options the asyncio client cannot mirror): then the async methods hop.
        self._astore: AsyncByteStore | None = async_store_for_cache(alias)
        super().__init__(session_key)

    @classmethod
    def capabilities(cls) -> Capability:
        """``CACHE``, and what the store of ``SESSION_CACHE_ALIAS`` can do, decided from
        the settings without connecting; ``CACHE`` alone when that cache cannot be
        served (``hardened_sessions.E010``/``E211`` report it)."""
        try:
            store = cache_capabilities(settings.SESSION_CACHE_ALIAS)
        except Exception:  # noqa: BLE001 -- reported by the cache checks
            store = Capability(0)
        return Capability.CACHE | store

    @property
    def native_async(self) -> bool:
        """Whether the async methods run the policy on the event loop: the cache has an
        async store, and no subclass changed a sync primitive without its async twin
        (those run the sync methods in a thread, overrides included)."""
        return self._astore is not None and _twins_intact(type(self))

    def _read(self, store_key: str) -> tuple[bytes, Handle] | None:
        return self._store.get(store_key)

    async def _aread(self, store_key: str) -> tuple[bytes, Handle] | None:
        assert self._astore is not None
        return await self._astore.get(store_key)

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        cap = self._cap(rec, None)
        store: Any = self._store  # a store with Capability.USER_CAP takes ``cap``
        try:
            token = store.add(
                store_key, data, ttl_for(rec), rec.version, rec.user_id, **_cap_kwargs(cap)
            )
        except SessionLimitReached:
            raise self._refused(store_key, cap) from None
        return self._capped(cap, token)

    async def _awrite_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        assert self._astore is not None
        cap = self._cap(rec, None)
        try:
            token = await self._astore.add(
                store_key, data, ttl_for(rec), rec.version, rec.user_id, **_cap_kwargs(cap)
            )
        except SessionLimitReached:
            raise self._refused(store_key, cap) from None
        return self._capped(cap, token)

    def _write_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        cap = self._cap(rec, self._record.user_id if self._record is not None else None)
        store: Any = self._store
        try:
            new_token = store.cas(
                store_key,
                data,
                ttl_for(rec),
                token,
                rec.version,
                rec.user_id,
                head=record.version_head(token.version),
                **_cap_kwargs(cap),
            )
        except SessionLimitReached:
            raise self._refused(store_key, cap) from None
        return self._capped(cap, new_token)

    async def _awrite_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        assert self._astore is not None
        cap = self._cap(rec, self._record.user_id if self._record is not None else None)
        try:
            new_token = await self._astore.cas(
                store_key,
                data,
                ttl_for(rec),
                token,
                rec.version,
                rec.user_id,
                head=record.version_head(token.version),
                **_cap_kwargs(cap),
            )
        except SessionLimitReached:
            raise self._refused(store_key, cap) from None
        return self._capped(cap, new_token)

    def _cap(self, rec: Record, previous: str | None) -> UserCap | None:
        """MAX_SESSIONS_PER_USER for a write of ``rec``, where the store enforces it in
        the write itself (Redis without Cluster, LocMemCache: hardened_sessions.cap);
        memcached and Redis Cluster cannot (``hardened_sessions.W402``)."""
        if Capability.USER_CAP not in self._store.capabilities:
            return None
        return cap_for(self.config, rec.user_id, previous)

    def _refused(self, store_key: str, cap: UserCap | None) -> SessionLimitReached:
        assert cap is not None  # only a capped write is refused
        return refuse_login(type(self), store_key, cap)

    def _capped(self, cap: UserCap | None, token: Token | None) -> Token | None:
        if cap is not None:
            report_cap(type(self), cap, cap.ended)
        return token

    def _remove(self, store_key: str) -> bool:
        return self._store.delete(store_key)

    async def _aremove(self, store_key: str) -> bool:
        assert self._astore is not None
        return await self._astore.delete(store_key)

    @classmethod
    def clear_expired(cls) -> Any:
        """Nothing to do: the cache expires entries itself (at the records' deadlines)."""
        return None
