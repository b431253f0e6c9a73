"""Byte store over Redis for asyncio: the twin of :mod:`.redis` on ``redis.asyncio``.

Same data on the server as the sync store, byte for byte: the same keys (the sync
store's key naming, so the cache's ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION``
apply), the same Lua scripts (imported from :mod:`.redis`, never copied), the staged
save (``SET`` of a staging key, then the script that renames it over the record when the
version matches), tombstones for deletes, the signature check of a create that finds its
key taken, the per-user sorted set, and ``WAIT`` after each write with
``REDIS_WAIT_REPLICAS``. The two stores can serve the same sessions side by side.

The verbs are those of :class:`~hardened_sessions.stores.ByteStore` and
:class:`~hardened_sessions.stores.UserIndex`, as coroutines (``user_records`` is an
asynchronous iterator); each raises ``SessionStoreUnavailable`` when Redis cannot answer.

Clients: built from the session cache's own configuration, as the sync store's:

* Django's ``RedisCache``: the first ``LOCATION`` URL and ``OPTIONS`` as
  :func:`.redis.django_pool_settings` reads them, with the asyncio twin of
  ``pool_class`` (``ConnectionPool`` or ``BlockingConnectionPool``);
* django-redis (``DefaultClient`` and its subclasses, ``SentinelClient``): the primary
  URL, with the options django-redis's own connection factory reads
  (``make_connection_params``: ``PASSWORD``, ``USERNAME``, ``SOCKET_TIMEOUT``,
  ``SOCKET_CONNECT_TIMEOUT``) and ``CONNECTION_POOL_KWARGS``, on the asyncio twin of
  ``CONNECTION_POOL_CLASS``; with ``SentinelConnectionFactory``, a
  ``redis.asyncio.sentinel.Sentinel`` on ``SENTINELS`` (``SENTINEL_KWARGS``) and its
  ``SentinelConnectionPool`` for the service the URL names;
* :class:`hardened_sessions.cache.RedisClusterCache`: ``redis.asyncio.cluster.RedisCluster``
  on the seed nodes of ``LOCATION`` with ``OPTIONS``.

A ``parser_class`` (``PARSER_CLASS``) is a sync parser: the asyncio pool uses
redis.asyncio's default one (hiredis when installed), which only changes how replies are
parsed. Configurations the asyncio client can't mirror have no native store
(:func:`async_store_for` answers ``None``, and the engines keep running the sync store in
a thread): a pool class or connection class other than redis-py's own, a django-redis
connection factory of the project's own, a ``retry`` object in the options (a sync
policy; ``retry_on_timeout`` carries over), options the asyncio connection refuses, or
redis-py older than :data:`MIN_REDIS`.

One client per event loop: redis.asyncio connections belong to the loop that opened
them, so the store keeps a client (and its pool) per running loop. The pool's
``max_connections`` is the cache's, per loop, and separate from the sync store's pool:
a process that serves sessions both ways may hold both limits' worth of connections
(an ASGI server runs one loop, so one async pool). A loop's client is closed when
``asyncio.run()`` (or anything else that calls ``loop.shutdown_asyncgens()``) ends the
loop; a loop closed otherwise is forgotten at the next new loop, and :meth:`aclose`
closes the running loop's client at once. Under WSGI, Django runs an async view through
asgiref's ``async_to_sync`` on a loop of its own for that call (``asyncio.run``), so the
client connects anew for each such call; under ASGI one loop serves every request.

Round trips, as the sync store's: each load, create, save and delete is one write of its
commands over a connection checked out of the pool (redis.asyncio's public
``get_connection()`` / ``pack_commands`` / ``send_packed_command`` / ``read_response`` /
``release()``, with the connection's own retry policy), followed by ``WAIT`` on the same
connection when set; a connection whose replies were not all read (an error, a
cancelled task) is disconnected before it goes back. On Redis Cluster the commands go
through ``RedisCluster``'s command path (scripts through ``register_script``, which loads
a script on NOSCRIPT); with ``REDIS_WAIT_REPLICAS`` the cluster's writes run on the sync
store in a worker thread, since redis.asyncio's cluster client has no public way to send
``WAIT`` on the write's own connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from django.conf import settings
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
from ..record import version_head
from . import kind_of, store_for_cache
from .redis import (
    _SIGNATURE_TAIL,
    ADD_SCRIPT,
    BATCH,
    CAS_SCRIPT,
    DELETE_SCRIPT,
    INDEX_SAMPLE,
    MIGRATE_SCRIPT,
    STAGED_CAS_SCRIPT,
    STAGING_TTL,
    TOMBSTONE_TTL,
    RedisByteStore,
    ReplicationUnconfirmed,
    _checkout_args,
    _sha,
    _text,
    _tombstone_name,
    _unavailable,
    django_pool_settings,
)

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

# A client of one event loop: builds the client, returns it with the sentinels' own
# clients (closed with it).
Connect = Callable[[], tuple[Any, list[Any]]]


def _cap(cap: UserCap | None) -> dict[str, Any]:
    """The sync store's ``cap`` keyword, when there is a cap."""
    return {} if cap is None else {"cap": cap}


def native_async_supported() -> bool:
    """Whether the installed redis-py has the asyncio client this store needs."""
    import redis

    parts = []
    for part in str(getattr(redis, "__version__", "0")).split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= MIN_REDIS


class _LoopClient:
    """The client of one event loop, with the script objects made on it."""

    def __init__(self, client: Any, others: list[Any]) -> None:
        self.client = client
        self.pool: Any = getattr(client, "connection_pool", None)
        self.others = others
        self.scripts: dict[str, Any] = {}
        self.closer: AsyncGenerator[None, None] | None = None

    async def aclose(self) -> None:
        """Close the connections (a failure to close one does not keep the others open)."""
        closers = [self.client.aclose]
        if self.pool is not None:  # a pool given to Redis() is not closed by it
            closers.append(self.pool.disconnect)
        closers += [other.aclose for other in self.others]
        for close in closers:
            with suppress(RedisError, OSError, RuntimeError):
                await close()


class AsyncRedisByteStore:
    def __init__(self, connect: Connect, sync: RedisByteStore, *, lean: bool) -> None:
        self._connect = connect
        # Key naming (KEY_PREFIX, VERSION, KEY_FUNCTION, the index and tombstone names)
        # is the sync store's own, so both name every key alike.
        self._sync = sync
        self._lean = lean
        self.supports_user_index = sync.supports_user_index
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}

    # -- clients, one per event loop ---------------------------------------------------

    async def _entry(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._clients.get(loop)
            if entry is None:
                for closed in [other for other in self._clients if other.is_closed()]:
                    del self._clients[closed]
                entry = self._clients[loop] = _LoopClient(*self._connect())
                entry.closer = self._closer(loop, entry)
                start = True
            else:
                start = False
        if start and entry.closer is not None:
            # An asynchronous generator that the loop closes at its end
            # (loop.shutdown_asyncgens(), which asyncio.run() calls): it closes the client.
            await entry.closer.asend(None)
        return entry

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, entry: _LoopClient
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(loop) is entry:
                    del self._clients[loop]
            await entry.aclose()

    async def client(self) -> Any:
        """The redis.asyncio client of the running event loop."""
        return (await self._entry()).client

    async def aclose(self) -> None:
        """Close the running event loop's client (a later call opens a new one)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.pop(loop, None)
        if entry is not None:
            if entry.closer is not None:
                await entry.closer.aclose()
            else:
                await entry.aclose()

    # -- sending -------------------------------------------------------------------------

    async def _execute(
        self, entry: _LoopClient, commands: Sequence[tuple[Any, ...]], *, write: bool = False
    ) -> list[Any]:
        """Replies to ``commands``, sent in one write over a connection of the loop's pool;
        with ``write`` and ``REDIS_WAIT_REPLICAS`` set, followed by ``WAIT``
        (``ReplicationUnconfirmed`` when too few replicas confirm). As the sync store's
        ``_send``: the connection's retry policy applies (every command sent here is safe
        to re-send), and a connection left with unread replies is disconnected."""
        pool = entry.pool
        wait = get_config().redis_wait_replicas if write else 0
        if wait:
            commands = [*commands, ("WAIT", wait, get_config().redis_wait_timeout_ms)]
        conn = await pool.get_connection(*_checkout_args(pool))
        try:
            packed = b"".join(conn.pack_commands(commands))
            retried = False

            async def attempt() -> list[Any]:
                nonlocal retried
                if retried:
                    await conn.connect()
                retried = True
                await conn.send_packed_command([packed])
                return [await conn.read_response() for _ in commands]

            async def fail(_error: BaseException) -> None:
                await conn.disconnect()

            replies: list[Any] = await conn.retry.call_with_retry(attempt, fail)
        except BaseException:
            with suppress(Exception):  # the failure that brought us here is the one to raise
                await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        if wait:
            confirmed = replies.pop()
            if not isinstance(confirmed, int) or confirmed < wait:
                raise ReplicationUnconfirmed(
                    f"{confirmed} of {wait} replicas confirmed the write in time"
                )
        return replies

    async def _evalsha(
        self,
        entry: _LoopClient,
        source: str,
        commands: list[tuple[Any, ...]],
        scripts: int = 1,
        *,
        write: bool = False,
    ) -> list[Any]:
        """``_execute`` of commands whose last ``scripts`` ones run ``source``; on NOSCRIPT
        the script is loaded and all the commands sent again (each is safe to be)."""
        sha = _sha(source)
        commands = list(commands)
        for i in range(len(commands) - scripts, len(commands)):
            commands[i] = ("EVALSHA", sha, *commands[i])
        try:
            return await self._execute(entry, commands, write=write)
        except NoScriptError:
            await entry.client.script_load(source)
            return await self._execute(entry, commands, write=write)

    async def _run_script(
        self, entry: _LoopClient, name: str, source: str, keys: list[str], args: list[Any]
    ) -> Any:
        """A script through the client's own script object (Redis Cluster)."""
        script = entry.scripts.get(name)
        if script is None:
            script = entry.scripts[name] = entry.client.register_script(source)
        return await script(keys=keys, args=args, client=entry.client)

    async def _script(
        self, entry: _LoopClient, source: str, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        if self._lean:
            return (await self._evalsha(entry, source, [(len(keys), *keys, *args)]))[0]
        return await self._run_script(entry, name, source, keys, args)

    async def _batch(self, entry: _LoopClient, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
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

    async def get(self, key: str) -> tuple[bytes, Any] | None:
        record_key = self._sync._key(key)
        try:
            entry = await self._entry()
            if self._lean:
                (value,) = await self._execute(entry, (("GET", record_key),))
            else:
                value = await entry.client.get(record_key)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, None  # the token is the record's version: the engine reads it there

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Any | None:
        if self._waits_in_thread():
            return await self._in_thread(
                self._sync.add, key, value, ttl, version, user, **_cap(cap)
            )
        keys = self._sync._keys(key, user)
        signature = bytes(value[-_SIGNATURE_TAIL:])
        try:
            entry = await self._entry()
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
                    created = self._sync._capped(created, cap)
            if not created:
                # Taken, or created by this very call and re-sent after a lost reply: the
                # record's signature (over this key and payload) tells which.
                created = await self._holds(entry, keys[0], signature)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "create a session") from exc
        return version if created else None

    async def _holds(self, entry: _LoopClient, record_key: str, signature: bytes) -> bool:
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
        token: Any,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Any | None:
        if token is None:
            return None
        if self._waits_in_thread():
            return await self._in_thread(
                self._sync.cas, key, value, ttl, token, version, user, **_cap(cap)
            )
        keys = self._sync._keys(key, user)
        head = version_head(token)
        capping = self._cap_args(cap, keys)
        try:
            entry = await self._entry()
            if self._lean:
                # Named after the new record's signature: unique to this write.
                staging = f"{keys[0]}:next:{bytes(value[-16:]).decode('ascii')}"
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
                    outcome = self._sync._capped(outcome, cap)
            else:
                outcome = await self._run_script(
                    entry, "cas", CAS_SCRIPT, keys, [bytes(value), ttl, head, key]
                )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "save a session") from exc
        return version if outcome == 1 else None

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
            entry = await self._entry()
            for start in range(0, len(record_keys), BATCH):
                chunk = record_keys[start : start + BATCH]
                if self._lean:
                    commands = [(2, k, _tombstone_name(k, None), TOMBSTONE_TTL) for k in chunk]
                    replies = await self._evalsha(
                        entry, DELETE_SCRIPT, commands, scripts=len(commands), write=True
                    )
                else:
                    replies = [await self._delete_one(entry, k) for k in chunk]
                deleted.extend(bool(reply) for reply in replies)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "delete a session") from exc
        return deleted

    async def _delete_one(self, entry: _LoopClient, record_key: str) -> int:
        tombstone = _tombstone_name(record_key, entry.client.keyslot)
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
            entry = await self._entry()
            current, old = await self._batch(
                entry, [("ZRANGE", index, 0, -1), ("SMEMBERS", legacy)]
            )
            old_members = sorted({_text(m) for m in old})
            for start in range(0, len(old_members), BATCH):
                chunk = old_members[start : start + BATCH]
                record_keys = [self._sync._key(k) for k in chunk]
                await self._script(
                    entry, MIGRATE_SCRIPT, "migrate", [legacy, index, *record_keys], chunk
                )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "list a user's sessions") from exc
        return sorted({_text(m) for m in current} | set(old_members))

    async def user_records(self, user: str) -> AsyncIterator[tuple[str, bytes | None]]:
        """``(store key, stored bytes or None)`` for each member of the user's index, in
        pipelined reads of BATCH members, fetched as the caller iterates."""
        members = await self._members(user)
        for start in range(0, len(members), BATCH):
            chunk = members[start : start + BATCH]
            try:
                entry = await self._entry()
                values = await self._batch(entry, [("GET", self._sync._key(k)) for k in chunk])
            except (RedisError, OSError) as exc:
                raise _unavailable(exc, "list a user's sessions") from exc
            for key, value in zip(chunk, values, strict=True):
                yield key, None if value is None else bytes(value)

    async def forget_members(self, user: str, keys: Iterable[str]) -> None:
        """Drop ``keys`` from the user's index (both generations of it)."""
        keys = list(keys)
        index, legacy = self._sync._index_key(user), self._sync._legacy_index_key(user)
        try:
            entry = await self._entry()
            for start in range(0, len(keys), BATCH):
                chunk = keys[start : start + BATCH]
                await self._batch(entry, [("ZREM", index, *chunk), ("SREM", legacy, *chunk)])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "update a user's session index") from exc


# --- building the clients from the cache's configuration -----------------------------------


def _async_pool_class(pool_class: Any) -> Any:
    """redis.asyncio's twin of one of redis-py's own sync pool classes, else ``None``."""
    import redis
    import redis.asyncio

    twins = {
        redis.ConnectionPool: redis.asyncio.ConnectionPool,
        redis.BlockingConnectionPool: redis.asyncio.BlockingConnectionPool,
    }
    return twins.get(pool_class)


def _async_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """Connection options for redis.asyncio; ``None`` when one has no asyncio twin."""
    import redis
    import redis.asyncio

    options = dict(options)
    options.pop("parser_class", None)  # a sync parser: redis.asyncio picks its own
    if options.get("retry") is not None:
        return None  # a sync retry policy: nothing public says what it would do
    connection_class = options.get("connection_class")
    if connection_class is not None:
        twins = {
            redis.Connection: redis.asyncio.Connection,
            redis.SSLConnection: redis.asyncio.SSLConnection,
            redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
        }
        if connection_class not in twins:
            return None
        options["connection_class"] = twins[connection_class]
    return options


def _plain_redis(pool_class: Any, url: str, options: dict[str, Any]) -> Connect | None:
    import redis.asyncio

    cls = _async_pool_class(pool_class)
    kwargs = _async_options(options)
    if cls is None or kwargs is None:
        return None

    def connect() -> tuple[Any, list[Any]]:
        return redis.asyncio.Redis(connection_pool=cls.from_url(url, **kwargs)), []

    return connect


def _for_django_redis(cache: Any, alias: str) -> Connect | None:
    config: dict[str, Any] = settings.CACHES[alias]
    options: dict[str, Any] = dict(config.get("OPTIONS") or {})
    location = config.get("LOCATION", "")
    servers = location.split(",") if isinstance(location, str) else list(location)
    factory = cache.client.connection_factory  # django-redis's public factory object
    # django-redis's own reading of the connection OPTIONS.
    params: dict[str, Any] = dict(factory.make_connection_params(servers[0]))
    url = params.pop("url")
    params.update(factory.pool_cls_kwargs)
    # django-redis's own factories only: a project's factory may build anything.
    kind = f"{type(factory).__module__}.{type(factory).__qualname__}"
    if kind == "django_redis.pool.ConnectionFactory":
        return _plain_redis(factory.pool_cls, url, params)
    if kind != "django_redis.pool.SentinelConnectionFactory":
        return None
    import redis.sentinel
    from redis.asyncio import Redis
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    if factory.pool_cls is not redis.sentinel.SentinelConnectionPool:
        return None
    kwargs = _async_options(params)
    if kwargs is None:
        return None
    # The primary's pool, as SentinelClient's first server (``is_master=1``) asks.
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query.pop("is_master", None)
    service_url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    sentinels = options.get("SENTINELS")
    sentinel_kwargs = options.get("SENTINEL_KWARGS")

    def connect() -> tuple[Any, list[Any]]:
        manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)
        pool = SentinelConnectionPool.from_url(
            service_url,
            service_name=parts.hostname,
            sentinel_manager=manager,
            is_master=True,
            **kwargs,
        )
        return Redis(connection_pool=pool), list(manager.sentinels)

    return connect


def _for_cluster(alias: str) -> Connect | None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    config: dict[str, Any] = settings.CACHES[alias]
    location = config.get("LOCATION", "")
    if isinstance(location, str):
        location = [s for s in location.replace(";", ",").split(",") if s]
    options = dict(config.get("OPTIONS") or {})
    for name in ("pool_class", "serializer"):  # as RedisClusterCache reads them
        options.pop(name, None)
    kwargs = _async_options(options)
    if kwargs is None:
        return None
    nodes = []
    for url in location:
        parts = urlsplit(url if "://" in url else f"redis://{url}")
        nodes.append((parts.hostname or "127.0.0.1", parts.port or 6379))

    def connect() -> tuple[Any, list[Any]]:
        startup = [ClusterNode(host, port) for host, port in nodes]
        return RedisCluster(startup_nodes=startup, **kwargs), []

    return connect


def _connector(cache: Any, alias: str) -> tuple[Connect | None, bool]:
    """How to build a loop's client for cache ``alias`` (``None``: no asyncio twin), and
    whether it is the lean path (one pool, not Redis Cluster)."""
    from ..cache import RedisClusterCache

    if isinstance(cache, RedisClusterCache):
        return _for_cluster(alias), False
    if type(cache).__module__.startswith("django_redis"):
        return _for_django_redis(cache, alias), True
    url, pool_class, _parser, options = django_pool_settings(alias)
    return _plain_redis(pool_class, url, options), True


def _accepted(connect: Connect) -> bool:
    """Whether the asyncio classes accept the options (building opens no connection)."""
    try:
        client, _others = connect()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.make_connection()
    except (TypeError, ValueError):
        return False
    return True


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
        connect, lean = _connector(cache, alias)
        if isinstance(sync, RedisByteStore) and connect is not None and _accepted(connect):
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
