"""The asyncio Redis store: the sync Redis store's twin on ``redis.asyncio``.

``hardened_sessions.stores.redis_async`` keeps exactly the sync store's data on the
server (keys, scripts, staging keys, tombstones, the per-user sorted set), so the two
are checked against each other here: what one writes, the other reads byte for byte,
and each one's compare-and-set accepts the other's versions and refuses stale ones. On
the real servers of the suite (``tests.support.servers``, ``tests.support.servers_scaleout``), through
django-redis and through Django's own ``RedisCache``, each with the ``KEY_PREFIX`` and
``VERSION`` of its ``session_cache`` variant; nothing is mocked.

The tests are plain functions that run their coroutines with ``asyncio.run`` (the suite
has no asyncio plugin); each ``asyncio.run`` is a new event loop, which gets a pool of
its own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine, Iterator
from contextlib import suppress
from typing import Any, TypeVar

import pytest
import redis
from django.core.cache import caches
from django.test import override_settings

from hardened_sessions.capabilities import Capability
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.record import version_head
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.redis import RedisByteStore
from hardened_sessions.stores.redis_async import (
    AsyncRedisByteStore,
    async_store_for,
    native_async_supported,
)
from hardened_sessions.stores.token import Token
from tests.support.servers import (
    RUN_TOKEN,
    Server,
    ServerSet,
    cache_settings,
    raw_redis,
    sessions_cache,
    variant_cache,
)
from tests.support.servers_scaleout import SENTINEL_SERVICE, RedisClusterHandle, SentinelHandle

T = TypeVar("T")

REDIS_VARIANTS = ["django-redis", "django-rediscache"]
TTL = 300


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def new_key() -> str:
    """A store key: 64 hex digits, as the engines make them."""
    return secrets.token_hex(32)


def record(version: int, payload: str = "x") -> memoryview:
    """Bytes shaped like a signed record of ``version``: the head the compare-and-set
    checks, and a 43-character signature tail unique to this write."""
    body = version_head(version) + f'"p":"{payload}"}}'.encode()
    return memoryview(body + b"." + secrets.token_urlsafe(32)[:43].encode())


def stores(alias: str) -> tuple[RedisByteStore, AsyncRedisByteStore]:
    sync = store_for_cache(alias)
    assert isinstance(sync, RedisByteStore)
    twin = async_store_for(alias)
    assert isinstance(twin, AsyncRedisByteStore)
    return sync, twin


@pytest.fixture(params=REDIS_VARIANTS)
def alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``sessions`` alias on the suite's Redis, emptied before and after."""
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    with variant_cache(request.param, request) as name:
        yield name


async def pool_of(twin: AsyncRedisByteStore) -> Any:
    return (await twin.client()).connection_pool


def full_key(alias: str, store_key: str) -> str:
    return str(caches[alias].make_key("hardened_sessions:" + store_key))


def raw_keys(server: Server, pattern: str) -> list[str]:
    client = raw_redis(server)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=pattern))
    finally:
        client.close()


# --- the data layout, both ways ----------------------------------------------------------


def test_what_the_async_store_writes_the_sync_store_reads(alias: str, redis_server: Server) -> None:
    sync, twin = stores(alias)
    key = new_key()
    first, second, third = record(1), record(2), record(3)

    async def scenario() -> None:
        assert await twin.get(key) is None
        assert await twin.add(key, first, TTL, 1) == Token(1)
        assert await twin.add(key, record(1), TTL, 1) is None  # taken
        assert sync.get(key) == (bytes(first), None)
        # Under the cache's KEY_PREFIX and VERSION, as the sync store names it.
        assert raw_keys(redis_server, full_key(alias, key)) == [full_key(alias, key)]
        assert await twin.cas(key, second, TTL, Token(1), 2, head=version_head(1)) == Token(2)
        assert sync.get(key) == (bytes(second), None)
        assert (
            await twin.cas(key, third, TTL, Token(1), 3, head=version_head(1)) is None
        )  # stale: version 2 is stored
        assert sync.get(key) == (bytes(second), None)
        # The sync store takes it from there.
        assert sync.cas(key, third, TTL, Token(2), 3, head=version_head(2)) == Token(3)
        assert await twin.get(key) == (bytes(third), None)
        # No staging key is left behind by the saves.
        assert raw_keys(redis_server, full_key(alias, key) + ":next:*") == []
        assert await twin.delete(key) is True
        assert await twin.delete(key) is False
        assert sync.get(key) is None
        # The delete's tombstone, as the sync store writes it.
        assert len(raw_keys(redis_server, full_key(alias, key) + ":gone:*")) == 1
        # A late save never recreates a deleted session.
        assert await twin.cas(key, record(4), TTL, Token(3), 4, head=version_head(3)) is None
        assert sync.get(key) is None

    run(scenario())


def test_what_the_sync_store_writes_the_async_store_reads(alias: str) -> None:
    sync, twin = stores(alias)
    key = new_key()
    first, second = record(7), record(8)

    async def scenario() -> None:
        assert sync.add(key, first, TTL, 7) == Token(7)
        assert await twin.get(key) == (bytes(first), None)
        assert await twin.cas(key, second, TTL, Token(7), 8, head=version_head(7)) == Token(8)
        assert sync.get(key) == (bytes(second), None)
        assert (
            sync.cas(key, record(9), TTL, Token(7), 9, head=version_head(7)) is None
        )  # stale for the sync store too
        assert sync.delete(key) is True
        assert await twin.delete(key) is False
        assert await twin.get(key) is None
        assert await twin.cas(key, record(9), TTL, Token(8), 9, head=version_head(8)) is None

    run(scenario())


def test_the_record_ttl_is_the_one_asked_for(alias: str, redis_server: Server) -> None:
    _, twin = stores(alias)
    key = new_key()

    async def scenario() -> None:
        await twin.add(key, record(1), 100, 1)
        await twin.cas(key, record(2), 200, Token(1), 2, head=version_head(1))

    run(scenario())
    client = raw_redis(redis_server)
    try:
        assert 190 <= client.ttl(full_key(alias, key)) <= 200
    finally:
        client.close()


def test_a_create_whose_record_is_its_own_counts_as_created(alias: str) -> None:
    """A create that finds the key taken by its own record (the reply of a ``SET NX``
    that ran was lost, and the command re-sent) is a success, as in the sync store."""
    sync, twin = stores(alias)
    key = new_key()
    mine = record(1)

    async def scenario() -> None:
        assert sync.add(key, mine, TTL, 1) == Token(1)
        assert await twin.add(key, mine, TTL, 1) == Token(1)  # the same bytes: its own signature
        assert await twin.add(key, record(1), TTL, 1) is None

    run(scenario())


# --- the per-user index -----------------------------------------------------------------


def test_the_per_user_index_is_shared(alias: str) -> None:
    sync, twin = stores(alias)
    assert Capability.USER_INDEX in twin.capabilities
    user = f"u{secrets.token_hex(4)}"
    a, b, c = new_key(), new_key(), new_key()

    async def scenario() -> None:
        assert await twin.add(a, record(1, "a"), TTL, 1, user) == Token(1)
        assert sync.add(b, record(1, "b"), TTL, 1, user) == Token(1)
        assert await twin.add(c, record(1, "c"), TTL, 1, user) == Token(1)
        assert await twin.cas(
            c, record(2, "c"), TTL, Token(1), 2, user, head=version_head(1)
        ) == Token(2)
        assert sorted(sync.user_members(user)) == sorted([a, b, c])
        assert sorted(await twin.user_members(user)) == sorted([a, b, c])
        found = {key: value async for key, value in twin.user_records(user)}
        assert found == dict(sync.user_records(user))
        assert set(found) == {a, b, c}
        # Revocation: delete in one batch, then prune the index.
        assert await twin.delete_many([a, b]) == [True, True]
        assert await twin.delete_many([a]) == [False]
        await twin.forget_members(user, [a, b])
        assert sync.user_members(user) == [c]
        assert await twin.user_members(user) == [c]

    run(scenario())


def test_the_previous_releases_index_is_read_and_moved(alias: str, redis_server: Server) -> None:
    """The plain set of the previous release is read too, and its live members move
    into the sorted set (the sync store's migration script)."""
    sync, twin = stores(alias)
    user = f"u{secrets.token_hex(4)}"
    live, gone = new_key(), new_key()
    assert sync.add(live, record(1), TTL, 1) == Token(1)
    legacy = str(caches[alias].make_key("hardened_sessions:user:" + user))
    client = raw_redis(redis_server)
    try:
        client.sadd(legacy, live, gone)
        assert sorted(run(twin.user_members(user))) == sorted([live, gone])
        assert not client.exists(legacy)
    finally:
        client.close()
    assert sync.user_members(user) == [live]


# --- configuration ----------------------------------------------------------------------


def test_replication_wait_applies_to_writes_only(alias: str) -> None:
    """``REDIS_WAIT_REPLICAS``: a write that no replica confirms fails closed (the suite's
    Redis has none), on the same connection as the write; reads never wait."""
    sync, twin = stores(alias)
    key = new_key()
    assert sync.add(key, record(1), TTL, 1) == Token(1)

    async def scenario() -> None:
        with override_settings(
            HARDENED_SESSIONS={"REDIS_WAIT_REPLICAS": 1, "REDIS_WAIT_TIMEOUT_MS": 50}
        ):
            assert await twin.get(key) is not None
            with pytest.raises(SessionStoreUnavailable):
                await twin.add(new_key(), record(1), TTL, 1)
            with pytest.raises(SessionStoreUnavailable):
                await twin.cas(key, record(2), TTL, Token(1), 2, head=version_head(1))
            with pytest.raises(SessionStoreUnavailable):
                await twin.delete(key)
        with override_settings(HARDENED_SESSIONS={"REDIS_WAIT_REPLICAS": 0}):
            # The connections went back clean: every command gets its own reply.
            for _ in range(3):
                assert await twin.get(key) is None
                assert await twin.add(key, record(5), TTL, 5) == Token(5)
                assert await twin.delete(key) is True

    run(scenario())


def _named(variant: str, server: Server, name: str, **pool: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"client_name": name, **pool}
    if variant == "django-redis":
        options = {"CONNECTION_POOL_KWARGS": options}
    return cache_settings(variant, redis=server, options=options)


def _connections(server: Server, name: str) -> int:
    admin = raw_redis(server)
    try:
        return sum(1 for c in admin.client_list() if c.get("name") == name)
    finally:
        admin.close()


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_one_pool_per_event_loop_closed_with_its_loop(variant: str, redis_server: Server) -> None:
    """redis.asyncio connections belong to the loop that opened them: each loop gets a
    pool of its own, and the pool is closed when ``asyncio.run`` ends its loop."""
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    name = f"hs-async-{RUN_TOKEN}-{variant}"
    with sessions_cache(_named(variant, redis_server, name)) as alias:
        twin = async_store_for(alias)
        assert twin is not None
        assert async_store_for(alias) is twin

        async def use() -> tuple[Any, Any]:
            await twin.get(new_key())
            first = await twin.client()
            await asyncio.gather(*(twin.get(new_key()) for _ in range(5)))
            assert await twin.client() is first
            assert _connections(redis_server, name) >= 1
            return first, asyncio.get_running_loop()

        one, loop_one = run(use())
        assert _connections(redis_server, name) == 0
        two, loop_two = run(use())
        assert one is not two and loop_one is not loop_two
        assert _connections(redis_server, name) == 0

        async def closed_early() -> None:
            first = await twin.client()
            await twin.get(new_key())
            await twin.aclose()
            assert _connections(redis_server, name) == 0
            await twin.get(new_key())  # a new client for the rest of the loop
            assert await twin.client() is not first

        run(closed_early())
        assert _connections(redis_server, name) == 0


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_event_loops_in_several_threads_at_once(
    variant: str, request: pytest.FixtureRequest
) -> None:
    """Threads that each run an event loop (as asgiref's ``async_to_sync`` does) get a
    client each, at the same time, and every reply reaches its own caller."""
    import threading

    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    with variant_cache(variant, request) as alias:
        sync, twin = stores(alias)
        errors: list[BaseException] = []
        clients: list[Any] = []

        async def work(n: int) -> None:
            clients.append(await twin.client())
            for i in range(20):
                key, value = new_key(), record(1, f"{n}-{i}")
                assert await twin.add(key, value, TTL, 1) == Token(1)
                assert await twin.get(key) == (bytes(value), None)
                assert sync.get(key) == (bytes(value), None)
                assert await twin.delete(key) is True

        def thread(n: int) -> None:
            try:
                run(work(n))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=thread, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:2]
        assert len({id(c) for c in clients}) == 4


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_max_connections_bounds_the_async_pool(variant: str, redis_server: Server) -> None:
    """The async pool's ``max_connections`` is the cache's: with 2, fifty concurrent
    loads never hold more than two connections, and each waits for a free one (a
    plain pool would fail the others at once: a burst of 503s under ASGI)."""
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    name = f"hs-async-max-{RUN_TOKEN}-{variant}"
    with sessions_cache(_named(variant, redis_server, name, max_connections=2)) as alias:
        twin = async_store_for(alias)
        assert twin is not None

        async def load() -> str:
            try:
                await twin.get(new_key())
            except SessionStoreUnavailable:
                return "503"
            return "ok"

        async def scenario() -> list[str]:
            pool = (await twin.client()).connection_pool
            assert pool.max_connections == 2
            outcomes = await asyncio.gather(*(load() for _ in range(50)))
            assert _connections(redis_server, name) <= 2
            return list(outcomes)

        outcomes = run(scenario())
        assert outcomes == ["ok"] * 50


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_a_command_that_finds_no_free_connection_in_time_fails_closed(
    variant: str, redis_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    from hardened_sessions.stores import redis_async_clients

    monkeypatch.setattr(redis_async_clients, "POOL_TIMEOUT", 0.2)
    name = f"hs-async-wait-{RUN_TOKEN}-{variant}"
    with sessions_cache(_named(variant, redis_server, name, max_connections=1)) as alias:
        twin = async_store_for(alias)
        assert twin is not None

        async def scenario() -> None:
            pool = (await twin.client()).connection_pool
            held = await pool.get_connection()  # the one connection, taken elsewhere
            try:
                with pytest.raises(SessionStoreUnavailable):
                    await twin.get(new_key())
            finally:
                await pool.release(held)
            assert await twin.get(new_key()) is None

        run(scenario())


def test_the_async_pool_takes_the_caches_connection_options(redis_server: Server) -> None:
    """URL (password, db), timeouts and pool options of both backends reach the asyncio
    pool as they reach the sync one."""
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    url = f"redis://:pw@{redis_server.host}:{redis_server.port}/3"
    configs = {
        "django-redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {
                "SOCKET_TIMEOUT": 1.5,
                "SOCKET_CONNECT_TIMEOUT": 2,
                "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
                "CONNECTION_POOL_KWARGS": {"max_connections": 7, "timeout": 3},
            },
        },
        "django-rediscache": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": [url, f"redis://{redis_server.host}:{redis_server.port}/4"],
            "OPTIONS": {
                "socket_timeout": 1.5,
                "socket_connect_timeout": 2,
                "pool_class": "redis.BlockingConnectionPool",
                "max_connections": 7,
                "timeout": 3,
            },
        },
    }
    import redis.asyncio

    for config in configs.values():
        with sessions_cache(config) as alias:
            sync, twin = stores(alias)
            mine = sync._client().connection_pool

            theirs = run(pool_of(twin))
            assert isinstance(theirs, redis.asyncio.BlockingConnectionPool)
            assert theirs.max_connections == mine.max_connections == 7
            assert theirs.timeout == 3
            for option in ("host", "port", "db", "password", "socket_timeout"):
                assert theirs.connection_kwargs[option] == mine.connection_kwargs[option]
            assert theirs.connection_kwargs["db"] == 3
            assert theirs.connection_kwargs["socket_connect_timeout"] == 2
    # TLS: a rediss:// URL and ssl_* options (no connection is opened here).
    tls = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"rediss://{redis_server.host}:{redis_server.port}/1",
        "OPTIONS": {"CONNECTION_POOL_KWARGS": {"ssl_cert_reqs": "none"}},
    }
    with sessions_cache(tls) as alias:
        twin = async_store_for(alias)
        assert twin is not None
        theirs = run(pool_of(twin))
        assert theirs.connection_class is redis.asyncio.SSLConnection
        assert theirs.connection_kwargs["ssl_cert_reqs"] == "none"


class OwnPool(redis.ConnectionPool):
    """A pool class of the project's own: nothing says what its asyncio twin would be."""


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("django-rediscache", {"retry": "sync"}),
        ("django-redis", {"CONNECTION_POOL_KWARGS": {"retry": "sync"}}),
        ("django-rediscache", {"pool_class": f"{__name__}.OwnPool"}),
        ("django-redis", {"CONNECTION_POOL_CLASS": f"{__name__}.OwnPool"}),
        ("django-rediscache", {"connection_class": OwnPool}),
    ],
    ids=["retry", "dr-retry", "pool-class", "dr-pool-class", "connection-class"],
)
def test_configurations_without_an_asyncio_twin_keep_the_threaded_path(
    variant: str, options: dict[str, Any], redis_server: Server
) -> None:
    """A ``retry`` object (a sync policy redis.asyncio can't run), a pool or connection
    class of the project's own: no native store for that cache (the engine keeps running
    the sync store in a thread), while the sync store still serves it."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return Retry(NoBackoff(), 2) if value == "sync" else value

    config = cache_settings(variant, redis=redis_server, options=resolve(options))
    with sessions_cache(config) as alias:
        assert async_store_for(alias) is None
        if "connection_class" not in options:
            assert store_for_cache(alias).get(new_key()) is None


# --- outages ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_a_stopped_server_is_session_store_unavailable(variant: str, server_set: ServerSet) -> None:
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    server = server_set.redis()  # one of its own: stopped for good below
    config = cache_settings(variant, redis=server)
    with sessions_cache(config) as alias:
        twin = async_store_for(alias)
        assert twin is not None
        key = new_key()

        async def scenario() -> None:
            assert await twin.add(key, record(1), TTL, 1) == Token(1)  # a pooled connection
            server.stop()
            calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
                lambda: twin.get(key),
                lambda: twin.add(new_key(), record(1), TTL, 1),
                lambda: twin.cas(key, record(2), TTL, Token(1), 2, head=version_head(1)),
                lambda: twin.delete(key),
                lambda: twin.user_members("1"),
                lambda: twin.forget_members("1", [key]),
            ]
            for call in calls:
                with pytest.raises(SessionStoreUnavailable):
                    await call()

        try:
            run(scenario())
        finally:
            server.shutdown()


# --- Sentinel and Cluster ---------------------------------------------------------------


def _round_trip(alias: str) -> None:
    sync, twin = stores(alias)
    key, user = new_key(), "42"

    async def scenario() -> None:
        assert await twin.add(key, record(1), TTL, 1, user) == Token(1)
        assert sync.get(key) is not None
        assert await twin.cas(
            key, record(2), TTL, Token(1), 2, user, head=version_head(1)
        ) == Token(2)
        assert await twin.cas(key, record(3), TTL, Token(1), 3, user, head=version_head(1)) is None
        assert sync.cas(key, record(3), TTL, Token(2), 3, user, head=version_head(2)) == Token(3)
        assert await twin.get(key) == sync.get(key)
        assert await twin.delete(key) is True
        assert sync.get(key) is None
        assert await twin.delete(key) is False

    run(scenario())


def test_through_sentinel(redis_sentinel: SentinelHandle) -> None:
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    from redis.asyncio.sentinel import SentinelConnectionPool

    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://{SENTINEL_SERVICE}/2",
        "KEY_PREFIX": f"hs{RUN_TOKEN}-as",
        "VERSION": 8,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
            "SENTINELS": redis_sentinel.sentinels,
            "SOCKET_TIMEOUT": 5,
        },
    }
    with sessions_cache(config) as alias:
        _round_trip(alias)
        twin = async_store_for(alias)
        assert twin is not None

        assert isinstance(run(pool_of(twin)), SentinelConnectionPool)
    primary = redis.Redis(host=redis_sentinel.primary.host, port=redis_sentinel.primary.port, db=2)
    try:
        primary.flushdb()
    finally:
        primary.close()


def test_on_redis_cluster(redis_cluster: RedisClusterHandle) -> None:
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    config = {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": redis_cluster.urls,
        "KEY_PREFIX": f"hs{RUN_TOKEN}-ac",
        "VERSION": 9,
        "OPTIONS": {"socket_timeout": 5},
    }
    redis_cluster.flush()
    try:
        with sessions_cache(config) as alias:
            try:
                sync, twin = stores(alias)
                assert Capability.USER_INDEX not in twin.capabilities
                for _ in range(6):  # keys in several slots
                    _round_trip(alias)
                with (
                    override_settings(
                        HARDENED_SESSIONS={"REDIS_WAIT_REPLICAS": 1, "REDIS_WAIT_TIMEOUT_MS": 50}
                    ),
                    pytest.raises(SessionStoreUnavailable),
                ):
                    run(twin.add(new_key(), record(1), TTL, 1))
            finally:
                caches[alias].close_client()
    finally:
        redis_cluster.flush()


# --- scripts, key functions, cancellation ---------------------------------------------


def test_scripts_flushed_from_the_server_are_loaded_again(alias: str, redis_server: Server) -> None:
    _, twin = stores(alias)
    key, user = new_key(), "7"

    async def scenario() -> None:
        flush = raw_redis(redis_server)
        try:
            flush.script_flush()
            assert await twin.add(key, record(1), TTL, 1, user) == Token(1)
            flush.script_flush()
            assert await twin.cas(
                key, record(2), TTL, Token(1), 2, user, head=version_head(1)
            ) == Token(2)
            flush.script_flush()
            assert await twin.delete_many([key, new_key()]) == [True, False]
        finally:
            flush.close()

    run(scenario())


def key_function(key: str, key_prefix: str, version: int) -> str:
    """A ``KEY_FUNCTION`` unlike Django's default."""
    return f"v{version}/{key_prefix}/{key[::-1]}"


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_the_caches_key_function_names_the_keys(variant: str, redis_server: Server) -> None:
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    config = cache_settings(variant, redis=redis_server)
    config["KEY_FUNCTION"] = f"{__name__}.key_function"
    with sessions_cache(config) as alias:
        sync, twin = stores(alias)
        key, user = new_key(), "9"
        name = key_function("hardened_sessions:" + key, config["KEY_PREFIX"], config["VERSION"])

        async def scenario() -> None:
            assert await twin.add(key, record(1), TTL, 1, user) == Token(1)
            assert raw_keys(redis_server, name) == [name]
            assert sync.get(key) is not None
            assert await twin.user_members(user) == [key]
            assert await twin.delete(key) is True
            assert raw_keys(redis_server, name) == []

        run(scenario())


def test_cancelled_operations_never_hand_their_replies_to_the_next_one(alias: str) -> None:
    """A task cancelled while its commands are on the wire (an ASGI request whose client
    went away) must not leave their replies on a pooled connection for the next
    command: every later read gets its own record."""
    sync, twin = stores(alias)
    records = {new_key(): record(1, secrets.token_hex(2000)) for _ in range(30)}
    for key, value in records.items():
        assert sync.add(key, value, TTL, 1) == Token(1)

    async def scenario() -> None:
        for delay in (0, 0, 0.0005, 0.001, 0.002):
            tasks = [asyncio.ensure_future(twin.get(key)) for key in records]
            await asyncio.sleep(delay)
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in range(2):
                found = await asyncio.gather(*(twin.get(key) for key in records))
                assert [value for value, _token in found] == [bytes(v) for v in records.values()]

    run(scenario())


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_commands_resent_after_a_lost_reply_answer_as_the_sync_stores_do(
    variant: str, redis_server: Server
) -> None:
    """With ``retry_on_timeout``, redis.asyncio re-sends commands whose reply was lost
    (a relay lets them through and drops Redis's answer). As in the sync store
    (``tests/test_threat_redis_retry.py``): a re-sent create finds its own record and
    counts as created, a re-sent save sees the version it wrote and answers "changed"
    (the engine then merges onto its own record), a re-sent delete finds its tombstone
    and answers "deleted"."""
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    from tests.support.faults import FaultProxy

    proxy = FaultProxy(redis_server)
    if variant == "django-redis":
        options: dict[str, Any] = {
            "SOCKET_TIMEOUT": 0.3,
            "CONNECTION_POOL_KWARGS": {"retry_on_timeout": True},
        }
    else:
        options = {"socket_timeout": 0.3, "retry_on_timeout": True}
    try:
        with sessions_cache(
            cache_settings(variant, redis=proxy.as_server(), options=options)
        ) as alias:
            sync, twin = stores(alias)
            user = f"u{secrets.token_hex(4)}"

            async def scenario() -> None:
                warm = new_key()  # every script loaded: a lost reply is a command's that ran
                assert await twin.add(warm, record(1), TTL, 1, user) == Token(1)
                assert await twin.cas(
                    warm, record(2), TTL, Token(1), 2, user, head=version_head(1)
                ) == Token(2)
                assert await twin.delete(warm) is True
                key = new_key()
                proxy.lose_reply_to(b"lost-create")
                assert await twin.add(key, record(1, "lost-create"), TTL, 1, user) == Token(1)
                assert proxy.lost == 1
                saved = record(2, "lost-save")
                proxy.lose_reply_to(b"lost-save")
                assert (
                    await twin.cas(key, saved, TTL, Token(1), 2, user, head=version_head(1)) is None
                )
                assert proxy.lost == 2
                assert sync.get(key) == (bytes(saved), None)
                proxy.lose_reply_to(b":gone:")
                assert await twin.delete(key) is True
                assert proxy.lost == 3
                assert sync.get(key) is None
                # Members may outlive their records (readers check each one).
                assert [v async for _k, v in twin.user_records(user)] == [None] * len(
                    await twin.user_members(user)
                )

            run(scenario())
    finally:
        proxy.close()


@pytest.mark.parametrize("variant", REDIS_VARIANTS)
def test_one_round_trip_per_operation(variant: str, redis_server: Server) -> None:
    """A load, a create, a save and a delete each send their commands in one write (and
    ``WAIT`` in that same write), as the sync store does; a relay counts the writes."""
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    from tests.support.faults import FaultProxy

    proxy = FaultProxy(redis_server)
    try:
        with sessions_cache(cache_settings(variant, redis=proxy.as_server())) as alias:
            _, twin = stores(alias)
            user = f"u{secrets.token_hex(4)}"

            async def writes(operation: Coroutine[Any, Any, Any]) -> int:
                before = proxy.writes
                with suppress(SessionStoreUnavailable):  # WAIT below: no replica confirms
                    await operation
                await asyncio.sleep(0.05)  # the relay counts in a thread of its own
                return proxy.writes - before

            async def scenario() -> None:
                warm = new_key()  # a connection in the pool, every script loaded
                await twin.add(warm, record(1), TTL, 1, user)
                await twin.cas(warm, record(2), TTL, Token(1), 2, user, head=version_head(1))
                await twin.delete(warm)
                key = new_key()
                assert await writes(twin.add(key, record(1), TTL, 1, user)) == 1
                assert await writes(twin.get(key)) == 1
                assert (
                    await writes(
                        twin.cas(key, record(2), TTL, Token(1), 2, user, head=version_head(1))
                    )
                    == 1
                )
                saved = record(3)
                with override_settings(
                    HARDENED_SESSIONS={"REDIS_WAIT_REPLICAS": 1, "REDIS_WAIT_TIMEOUT_MS": 20}
                ):
                    assert (
                        await writes(
                            twin.cas(key, saved, TTL, Token(2), 3, user, head=version_head(2))
                        )
                        == 1
                    )
                    assert await twin.get(key) == (bytes(saved), None)  # the save did run
                assert await writes(twin.delete(key)) == 1

            run(scenario())
    finally:
        proxy.close()


def test_the_per_user_cap_is_enforced_as_in_the_sync_store(alias: str) -> None:
    """``MAX_SESSIONS_PER_USER`` runs in the login's own script: ``end_oldest`` ends the
    user's other sessions beyond the cap (each with its tombstone), ``refuse`` stores
    nothing; a login through a save (a session that gains its user) alike."""
    from hardened_sessions.cap import UserCap
    from hardened_sessions.exceptions import SessionLimitReached

    sync, twin = stores(alias)
    user = f"u{secrets.token_hex(4)}"
    first, second, third, fourth = (new_key() for _ in range(4))

    async def scenario() -> None:
        assert sync.add(first, record(1), TTL, 1, user) == Token(1)
        assert await twin.add(second, record(1), TTL, 1, user) == Token(1)
        cap = UserCap(user=user, limit=2)
        assert await twin.add(third, record(1), TTL, 1, user, cap=cap) == Token(1)
        assert len(cap.ended) == 1 and cap.ended[0] in (first, second)
        assert sync.get(cap.ended[0]) is None
        assert len(sync.user_members(user)) == 2
        refused = UserCap(user=user, limit=2, refuse=True)
        with pytest.raises(SessionLimitReached):
            await twin.add(fourth, record(1), TTL, 1, user, cap=refused)
        assert sync.get(fourth) is None
        # A save that gives an anonymous session its user (a login without rotation).
        assert await twin.add(fourth, record(1), TTL, 1) == Token(1)
        cap = UserCap(user=user, limit=1)
        assert await twin.cas(
            fourth, record(2), TTL, Token(1), 2, user, head=version_head(1), cap=cap
        ) == Token(2)
        assert len(cap.ended) == 2
        assert await twin.user_members(user) == [fourth]

    run(scenario())


@pytest.mark.parametrize(
    ("version", "pool", "limit"),
    [
        ((5, 0, 1), "ConnectionPool", None),  # its blocking pool can hang: the plain one
        ((7, 0, 0), "BlockingConnectionPool", 2**31),  # as unbounded as its plain pool
        ((8, 1, 0), "BlockingConnectionPool", 100),  # redis-py 8's plain-pool default
    ],
)
def test_the_async_pool_blocks_where_redis_py_allows_it(
    redis_server: Server,
    monkeypatch: pytest.MonkeyPatch,
    version: tuple[int, ...],
    pool: str,
    limit: int | None,
) -> None:
    if not native_async_supported():
        pytest.skip("this redis-py has no asyncio client the store accepts")
    from hardened_sessions.stores import redis_async

    monkeypatch.setattr(redis_async, "redis_version", lambda: version)
    name = f"hs-async-version-{RUN_TOKEN}"
    with sessions_cache(_named("django-rediscache", redis_server, name)) as alias:
        twin = async_store_for(alias)
        assert twin is not None
        theirs = run(pool_of(twin))
        assert type(theirs) is getattr(redis.asyncio, pool)
        if limit is not None:  # else the installed redis-py's own plain-pool default
            assert theirs.max_connections == limit
