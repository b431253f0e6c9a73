"""Write-through cache over the DB engine: ``hardened_sessions.backends.cached_db``.

The database is the truth; the cache (``SESSION_CACHE_ALIAS``, served as in
:mod:`hardened_sessions.backends.cache`) holds copies of the same signed
records, and every copy is checked like the original on load.

* load: the cache first; on a miss, the database, and the record it returns
  is added to the cache (``add``: never over a newer copy);
* save: the cached copy is deleted (if the cache can't, the save fails before
  anything changed), then the version-checked ``UPDATE``, then the new record
  is added to the cache; a copy a concurrent load put there meanwhile is dropped.
  A load that fills the cache re-reads the row's version afterwards and drops a
  copy that a concurrent save or delete made stale;
* delete: cache delete (abort with ``SessionStoreUnavailable`` if it fails),
  then the row, then the cache again: never a success while a cached copy
  still loads. (Stock Django deletes the row first and ignores a failing cache
  delete, so a logged-out session keeps loading from the cache.)
"""

from __future__ import annotations

from django.conf import settings

from ..exceptions import SessionStoreUnavailable
from ..record import Record
from ..stores import ByteStore, store_for_cache
from .base import Token, hash_prefix, logger
from .cache import ttl_for
from .db import SessionStore as DBStore

__all__ = ["SessionStore"]


class SessionStore(DBStore):
    def __init__(self, session_key: str | None = None) -> None:
        self._cache: ByteStore = store_for_cache(settings.SESSION_CACHE_ALIAS)
        self._fill_cache = False
        super().__init__(session_key)

    def _read(self, store_key: str) -> tuple[bytes, Token] | None:
        cached = self._cache.get(store_key)
        if cached is not None:
            # The database's token is the record's version, which the copy carries (the
            # engine reads it from the record once verified).
            self._fill_cache = False
            return cached[0], None
        self._fill_cache = True
        return super()._read(store_key)

    def _loaded(self, store_key: str, raw: bytes, rec: Record) -> None:
        if not self._fill_cache:
            return
        self._fill_cache = False
        try:
            if self._cache.add(store_key, memoryview(raw), ttl_for(rec), rec.version) is None:
                return
            # A save or delete may have run between our read and the add: a copy that
            # is not the row's current version must not stay.
            if self._primary_version(store_key) != rec.version:
                self._cache.delete(store_key)
        except SessionStoreUnavailable:
            # The database answered; the copy is only an optimisation.
            logger.info("Could not cache session %s….", hash_prefix(store_key))

    def _primary_version(self, store_key: str) -> int | None:
        alias = self._db_write()
        versions = self._run(
            alias,
            lambda: list(
                self.model.objects.using(alias)
                .filter(pk=store_key)
                .values_list("version", flat=True)[:1]
            ),
            "read a session's version",
        )
        return versions[0] if versions else None

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        # A stale copy under a reused key hash: none. Dropped before the INSERT, so that a
        # cache that can't answer fails the create before anything is written (no load
        # can put a copy back in between: there is no row to copy yet).
        self._cache.delete(store_key)
        return super()._write_new(store_key, data, rec)

    def _write_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        # Drop the copy first: if the cache can't, nothing has changed yet and the save
        # fails; a copy of the old version can never outlive this save.
        self._cache.delete(store_key)
        new_token = super()._write_update(store_key, data, rec, token)
        if (
            new_token is not None
            and self._cache.add(store_key, data, ttl_for(rec), rec.version) is None
        ):
            # A concurrent load filled in an older copy meanwhile: drop it.
            self._cache.delete(store_key)
        return new_token

    def _remove(self, store_key: str) -> bool:
        self._cache.delete(store_key)  # raises SessionStoreUnavailable: nothing changed yet
        existed = super()._remove(store_key)
        self._cache.delete(store_key)  # a copy a concurrent load put back meanwhile
        return existed
