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

The hot commands (load, save, create, delete) skip redis-py's per-command layers and
its pool checkout, which cost about 15 µs each a command: each thread keeps a
connection built like the client's pool builds its own (same class and settings), with
the connection's own retry policy and health checks; a forked child starts afresh. A
save sends two commands in one write: ``SET`` of the new record under a staging key
that expires within a minute, then the compare-and-set script, which renames the
staging key over the record when the version still matches (and deletes it
otherwise). So the record's bytes never pass through Lua, which doubled the cost of
a 40 KiB save. Redis Cluster clients have no single pool and keep redis-py's command
path, with the record as a script argument.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
# On redis-py's command path, record bytes go as bytes, not as a view of the engine's
# buffer: redis-py sends a memoryview argument in a write of its own, one more packet per
# command. The lean path joins the packed command into one write, so it takes the view.
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
# The same with the record staged under KEYS[2] (written by the SET sent just before);
# KEYS[3] = user index (optional); ARGV[1] = expected head, ARGV[2] = ttl seconds,
# ARGV[3] = index member. Returns as CAS_SCRIPT; the staging key is gone afterwards.
STAGED_CAS_SCRIPT = (
    """
local head = redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1)
if head ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
  if head == '' then return -1 end
  return 0
end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""
    + _INDEX_LUA.replace("KEYS[2]", "KEYS[3]").replace("ARGV[4]", "ARGV[3]")
    + "return 1\n"
)
# Seconds a staging key may outlive a save whose script never ran (connection lost).
STAGING_TTL = 60
# Same keys and arguments (ARGV[3] unused). Returns 1 when created, 0 when taken.
ADD_SCRIPT = (
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
"""
    + _INDEX_LUA
    + "return 1\n"
)


# SHA-1 of each script's source, as EVALSHA names it.
_SHAS: dict[str, str] = {}
# Stores with per-thread connections, which a forked child must not inherit.
_LIVE_STORES: weakref.WeakSet[RedisByteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        # Clients with one connection pool take the lean path (module docstring).
        self._lean = hasattr(client(), "connection_pool")
        self._local = threading.local()
        if self._lean:
            _LIVE_STORES.add(self)

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

    def _connection(self) -> Any:
        """This thread's connection to the primary, ready to send.

        Built like the pool's own connections (same class and settings, so Sentinel,
        TLS, timeouts, health checks and retries apply), but kept per thread instead of
        checked out of the pool per command, which costs redis-py about 15 µs. As the
        pool does at checkout, a connection with unexpected data or a closed socket is
        dropped and reconnects before it is used.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            pool = self._client().connection_pool
            conn = self._local.conn = pool.connection_class(**pool.connection_kwargs)
        elif conn._sock is not None:  # connected (``is_connected`` is new in redis-py 5)
            try:
                stale = conn.can_read()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                stale = True
            if stale:
                conn.disconnect()
        return conn

    def _forget_connections(self) -> None:
        # In a forked child the parent's sockets must not be used (nor closed).
        self._local = threading.local()

    def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Replies to ``commands``, sent in one write over this thread's connection.

        The connection's retry policy applies as in redis-py's own command path; any
        other failure drops the connection, so no reply is ever left for the next command.
        """
        conn = self._connection()
        try:
            packed = b"".join(conn.pack_commands(commands))

            def attempt() -> list[Any]:
                if conn._sock is None:
                    # The class's own connect(): a Sentinel-managed connection asks the
                    # sentinels for the primary there (sending would not).
                    conn.connect()
                conn.send_packed_command([packed])
                return [conn.read_response() for _ in commands]

            return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())  # type: ignore[no-any-return]
        except BaseException:
            conn.disconnect()
            raise

    def _evalsha(self, source: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``_execute`` of commands ending in EVALSHA of a script (loaded on NOSCRIPT)."""
        sha = _SHAS.get(source)
        if sha is None:
            sha = _SHAS[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        commands[-1] = ("EVALSHA", sha, *commands[-1])
        try:
            return self._execute(commands)
        except NoScriptError:
            self._client().script_load(source)
            return self._execute(commands)

    def get(self, key: str) -> tuple[bytes, Any] | None:
        try:
            if self._lean:
                (value,) = self._execute((("GET", self._key(key)),))
            else:
                value = self._client().get(self._key(key))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, None  # the token is the record's version: the engine reads it there

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Any | None:
        keys = self._keys(key, user)
        try:
            if len(keys) == 1:
                if self._lean:
                    (created,) = self._execute((("SET", keys[0], value, "EX", ttl, "NX"),))
                else:
                    created = self._client().set(keys[0], bytes(value), ex=ttl, nx=True)
            elif self._lean:
                (created,) = self._evalsha(ADD_SCRIPT, [(len(keys), *keys, value, ttl, b"", key)])
            else:
                created = self._run_script("add", ADD_SCRIPT, keys, [bytes(value), ttl, b"", key])
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
        keys = self._keys(key, user)
        head = version_head(expected_version)
        try:
            if self._lean:
                # Named after the new record's signature: unique to this write.
                staging = f"{keys[0]}:next:{bytes(value[-16:]).decode('ascii')}"
                *_, outcome = self._evalsha(
                    STAGED_CAS_SCRIPT,
                    [
                        ("SET", staging, value, "EX", STAGING_TTL),
                        (len(keys) + 1, keys[0], staging, *keys[1:], head, ttl, key),
                    ],
                )
            else:
                outcome = self._run_script("cas", CAS_SCRIPT, keys, [bytes(value), ttl, head, key])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "save a session") from exc
        return bool(outcome == 1)

    def delete(self, key: str) -> bool:
        try:
            if self._lean:
                (deleted,) = self._execute((("DEL", self._key(key)),))
                return bool(deleted)
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
