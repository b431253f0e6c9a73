"""Write-through cache over the DB engine: ``hardened_sessions.backends.cached_db``.

The database is the truth; the cache (``SESSION_CACHE_ALIAS``, served as in
:mod:`hardened_sessions.backends.cache`) holds copies of the same signed
records, and every copy is checked like the original on load.

* load: the cache first; on a miss, the database, and the record it returns
  is added to the cache in two steps. First a *fill marker* is added (``add``:
  never over a newer copy), a placeholder that no load ever serves (a load that
  finds one reads the database) and that expires within seconds; then the row's
  version is read again, and only if the row is still the version that was loaded
  does a compare-and-set replace the fill's own marker with the copy. A save or
  delete that ran meanwhile removed the marker (or changed the row), so the copy
  never lands; and a fill that cannot finish (the re-check or the cache fails, a
  logout got in between) leaves only its marker, which never loads a session. (A
  copy added first and deleted when the re-check disagreed stayed, and kept loading
  a logged-out session, whenever that delete failed.)
* save: the cached copy is deleted and a fill marker of the save's own added (if
  the cache can't, the save fails before anything changed), then the
  version-checked ``UPDATE``, then the new record replaces that marker (compare-and-
  set): a logout or revoke that deleted the row after the ``UPDATE`` committed
  deleted the marker too, so no copy of the ended session lands; what a concurrent
  load put there meanwhile (its fill marker or copy) is dropped, so that load's copy
  never lands;
* delete: cache delete (abort with ``SessionStoreUnavailable`` if it fails),
  then the row, then the cache again: never a success while a cached copy
  still loads. (Stock Django deletes the row first and ignores a failing cache
  delete, so a logged-out session keeps loading from the cache.) The second
  delete removes a copy put there between the two (by a concurrent save, or a
  fill that re-checked the row just before it was deleted); if that delete fails
  the logout answers 503, and such a copy is gone only once a retried logout
  reaches the cache (docs/engines.rst, cached_db).
* inside a caller's transaction: a save's or a fill's copy is written when it commits
  (never after a rollback), and a delete removes the copy once more after the commit,
  since other requests read the uncommitted delete's row until then.

The fill marker relies on what every byte store's compare-and-set does: replace a
value only while it is still the one the token's handle names, or, without a handle,
while it still starts with the head the engine hands it (``record.version_head`` of
the token's version; ``test_a_fill_lands_its_copy_only_over_its_own_marker`` checks
it on each store).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from django.conf import settings
from django.db import connections, transaction

from ..capabilities import Capability
from ..exceptions import SessionStoreUnavailable
from ..record import Record, peek_version, version_head
from ..stores import ByteStore, store_for_cache
from .cache import ttl_for
from .core import Handle, Token, hash_prefix, logger
from .db import SessionStore as DBStore

__all__ = ["SessionStore"]

# Seconds a fill marker lives if its fill never finishes: long enough for the fill's
# re-check (one database round trip), short because loads read the database meanwhile.
FILL_MARKER_TTL = 5
# A fill marker looks like a record's head to the stores' compare-and-set (which
# compares the version a record starts with), with a random version from here up:
# records count from 1, one a save, and never get near it.
_MARKER_VERSIONS = 1 << 62


def fill_marker() -> tuple[int, bytes]:
    """A new fill marker: its version (the compare-and-set token naming this one
    marker) and its bytes, which end with a nonce (stores that recognise their own
    write after a lost reply compare the tail)."""
    version = _MARKER_VERSIONS | secrets.randbits(62)
    return version, version_head(version) + b'"fill":"' + secrets.token_hex(32).encode() + b'"}'


def is_fill_marker(raw: bytes) -> bool:
    version = peek_version(raw)
    return version is not None and version >= _MARKER_VERSIONS


class SessionStore(DBStore):
    @classmethod
    def capabilities(cls) -> Capability:
        """The db engine's, with copies of the records in the cache."""
        return super().capabilities() | Capability.CACHE

    def __init__(self, session_key: str | None = None) -> None:
        self._cache: ByteStore = store_for_cache(settings.SESSION_CACHE_ALIAS)
        super().__init__(session_key)

    def _read(self, store_key: str) -> tuple[bytes, Handle] | None:
        cached = self._cache.get(store_key)
        if cached is not None and not is_fill_marker(cached[0]):
            # No handle: a save compares the record's version with the row's, and a
            # load tells a copy (nothing to fill) from a row (its version column) by it.
            return cached[0], None
        return super()._read(store_key)

    def _loaded(self, store_key: str, raw: bytes, rec: Record, token: Token) -> None:
        if token.cas is None:
            return  # read from the cache
        self._after_commit(lambda: self._fill(store_key, raw, rec))

    def _after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` now, or when a caller's transaction on the session database
        commits (never, if it rolls back). Inside it, the row may hold this
        transaction's own uncommitted write, or be deleted but not yet committed: a
        copy written now could outlive a rollback, or be re-filled by a concurrent load
        from the committed row until the delete commits."""
        alias = self._db_write()
        if connections[alias].in_atomic_block:
            transaction.on_commit(action, using=alias)
        else:
            action()

    def _fill(self, store_key: str, raw: bytes, rec: Record) -> None:
        marker_version, marker = fill_marker()
        try:
            held = self._cache.add(store_key, memoryview(marker), FILL_MARKER_TTL, marker_version)
            if held is None:
                return  # a copy, or another fill's marker, is there
            if self._primary_version(store_key) != rec.version:
                # A save or delete ran since our read: no copy. The marker never loads
                # and expires; removing it now only spares loads a database read.
                self._cache.delete(store_key)
                return
            # Only over our own marker: a save or delete since the add removed it.
            self._cache.cas(
                store_key,
                memoryview(raw),
                ttl_for(rec),
                held,
                rec.version,
                head=version_head(held.version),
            )
        except SessionStoreUnavailable:
            # The database answered the load; the copy is only an optimisation, and
            # what a failed fill leaves (its marker) never loads a session.
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
        # fails; a copy of the old version can never outlive this save. A fill marker
        # of this save's own takes its place until the new copy replaces it, so that a
        # logout or revoke deleting the row after the UPDATE commits (which deletes the
        # marker too) leaves no copy: the copy lands only over the marker.
        self._cache.delete(store_key)
        marker_version, marker = fill_marker()
        held = self._cache.add(store_key, memoryview(marker), FILL_MARKER_TTL, marker_version)
        new_token = super()._write_update(store_key, data, rec, token)
        if new_token is not None:
            # In a caller's transaction, once it commits (``data`` is the engine's
            # buffer, reused after this returns: the callback keeps a copy).
            value = data
            if connections[self._db_write()].in_atomic_block:
                value = memoryview(bytes(data))

            def place() -> None:
                if held is not None and self._land(store_key, value, rec, held):
                    return
                # Our marker is gone (a logout, revoke or other save deleted it; it
                # expired in a long transaction) or was never added, or the cache
                # failed: whatever is there now (a concurrent load's marker or copy,
                # maybe of an older version) is dropped, so that no older copy
                # stays. A failure here fails the save (503).
                self._cache.delete(store_key)

            self._after_commit(place)
        return new_token

    def _land(self, store_key: str, value: memoryview, rec: Record, held: Token) -> bool:
        """The save's copy over its own marker; False when the marker is gone or the
        cache failed: the caller then deletes what is there (the marker may have given
        way to an older copy before the commit, a marker never outlives 5 s)."""
        try:
            landed = self._cache.cas(
                store_key, value, ttl_for(rec), held, rec.version, head=version_head(held.version)
            )
        except SessionStoreUnavailable:
            logger.info("Could not cache session %s….", hash_prefix(store_key))
            return False
        return landed is not None

    def _remove(self, store_key: str) -> bool:
        self._cache.delete(store_key)  # raises SessionStoreUnavailable: nothing changed yet
        existed = super()._remove(store_key)
        self._cache.delete(store_key)  # a copy a concurrent load put back meanwhile
        if connections[self._db_write()].in_atomic_block:
            # Until a caller's transaction commits, other loads still read the row and
            # may copy it back: delete again once the delete is committed. A failure
            # there raises SessionStoreUnavailable out of the commit (503).
            transaction.on_commit(lambda: self._cache.delete(store_key), using=self._db_write())
        return existed
