"""Byte store over Redis for asyncio: the twin of :mod:`.redis` on ``redis.asyncio``.

Same data on the server as the sync store, byte for byte: the same keys (the sync
store's key naming, so the cache's ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION``
apply), the same Lua scripts (:mod:`.redis_scripts`, never copied), the staged save
(``SET`` of a staging key, then the script that renames it over the record when the
version matches), tombstones for deletes, the signature check of a create that finds its
key taken, the per-user sorted set, and ``WAIT`` after each write with
``REDIS_WAIT_REPLICAS``. The two stores can serve the same sessions side by side.

The verbs are those of :class:`~hardened_sessions.stores.ByteStore` and
:class:`~hardened_sessions.stores.UserIndex`, as coroutines (``user_records`` is an
asynchronous iterator); each raises ``SessionStoreUnavailable`` when Redis cannot answer.

Clients are built from the session cache's own configuration, as the sync store's
(:mod:`.redis_async_clients`), one per event loop (:mod:`.redis_async_loops`).
Configurations the asyncio client can't mirror (listed there), and redis-py older than
:data:`MIN_REDIS`, have no native store: :func:`async_store_for` answers ``None``, and
the engines keep running the sync store in a thread.

Round trips, as the sync store's: each load, create, save and delete is one write of its
commands over a connection checked out of the pool (:func:`.redis_send.send_async`),
followed by ``WAIT`` on the same connection when set. On Redis Cluster the commands go
through ``RedisCluster``'s command path (scripts through ``register_script``, which loads
a script on NOSCRIPT); with ``REDIS_WAIT_REPLICAS`` the cluster's writes run on the sync
store in a worker thread, since redis.asyncio's cluster client has no public way to send
``WAIT`` on the write's own connection.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    NoScriptError,
    RedisError,
    TryAgainError,
)

from ..conf import get_config
from . import kind_of, store_for_cache
from .redis import RedisByteStore
from .redis_async_clients import Connect, accepted, connector
from .redis_async_loops import LoopClient, LoopClients
from .redis_cap import capped
from .redis_scripts import (
    ADD_SCRIPT,
    BATCH,
    CAS_SCRIPT,
    DELETE_SCRIPT,
    INDEX_SAMPLE,
    MIGRATE_SCRIPT,
    SIGNATURE_TAIL,
    STAGED_CAS_SCRIPT,
    STAGING_TTL,
    TOMBSTONE_TTL,
    sha,
    staging_name,
    text,
    tombstone_name,
)
from .redis_send import send_async, unavailable
from .token import Handle, Token

if TYPE_CHECKING:
    from ..cap import UserCap

__all__ = [
    "MIN_REDIS",
    "AsyncRedisByteStore",
    "async_store_for",
    "native_async_supported",
    "reset_async_stores",
]

#: The oldest redis-py whose asyncio client the store uses: its clients have ``aclose()``
#: (5.0.1), and a read cancelled mid-reply disconnects the connection (before 4.5.4 the
#: pending reply could go to the next command: CVE-2023-28858, CVE-2023-28859).
MIN_REDIS = (5, 0, 1)


def _cap(cap: UserCap | None) -> dict[str, Any]:
    """The sync store's ``cap`` keyword, when there is a cap."""
    return {} if cap is None else {"cap": cap}


def redis_version() -> tuple[int, ...]:
    """The installed redis-py's version, as numbers (``(8, 1, 0)``)."""
    import redis

    parts = []
    for part in str(getattr(redis, "__version__", "0")).split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def native_async_supported() -> bool:
    """Whether the installed redis-py has the asyncio client this store needs."""
    return redis_version() >= MIN_REDIS


class AsyncRedisByteStore:
    def __init__(self, connect: Connect, sync: RedisByteStore, *, lean: bool) -> None:
        # Key naming (KEY_PREFIX, VERSION, KEY_FUNCTION, the index and tombstone names)
        # is the sync store's own, so both name every key alike.
        self._sync = sync
        self._lean = lean
        self.capabilities = sync.capabilities
        self._loops = LoopClients(connect)

    # -- clients, one per event loop (redis_async_loops) --------------------------------

    async def client(self) -> Any:
        """The redis.asyncio client of the running event loop."""
        return (await self._loops.entry()).client

    async def aclose(self) -> None:
        """Close the running event loop's client (a later call opens a new one)."""
        await self._loops.aclose()

    # -- sending -------------------------------------------------------------------------

    async def _execute(
        self, entry: LoopClient, commands: Sequence[tuple[Any, ...]], *, write: bool = False
    ) -> list[Any]:
        """Replies to ``commands``, sent in one write over a connection of the loop's pool
        (:func:`.redis_send.send_async`, with ``WAIT`` after a ``write`` when set)."""
        return await send_async(entry.pool, commands, write)

    async def _evalsha(
        self,
        entry: LoopClient,
        source: str,
        commands: list[tuple[Any, ...]],
        scripts: int = 1,
        *,
        write: bool = False,
    ) -> list[Any]:
        """``_execute`` of commands whose last ``scripts`` ones run ``source``; on NOSCRIPT
        the script is loaded and all the commands sent again (each is safe to be)."""
        digest = sha(source)
        commands = list(commands)
        for i in range(len(commands) - scripts, len(commands)):
            commands[i] = ("EVALSHA", digest, *commands[i])
        try:
            return await self._execute(entry, commands, write=write)
        except NoScriptError:
            await entry.client.script_load(source)
            return await self._execute(entry, commands, write=write)

    async def _run_script(
        self, entry: LoopClient, name: str, source: str, keys: list[str], args: list[Any]
    ) -> Any:
        """A script through the client's own script object (Redis Cluster)."""
        script = entry.scripts.get(name)
        if script is None:
            script = entry.scripts[name] = entry.client.register_script(source)
        return await script(keys=keys, args=args, client=entry.client)

    async def _script(
        self, entry: LoopClient, source: str, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        if self._lean:
            return (await self._evalsha(entry, source, [(len(keys), *keys, *args)]))[0]
        return await self._run_script(entry, name, source, keys, args)

    async def _batch(self, entry: LoopClient, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Replies to ``commands`` (reads), pipelined."""
        if self._lean:
            return await self._execute(entry, commands)
        pipe = entry.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    def _waits_in_thread(self) -> bool:
        """Redis Cluster with ``REDIS_WAIT_REPLICAS``: writes go to the sync store."""
        return not self._lean and bool(get_config().redis_wait_replicas)

    async def _in_thread(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from asgiref.sync import sync_to_async

        return await sync_to_async(method, thread_sensitive=False)(*args, **kwargs)

    def _cap_args(self, cap: UserCap | None, keys: list[str]) -> list[Any]:
        """``MAX_SESSIONS_PER_USER``'s script arguments, as the sync store makes them."""
        return [] if cap is None else list(self._sync._cap_args(cap, keys))

    # -- the store's verbs -----------------------------------------------------------------

    async def get(self, key: str) -> tuple[bytes, Handle] | None:
        record_key = self._sync._key(key)
        try:
            entry = await self._loops.entry()
            if self._lean:
                (value,) = await self._execute(entry, (("GET", record_key),))
            else:
                value = await entry.client.get(record_key)
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, None  # no handle: the record's version is the whole token

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Token | None:
        if self._waits_in_thread():
            added: Token | None = await self._in_thread(
                self._sync.add, key, value, ttl, version, user, **_cap(cap)
            )
            return added
        keys = self._sync._keys(key, user)
        signature = bytes(value[-SIGNATURE_TAIL:])
        try:
            entry = await self._loops.entry()
            if len(keys) == 1:
                if self._lean:
                    (created,) = await self._execute(
                        entry, (("SET", keys[0], value, "EX", ttl, "NX"),), write=True
                    )
                else:
                    created = await entry.client.set(keys[0], bytes(value), ex=ttl, nx=True)
            else:
                import random

                template = self._sync._record_key_template
                prefix, suffix = template or ("", "")
                sample = INDEX_SAMPLE if template else 0
                rank = random.getrandbits(31)  # noqa: S311 (spreads the check, no secret)
                args = [ttl, key, prefix, suffix, sample, rank, *self._cap_args(cap, keys)]
                if self._lean:
                    (created,) = await self._evalsha(
                        entry, ADD_SCRIPT, [(len(keys), *keys, value, *args)], write=True
                    )
                else:
                    created = await self._run_script(
                        entry, "add", ADD_SCRIPT, keys, [bytes(value), *args]
                    )
                if cap is not None:
                    created = capped(created, cap)
            if not created:
                # Taken, or created by this very call and re-sent after a lost reply: the
                # record's signature (over this key and payload) tells which.
                created = await self._holds(entry, keys[0], signature)
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "create a session") from exc
        return Token(version) if created else None

    async def _holds(self, entry: LoopClient, record_key: str, signature: bytes) -> bool:
        """Whether the record stored under ``record_key`` ends with ``signature``."""
        command = ("GETRANGE", record_key, -len(signature), -1)
        if self._lean:
            (tail,) = await self._execute(entry, (command,))
        else:
            tail = await entry.client.execute_command(*command)
        return bytes(tail or b"") == signature

    async def cas(
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
        if self._waits_in_thread():
            replaced: Token | None = await self._in_thread(
                self._sync.cas, key, value, ttl, token, version, user, head=head, **_cap(cap)
            )
            return replaced
        keys = self._sync._keys(key, user)
        capping = self._cap_args(cap, keys)
        try:
            entry = await self._loops.entry()
            if self._lean:
                staging = staging_name(keys[0], value)
                *_, outcome = await self._evalsha(
                    entry,
                    STAGED_CAS_SCRIPT,
                    [
                        ("SET", staging, value, "EX", STAGING_TTL),
                        (len(keys) + 1, keys[0], staging, *keys[1:], head, ttl, key, *capping),
                    ],
                    write=True,
                )
                if cap is not None:
                    outcome = capped(outcome, cap)
            else:
                outcome = await self._run_script(
                    entry, "cas", CAS_SCRIPT, keys, [bytes(value), ttl, head, key]
                )
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "save a session") from exc
        return Token(version) if outcome == 1 else None

    async def delete(self, key: str) -> bool:
        """Whether this call deleted the record, also when the client re-sent it after a
        lost reply (the tombstone written with the delete tells)."""
        return (await self.delete_many([key]))[0]

    async def delete_many(self, keys: Iterable[str]) -> list[bool]:
        """``delete`` of each key, pipelined (one write per BATCH keys); whether each
        was deleted by this call."""
        keys = list(keys)
        if self._waits_in_thread():
            return list(await self._in_thread(self._sync.delete_many, keys))
        record_keys = [self._sync._key(key) for key in keys]
        deleted: list[bool] = []
        try:
            entry = await self._loops.entry()
            for start in range(0, len(record_keys), BATCH):
                chunk = record_keys[start : start + BATCH]
                if self._lean:
                    commands = [(2, k, tombstone_name(k, None), TOMBSTONE_TTL) for k in chunk]
                    replies = await self._evalsha(
                        entry, DELETE_SCRIPT, commands, scripts=len(commands), write=True
                    )
                else:
                    replies = [await self._delete_one(entry, k) for k in chunk]
                deleted.extend(bool(reply) for reply in replies)
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "delete a session") from exc
        return deleted

    async def _delete_one(self, entry: LoopClient, record_key: str) -> int:
        tombstone = tombstone_name(record_key, entry.client.keyslot)
        if tombstone is not None:
            keys = [record_key, tombstone]
            try:
                return int(
                    await self._run_script(entry, "delete", DELETE_SCRIPT, keys, [TOMBSTONE_TTL])
                )
            except (TryAgainError, ClusterError) as exc:
                # A migrating slot refuses the script (its tombstone is new on both
                # nodes) until the migration ends: a plain DEL, as the sync store does.
                if isinstance(exc, ClusterDownError):
                    raise
        # No same-slot name for a tombstone, or a migrating slot: a plain DEL.
        return int(await entry.client.delete(record_key))

    # -- per-user index ---------------------------------------------------------------------

    async def user_members(self, user: str) -> list[str]:
        """Store keys of the user's sessions (possibly some that ended since)."""
        return await self._members(user)

    async def _members(self, user: str) -> list[str]:
        """Members of both generations of the user's index; the earlier build's are moved
        into the sorted set first (the live ones, scored with their records' TTL)."""
        index, legacy = self._sync._index_key(user), self._sync._legacy_index_key(user)
        try:
            entry = await self._loops.entry()
            current, old = await self._batch(
                entry, [("ZRANGE", index, 0, -1), ("SMEMBERS", legacy)]
            )
            old_members = sorted({text(m) for m in old})
            for start in range(0, len(old_members), BATCH):
                chunk = old_members[start : start + BATCH]
                record_keys = [self._sync._key(k) for k in chunk]
                await self._script(
                    entry, MIGRATE_SCRIPT, "migrate", [legacy, index, *record_keys], chunk
                )
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "list a user's sessions") from exc
        return sorted({text(m) for m in current} | set(old_members))

    async def user_records(self, user: str) -> AsyncIterator[tuple[str, bytes | None]]:
        """``(store key, stored bytes or None)`` for each member of the user's index, in
        pipelined reads of BATCH members, fetched as the caller iterates."""
        members = await self._members(user)
        for start in range(0, len(members), BATCH):
            chunk = members[start : start + BATCH]
            try:
                entry = await self._loops.entry()
                values = await self._batch(entry, [("GET", self._sync._key(k)) for k in chunk])
            except (RedisError, OSError) as exc:
                raise unavailable(exc, "list a user's sessions") from exc
            for key, value in zip(chunk, values, strict=True):
                yield key, None if value is None else bytes(value)

    async def forget_members(self, user: str, keys: Iterable[str]) -> None:
        """Drop ``keys`` from the user's index (both generations of it)."""
        keys = list(keys)
        index, legacy = self._sync._index_key(user), self._sync._legacy_index_key(user)
        try:
            entry = await self._loops.entry()
            for start in range(0, len(keys), BATCH):
                chunk = keys[start : start + BATCH]
                await self._batch(entry, [("ZREM", index, *chunk), ("SREM", legacy, *chunk)])
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "update a user's session index") from exc


_lock = threading.Lock()
_stores: dict[str, AsyncRedisByteStore | None] = {}


def async_store_for(alias: str) -> AsyncRedisByteStore | None:
    """The asyncio store for cache ``alias`` (built once per alias and process), or
    ``None`` when the cache has no native asyncio client (memcached, LocMemCache, the
    Redis configurations the module docstring lists): then the sync store serves.
    ``UnsupportedCache`` for a cache that no store serves, as ``store_for_cache``."""
    with _lock:
        if alias in _stores:
            return _stores[alias]
    cache = caches[alias]
    store: AsyncRedisByteStore | None = None
    if kind_of(cache) == "redis" and native_async_supported():
        sync = store_for_cache(alias)
        connect, lean = connector(cache, alias)
        if isinstance(sync, RedisByteStore) and connect is not None and accepted(connect):
            store = AsyncRedisByteStore(connect, sync, lean=lean)
    with _lock:
        return _stores.setdefault(alias, store)


def reset_async_stores() -> None:
    with _lock:
        _stores.clear()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "SESSION_CACHE_ALIAS"):
        reset_async_stores()
