"""Byte store over Django's ``LocMemCache``, for the test suites of sites using the engine.

``LocMemCache`` pickles in ``set``/``get``; this store works on the cache's own
dict under the cache's own lock instead, storing the record bytes as they are.
``cache.clear()`` clears sessions too, as users' tests expect. (Reading a
session's entry through ``cache.get`` would try to unpickle it and fail: the
entries are not pickles.)
"""

from __future__ import annotations

import time
from typing import Any

from ..record import peek_version
from . import KEY_NAMESPACE

__all__ = ["LocMemByteStore"]


class LocMemByteStore:
    # Under the cache's lock a session and its user's index change together.
    supports_user_index = True

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def _key(self, key: str) -> str:
        return self.cache.make_and_validate_key(KEY_NAMESPACE + key)  # type: ignore[no-any-return]

    def _live(self, key: str) -> bytes | None:
        # Caller holds the cache's lock.
        cache = self.cache
        if cache._has_expired(key):
            cache._delete(key)
            return None
        value = cache._cache.get(key)
        if value is not None:
            cache._cache.move_to_end(key, last=False)
        return value  # type: ignore[no-any-return]

    def get(self, key: str) -> tuple[bytes, Any] | None:
        k = self._key(key)
        with self.cache._lock:
            value = self._live(k)
        if value is None:
            return None
        return value, peek_version(value)

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Any | None:
        k = self._key(key)
        with self.cache._lock:
            if self._live(k) is not None:
                return None
            self.cache._set(k, bytes(value), ttl)
            self._index(user, key, ttl)
        return version

    def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Any,
        version: int,
        user: str | None = None,
    ) -> Any | None:
        k = self._key(key)
        with self.cache._lock:
            current = self._live(k)
            if current is None or peek_version(current) != token:
                return None
            self.cache._set(k, bytes(value), ttl)
            self._index(user, key, ttl)
        return version

    def delete(self, key: str) -> bool:
        k = self._key(key)
        with self.cache._lock:
            return bool(self.cache._delete(k))

    def delete_many(self, keys: Any) -> list[bool]:
        return [self.delete(key) for key in keys]

    # -- per-user index: newline-separated store keys under the user's own entry ----------

    def _index_key(self, user: str) -> str:
        return self.cache.make_and_validate_key(KEY_NAMESPACE + "user:" + user)  # type: ignore[no-any-return]

    def _members(self, user: str) -> set[str]:
        # Caller holds the cache's lock.
        raw = self._live(self._index_key(user))
        return set(raw.decode("ascii").split()) if raw else set()

    def _index(self, user: str | None, key: str, ttl: int) -> None:
        # Caller holds the cache's lock.
        if user is None:
            return
        members = self._members(user) | {key}
        index_key = self._index_key(user)
        expiry = self.cache._expire_info.get(index_key)
        ttl = max(ttl, int(expiry - time.time()) if expiry else 0)
        self.cache._set(index_key, "\n".join(sorted(members)).encode("ascii"), ttl)

    def user_members(self, user: str) -> list[str]:
        with self.cache._lock:
            return sorted(self._members(user))

    def user_records(self, user: str) -> list[tuple[str, bytes | None]]:
        with self.cache._lock:
            return [(key, self._live(self._key(key))) for key in sorted(self._members(user))]

    def forget_members(self, user: str, keys: Any) -> None:
        with self.cache._lock:
            members = self._members(user) - set(keys)
            index_key = self._index_key(user)
            if members:
                self.cache._cache[index_key] = "\n".join(sorted(members)).encode("ascii")
            else:
                self.cache._delete(index_key)
