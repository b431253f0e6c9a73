"""Byte store for a ``LocMemCache`` session cache, for the test suites of sites using
the engine (and ``runserver``).

``LocMemCache`` pickles every value in its public ``get``/``set`` and offers no
compare-and-set, so the records do not live in the cache at all: they live in a
process-local byte store of this package, one per cache alias and ``LOCATION``
(:class:`_Records`), with the same four verbs as the other stores and an exact
per-user index. Two aliases naming one ``LOCATION`` share ``LocMemCache``'s entries
but not session records; they rarely both serve sessions, and keeping them apart
lets each honour its own ``MAX_ENTRIES``.

Size: ``OPTIONS["MAX_ENTRIES"]`` (default 300) bounds the number of sessions. A new
session that finds the store full drops the expired records; when none had expired, it
drops the ``len // CULL_FREQUENCY`` least recently used live sessions instead
(``CULL_FREQUENCY`` 0: all of them), as ``LocMemCache`` culls: those users are logged
out, and a warning on the ``hardened_sessions`` logger says how many.

``cache.clear()``: users' test suites clear the cache between tests and expect the
sessions to go with it, as they do with Django's own cache engine. The store keeps
a marker entry in the cache (written through the public API; its value is never
read back, so nothing is unpickled), and before every operation asks the cache
whether the marker is still there (``has_key``, which unpickles nothing). When it is
gone (``cache.clear()``, or ``LocMemCache`` culled it), every session record of the
store is dropped first. Each operation also rewrites the marker, which makes it the
cache's most recently used entry, so the cache culls it no sooner than it culled a
session written the old way (in the cache itself). A ``clear()`` from another thread
that falls between the check and the rewrite goes unnoticed by the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from ..cap import UserCap, peek_created
from ..capabilities import Capability
from ..exceptions import SessionLimitReached
from . import KEY_NAMESPACE
from .token import Handle, Token

__all__ = ["LocMemByteStore"]

logger = logging.getLogger("hardened_sessions")

# The cache entry whose absence tells that the cache was cleared (see the docstring).
MARKER = KEY_NAMESPACE + "locmem-records"

# BaseCache's defaults for OPTIONS["MAX_ENTRIES"] and OPTIONS["CULL_FREQUENCY"].
_MAX_ENTRIES = 300
_CULL_FREQUENCY = 3


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires: float  # time.time() at which the entry is gone
    key: str  # the store key (before the cache's KEY_PREFIX / VERSION)
    user: str | None


class _Records:
    """The records of one alias and ``LOCATION``: full cache key -> entry, least
    recently used first, and user -> store keys of that user's sessions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.users: dict[str, set[str]] = {}

    # Every method below: caller holds ``lock``.

    def live(self, k: str, now: float) -> _Entry | None:
        entry = self.entries.get(k)
        if entry is None:
            return None
        if entry.expires <= now:
            self.drop(k)
            return None
        self.entries.move_to_end(k)
        return entry

    def drop(self, k: str) -> _Entry | None:
        entry = self.entries.pop(k, None)
        if entry is not None and entry.user is not None:
            self.unindex(entry.user, entry.key)
        return entry

    def unindex(self, user: str, key: str) -> None:
        members = self.users.get(user)
        if members is not None:
            members.discard(key)
            if not members:
                del self.users[user]

    def put(self, k: str, entry: _Entry) -> None:
        old = self.entries.pop(k, None)
        if old is not None and old.user is not None and old.user != entry.user:
            self.unindex(old.user, old.key)
        self.entries[k] = entry
        if entry.user is not None:
            self.users.setdefault(entry.user, set()).add(entry.key)

    def make_room(self, max_entries: int, cull_frequency: int, now: float) -> None:
        """Before a new entry: at the bound, drop the expired entries; if none was,
        the ``len // cull_frequency`` least recently used ones (as ``LocMemCache``
        culls; ``cull_frequency`` 0: all)."""
        size = len(self.entries)
        if size < max_entries:
            return
        for k in [k for k, entry in self.entries.items() if entry.expires <= now]:
            self.drop(k)
        if len(self.entries) < size:
            return
        evict = size if cull_frequency <= 0 else max(1, size // cull_frequency)
        for k in list(self.entries)[:evict]:
            self.drop(k)
        logger.warning(
            "The LocMemCache session store is full (MAX_ENTRIES=%d): %d least recently "
            "used session(s) ended.",
            max_entries,
            evict,
        )

    def clear(self) -> None:
        self.entries.clear()
        self.users.clear()


_registry_lock = threading.Lock()
# (alias, LOCATION) -> records; for the process's life, as LocMemCache's own entries.
_registry: dict[tuple[str, str], _Records] = {}


def _records(alias: str, location: str) -> _Records:
    with _registry_lock:
        return _registry.setdefault((alias, location), _Records())


def _renew_locks_in_child() -> None:
    # A forked child (Django's parallel test runner forks its workers) keeps the
    # records, but a lock another thread of the parent held would never be released.
    global _registry_lock
    _registry_lock = threading.Lock()
    for records in _registry.values():
        records.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks_in_child)


def _int_option(params: dict[str, Any], name: str, default: int) -> int:
    # Read as BaseCache reads it (a lower-case top-level key wins over OPTIONS).
    options = params.get("OPTIONS") or {}
    value = params.get(name.lower(), options.get(name, default))
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class LocMemByteStore:
    # One lock covers a session and its user's index: the index is exact, and
    # MAX_SESSIONS_PER_USER is enforced under it (add / cas with ``cap``).
    capabilities = Capability.USER_INDEX | Capability.USER_CAP

    def __init__(
        self,
        cache: Any,
        records: _Records,
        *,
        max_entries: int = _MAX_ENTRIES,
        cull_frequency: int = _CULL_FREQUENCY,
    ) -> None:
        self.cache = cache
        self.max_entries = max(1, max_entries)
        self.cull_frequency = cull_frequency
        self._records = records

    @classmethod
    def capabilities_for(cls, cache: Any) -> Capability:
        return cls.capabilities

    @classmethod
    def from_cache(cls, cache: Any, alias: str) -> LocMemByteStore:
        """The store of cache ``alias`` (a ``LocMemCache``), from its ``CACHES`` entry."""
        params = dict(settings.CACHES.get(alias) or {})
        return cls(
            cache,
            _records(alias, str(params.get("LOCATION", ""))),
            max_entries=_int_option(params, "MAX_ENTRIES", _MAX_ENTRIES),
            cull_frequency=_int_option(params, "CULL_FREQUENCY", _CULL_FREQUENCY),
        )

    def _key(self, key: str) -> str:
        return self.cache.make_and_validate_key(KEY_NAMESPACE + key)  # type: ignore[no-any-return]

    def _sync(self) -> _Records:
        """The records, emptied first if the cache was cleared. Caller holds their lock."""
        records = self._records
        if not self.cache.has_key(MARKER):
            if records.entries:
                logger.info("The session cache was cleared: its sessions end too.")
            records.clear()
        self.cache.set(MARKER, True, timeout=None)
        return records

    # -- the four verbs -------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, Handle] | None:
        k = self._key(key)
        with self._records.lock:
            entry = self._sync().live(k, time.time())
        if entry is None:
            return None
        return entry.value, None  # no handle: the record's version is the whole token

    def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Token | None:
        k = self._key(key)
        data = bytes(value)
        with self._records.lock:
            records = self._sync()
            now = time.time()
            if records.live(k, now) is not None:
                return None
            others = self._capped_others(records, key, user, cap, now)
            records.make_room(self.max_entries, self.cull_frequency, now)
            records.put(k, _Entry(data, now + max(1, ttl), key, user))
            self._trim(records, others, cap)
        return Token(version)

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
        cap: UserCap | None = None,
    ) -> Token | None:
        k = self._key(key)
        data = bytes(value)
        with self._records.lock:
            records = self._sync()
            now = time.time()
            current = records.live(k, now)
            if current is None or not current.value.startswith(head):
                return None
            try:
                others = self._capped_others(records, key, user, cap, now)
            except SessionLimitReached:
                records.drop(k)  # the session as it was before it gained the user
                raise
            records.put(k, _Entry(data, now + max(1, ttl), key, user))
            self._trim(records, others, cap)
        return Token(version)

    # -- MAX_SESSIONS_PER_USER (hardened_sessions.cap), under the records' lock -----------

    def _capped_others(
        self, records: _Records, key: str, user: str | None, cap: UserCap | None, now: float
    ) -> list[str]:
        """The user's other live sessions, newest first (by creation), when ``cap``
        applies; ``SessionLimitReached`` when it refuses this write."""
        if cap is None or user is None:
            return []
        found: list[tuple[int, str]] = []
        for other in list(records.users.get(user, ())):
            entry = records.live(self._key(other), now) if other != key else None
            if entry is not None:
                found.append((peek_created(entry.value), other))
        found.sort(reverse=True)
        if cap.refuse and len(found) >= cap.limit:
            raise SessionLimitReached(cap.limit)
        return [other for _, other in found]

    def _trim(self, records: _Records, others: list[str], cap: UserCap | None) -> None:
        if cap is None:
            return
        for other in others[cap.limit - 1 :]:
            if records.drop(self._key(other)) is not None:
                cap.ended.append(other)

    def delete(self, key: str) -> bool:
        return self.delete_many([key])[0]

    # -- the per-user index (UserIndex) ---------------------------------------------------

    def delete_many(self, keys: Iterable[str]) -> list[bool]:
        ks = [self._key(key) for key in keys]
        with self._records.lock:
            records = self._sync()
            now = time.time()
            # Only a live entry counts as deleted by this call (as a Redis DEL).
            return [records.live(k, now) is not None and bool(records.drop(k)) for k in ks]

    def user_members(self, user: str) -> list[str]:
        return [key for key, _ in self.user_records(user)]

    def user_records(self, user: str) -> list[tuple[str, bytes | None]]:
        with self._records.lock:
            records = self._sync()
            now = time.time()
            found: list[tuple[str, bytes | None]] = []
            for key in sorted(records.users.get(user, ())):
                entry = records.live(self._key(key), now)
                if entry is not None:
                    found.append((key, entry.value))
            return found

    def forget_members(self, user: str, keys: Iterable[str]) -> None:
        with self._records.lock:
            records = self._sync()
            for key in keys:
                records.unindex(user, key)

    # -- inspection, by full cache key (what redis-cli is to Redis): tests, diagnostics ----

    def raw_keys(self) -> list[str]:
        """Full cache keys of the live records."""
        with self._records.lock:
            records = self._sync()
            now = time.time()
            return [k for k, entry in records.entries.items() if entry.expires > now]

    def raw_get(self, k: str) -> bytes | None:
        """The bytes stored under full cache key ``k``, without touching its recency."""
        with self._records.lock:
            entry = self._sync().entries.get(k)
            return entry.value if entry is not None and entry.expires > time.time() else None

    def raw_ttl(self, k: str) -> float | None:
        """Seconds left before the record under full cache key ``k`` expires."""
        with self._records.lock:
            entry = self._sync().entries.get(k)
            left = None if entry is None else entry.expires - time.time()
            return left if left is not None and left > 0 else None

    def raw_set(self, k: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under full cache key ``k`` as is (no index, no bound): for
        planting records in tests, as a raw client writes to Redis."""
        key = k.rsplit(":", 1)[-1]
        with self._records.lock:
            self._sync().put(k, _Entry(bytes(value), time.time() + ttl, key, None))

    def raw_delete(self, k: str) -> bool:
        with self._records.lock:
            return self._sync().drop(k) is not None
