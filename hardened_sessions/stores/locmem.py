"""Byte store over Django's ``LocMemCache``, for the test suites of sites using the engine.

``LocMemCache`` pickles in ``set``/``get``; this store works on the cache's own
dict under the cache's own lock instead, storing the record bytes as they are.
``cache.clear()`` clears sessions too, as users' tests expect. (Reading a
session's entry through ``cache.get`` would try to unpickle it and fail: the
entries are not pickles.)
"""

from __future__ import annotations

from typing import Any

from ..record import peek_version
from . import KEY_NAMESPACE

__all__ = ["LocMemByteStore"]


class LocMemByteStore:
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

    def add(self, key: str, value: memoryview, ttl: int, version: int) -> Any | None:
        k = self._key(key)
        with self.cache._lock:
            if self._live(k) is not None:
                return None
            self.cache._set(k, bytes(value), ttl)
        return version

    def cas(self, key: str, value: memoryview, ttl: int, token: Any, version: int) -> Any | None:
        k = self._key(key)
        with self.cache._lock:
            current = self._live(k)
            if current is None or peek_version(current) != token:
                return None
            self.cache._set(k, bytes(value), ttl)
        return version

    def replace(self, key: str, value: memoryview, ttl: int, expected_version: int) -> bool:
        return self.cas(key, value, ttl, expected_version, expected_version) is not None

    def delete(self, key: str) -> bool:
        k = self._key(key)
        with self.cache._lock:
            return bool(self.cache._delete(k))
