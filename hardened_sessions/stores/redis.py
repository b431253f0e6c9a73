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

Per-user index (not on Redis Cluster): a write that names a user also adds the
session's store key to that user's set, in the same script, so the index is
never missing a session (it may hold keys of sessions that ended since; readers
check each one and prune). On a cluster the set and the sessions live in other
slots, where no script can update both, so there is no index there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from ..exceptions import SessionStoreUnavailable
from ..record import version_head
from . import KEY_NAMESPACE, UnsupportedCache

__all__ = ["RedisByteStore"]

# The index's own TTL follows the longest-lived session in it.
_INDEX_LUA = """
if KEYS[2] then
  redis.call('SADD', KEYS[2], ARGV[4])
  if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[2], ARGV[2])
  end
end
"""
# Record bytes go to redis-py as bytes, not as a view of the engine's buffer: redis-py
# sends a memoryview argument in a write of its own, one more packet per command.
# KEYS[1] = record, KEYS[2] = user index (optional);
# ARGV[1] = record bytes, ARGV[2] = ttl seconds, ARGV[3] = expected head, ARGV[4] = member.
# Returns 1 when replaced, 0 when the record changed, -1 when it is gone.
CAS_SCRIPT = (
    """
-- Only the head is read (GETRANGE, not GET): copying a 40 KiB record into Lua to compare
-- a dozen bytes costs a third of the script's time. Records are never empty.
local head = redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[3]) - 1)
if head == '' then return -1 end
if head ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
"""
    + _INDEX_LUA
    + "return 1\n"
)
# Same keys and arguments (ARGV[3] unused). Returns 1 when created, 0 when taken.
ADD_SCRIPT = (
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
"""
    + _INDEX_LUA
    + "return 1\n"
)


def _unavailable(exc: Exception, what: str) -> SessionStoreUnavailable:
    return SessionStoreUnavailable(f"Redis could not {what} ({exc.__class__.__name__}).")


class RedisByteStore:
    def __init__(
        self,
        client: Callable[[], Any],
        make_key: Callable[[str], str],
        *,
        supports_user_index: bool = True,
    ) -> None:
        self._client = client
        self._make_key = make_key
        self.supports_user_index = supports_user_index
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_cache(cls, cache: Any) -> RedisByteStore:
        # Store keys are always 64 hex digits: validate the shape once here instead of
        # running Django's per-character memcached-compatibility check on every command.
        cache.validate_key(cache.make_key(KEY_NAMESPACE + "0" * 64))
        make_key = cache.make_key
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
        from ..cache import RedisClusterCacheClient

        # Django builds a new Redis object (over its shared pool) on every get_client();
        # one is enough: it is thread-safe and the pool is the cache's own.
        primary: list[Any] = []

        def primary_client() -> Any:
            if not primary:
                primary.append(inner.get_client(None, write=True))
            return primary[0]

        return cls(
            primary_client,
            make_key,
            supports_user_index=not isinstance(inner, RedisClusterCacheClient),
        )

    def _key(self, key: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + key))

    def _index_key(self, user: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + "user:" + user))

    def _run_script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        client = self._client()
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script(keys=keys, args=args, client=client)

    def _keys(self, key: str, user: str | None) -> list[str]:
        keys = [self._key(key)]
        if user is not None and self.supports_user_index:
            keys.append(self._index_key(user))
        return keys

    def get(self, key: str) -> tuple[bytes, Any] | None:
        try:
            value = self._client().get(self._key(key))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, None  # the token is the record's version: the engine reads it there

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Any | None:
        try:
            if user is None or not self.supports_user_index:
                created = self._client().set(self._key(key), bytes(value), ex=ttl, nx=True)
            else:
                created = self._run_script(
                    "add", ADD_SCRIPT, self._keys(key, user), [bytes(value), ttl, b"", key]
                )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "create a session") from exc
        return version if created else None

    def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Any,
        version: int,
        user: str | None = None,
    ) -> Any | None:
        if token is None:
            return None
        return version if self._replace(key, value, ttl, token, user) else None

    def _replace(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        expected_version: int,
        user: str | None = None,
    ) -> bool:
        try:
            outcome = self._run_script(
                "cas",
                CAS_SCRIPT,
                self._keys(key, user),
                [bytes(value), ttl, version_head(expected_version), key],
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "save a session") from exc
        return bool(outcome == 1)

    def delete(self, key: str) -> bool:
        try:
            return bool(self._client().delete(self._key(key)))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "delete a session") from exc

    # -- per-user index -------------------------------------------------------------

    def user_members(self, user: str) -> list[str]:
        """Store keys of the user's sessions (possibly some that ended since)."""
        try:
            members = self._client().smembers(self._index_key(user))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "list a user's sessions") from exc
        return sorted(m.decode("ascii") if isinstance(m, bytes) else str(m) for m in members)

    def forget_members(self, user: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        try:
            self._client().srem(self._index_key(user), *keys)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "update a user's session index") from exc
