"""Session engine on a cache: ``SESSION_ENGINE = "hardened_sessions.backends.cache"``.

The cache named by ``SESSION_CACHE_ALIAS`` must be Redis (django-redis,
Django's ``RedisCache`` or :class:`hardened_sessions.cache.RedisClusterCache`),
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

from .. import timeutil
from ..cap import UserCap, cap_for
from ..cap import refuse as refuse_login
from ..cap import report as report_cap
from ..exceptions import SessionLimitReached
from ..record import Record
from ..stores import ByteStore, store_for_cache
from .base import HardenedSessionBase, Token

__all__ = ["SessionStore"]


def ttl_for(rec: Record) -> int:
    """Seconds until the record's earliest deadline (at least 1)."""
    return timeutil.ttl_for(rec.deadline)


class SessionStore(HardenedSessionBase):
    def __init__(self, session_key: str | None = None) -> None:
        self._store: ByteStore = store_for_cache(settings.SESSION_CACHE_ALIAS)
        super().__init__(session_key)

    def _read(self, store_key: str) -> tuple[bytes, Token] | None:
        return self._store.get(store_key)

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        cap = self._cap(rec, None)
        if cap is None:
            return self._store.add(store_key, data, ttl_for(rec), rec.version, rec.user_id)
        store: Any = self._store  # a store with supports_user_cap takes ``cap``
        try:
            token = store.add(store_key, data, ttl_for(rec), rec.version, rec.user_id, cap=cap)
        except SessionLimitReached:
            raise refuse_login(type(self), store_key, cap) from None
        report_cap(type(self), cap, cap.ended)
        return token

    def _write_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        cap = self._cap(rec, self._record.user_id if self._record is not None else None)
        if cap is None:
            return self._store.cas(store_key, data, ttl_for(rec), token, rec.version, rec.user_id)
        store: Any = self._store
        try:
            new_token = store.cas(
                store_key, data, ttl_for(rec), token, rec.version, rec.user_id, cap=cap
            )
        except SessionLimitReached:
            raise refuse_login(type(self), store_key, cap) from None
        report_cap(type(self), cap, cap.ended)
        return new_token

    def _cap(self, rec: Record, previous: str | None) -> UserCap | None:
        """MAX_SESSIONS_PER_USER for a write of ``rec``, where the store enforces it in
        the write itself (Redis without Cluster, LocMemCache: hardened_sessions.cap);
        memcached and Redis Cluster cannot (``hardened_sessions.W402``)."""
        if not getattr(self._store, "supports_user_cap", False):
            return None
        return cap_for(self.config, rec.user_id, previous)

    def _remove(self, store_key: str) -> bool:
        return self._store.delete(store_key)

    @classmethod
    def clear_expired(cls) -> Any:
        """Nothing to do: the cache expires entries itself (at the records' deadlines)."""
        return None
