"""Byte store over Redis, through the session cache's own connection pools.

Served backends: django-redis's ``RedisCache`` (default and Sentinel clients),
Django's ``RedisCache`` and :class:`hardened_sessions.cache.RedisClusterCache`.
The store asks the backend for its *primary* client (``write=True``) for every
command, reads included, so a replica lagging behind a logout is never
consulted, and sends plain bytes: the backend's serializer (pickle by default)
is never on the path. redis-py sets ``TCP_NODELAY`` on its sockets.

The compare-and-set is a short Lua script: it replaces the record only when
the stored one still starts with the version the request loaded, and never
creates one (so a late save cannot bring back a deleted session).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from ..exceptions import SessionStoreUnavailable
from ..record import peek_version, version_head
from . import KEY_NAMESPACE, UnsupportedCache

__all__ = ["RedisByteStore"]

# KEYS[1] = key; ARGV[1] = new record, ARGV[2] = expected head, ARGV[3] = ttl seconds.
# Returns 1 when replaced, 0 when the record changed, -1 when it is gone.
CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if string.sub(current, 1, string.len(ARGV[2])) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


def _unavailable(exc: Exception, what: str) -> SessionStoreUnavailable:
    return SessionStoreUnavailable(f"Redis could not {what} ({exc.__class__.__name__}).")


class RedisByteStore:
    def __init__(self, client: Callable[[], Any], make_key: Callable[[str], str]) -> None:
        self._client = client
        self._make_key = make_key
        self._script: Any = None

    @classmethod
    def from_cache(cls, cache: Any) -> RedisByteStore:
        make_key = cache.make_and_validate_key
        module = type(cache).__module__
        if module.startswith("django_redis"):
            client = cache.client
            if type(client).__name__ == "ShardClient":
                raise UnsupportedCache(
                    "django-redis's ShardClient spreads keys over servers by itself, and "
                    "hardened_sessions can't reach a shard's primary through it; use "
                    "Redis Cluster (hardened_sessions.cache.RedisClusterCache) instead."
                )
            return cls(lambda: client.get_client(write=True), make_key)
        inner = cache._cache  # Django's RedisCacheClient (or the cluster one)
        return cls(lambda: inner.get_client(None, write=True), make_key)

    def _key(self, key: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + key))

    def get(self, key: str) -> tuple[bytes, Any] | None:
        try:
            value = self._client().get(self._key(key))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, peek_version(value)

    def add(self, key: str, value: memoryview, ttl: int, version: int) -> Any | None:
        try:
            created = self._client().set(self._key(key), bytes(value), ex=ttl, nx=True)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "create a session") from exc
        return version if created else None

    def cas(self, key: str, value: memoryview, ttl: int, token: Any, version: int) -> Any | None:
        if token is None:
            return None
        return version if self.replace(key, value, ttl, token) else None

    def replace(self, key: str, value: memoryview, ttl: int, expected_version: int) -> bool:
        try:
            client = self._client()
            if self._script is None:
                self._script = client.register_script(CAS_SCRIPT)
            outcome = self._script(
                keys=[self._key(key)],
                args=[bytes(value), version_head(expected_version), ttl],
                client=client,
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "save a session") from exc
        return bool(outcome == 1)

    def delete(self, key: str) -> bool:
        try:
            return bool(self._client().delete(self._key(key)))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "delete a session") from exc
