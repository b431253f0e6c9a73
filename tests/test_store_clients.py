"""The raw clients the cache engines build: TCP_NODELAY on every socket, and caches
that can't be served without their (pickling) serializer refused at start-up.

pymemcache defaults to ``no_delay=False``, and then a get after a set stalls about
40 ms on loopback (Nagle's algorithm meeting delayed ACKs). The engine's own
memcached client must set TCP_NODELAY whatever the cache's OPTIONS say.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.redis_send import checkout  # redis-py 4 and 8 alike
from tests.support.faults import FaultProxy
from tests.support.servers import Server, cache_settings, sessions_cache

CACHE_ENGINE = "hardened_sessions.backends.cache"


def nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_memcached_sockets_have_tcp_nodelay_even_when_options_leave_it_off(
    memcached_servers: list[Server],
) -> None:
    config = cache_settings("pymemcache", memcached=memcached_servers)
    config["OPTIONS"] = {"no_delay": False}  # what pymemcache defaults to anyway
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        for n in range(30):  # enough sessions to reach every server of the pool
            session = SessionStore()
            session["n"] = n
            session.save()
            assert SessionStore(session.session_key)["n"] == n
        store: Any = store_for_cache(alias)
        sockets = [client.sock for client in store.clients() if client.sock]
        assert len(sockets) == len(memcached_servers)
        assert all(nodelay(sock) for sock in sockets)


@pytest.mark.parametrize("variant", ["django-redis", "django-rediscache"])
def test_redis_sockets_have_tcp_nodelay(variant: str, redis_server: Server) -> None:
    with sessions_cache(cache_settings(variant, redis=redis_server), SESSION_ENGINE=CACHE_ENGINE):
        session = SessionStore()
        session["k"] = "v"
        session.save()
        assert SessionStore(session.session_key)["k"] == "v"
        store: Any = store_for_cache("sessions")
        # The connection the engine just used went back to its client's pool.
        pool = store._client().connection_pool
        conn = checkout(pool)
        try:
            assert conn._sock is not None  # the socket of redis-py's connection (test only)
            assert nodelay(conn._sock)
        finally:
            pool.release(conn)


def _pool_options(variant: str, **options: Any) -> dict[str, Any]:
    if variant == "django-redis":
        return {"CONNECTION_POOL_KWARGS": options}
    return options


@pytest.mark.parametrize("variant", ["django-redis", "django-rediscache"])
def test_the_engine_takes_every_redis_connection_from_the_caches_pool(
    variant: str, redis_server: Server
) -> None:
    """``max_connections`` bounds the engine's connections: long-lived worker threads share
    the pool's connections (and wait or answer 503 when it is exhausted), instead of
    keeping a connection each outside it."""
    import threading

    import redis

    name = f"hs-pool-{variant}"
    options = _pool_options(variant, max_connections=2, client_name=name)
    config = cache_settings(variant, redis=redis_server, options=options)
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    seen: list[int] = []
    ok: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == name)

    def work() -> None:
        for n in range(40):
            try:
                session = SessionStore()
                session["n"] = n
                session.save()
                assert SessionStore(session.session_key)["n"] == n
                session.delete()
                ok.append(n)
            except SessionStoreUnavailable:
                pass  # the pool is exhausted: a 503, never another connection
            except BaseException as exc:
                errors.append(exc)

    def watch() -> None:
        while not stop.is_set():
            seen.append(connections())
            stop.wait(0.005)

    try:
        with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE):
            watcher = threading.Thread(target=watch)
            watcher.start()
            workers = [threading.Thread(target=work) for _ in range(8)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=60)
            stop.set()
            watcher.join()
            seen.append(connections())
    finally:
        admin.close()
    assert not errors, errors[:3]
    assert ok, "no operation went through"
    assert max(seen) <= 2, f"{max(seen)} connections with max_connections=2"


try:
    from redis.connection import DefaultParser as _DefaultParser
except ImportError:  # pragma: no cover
    _DefaultParser = object  # type: ignore[assignment,misc]


class ChosenParser(_DefaultParser):  # type: ignore[misc,valid-type]
    """A ``parser_class`` option given by dotted path."""


# Options Django's RedisCache reads itself or hands to its pool, in the shapes its docs
# show (dotted paths and classes), on the URLs of LOCATION.
_DJANGO_OPTIONS = [
    {},
    {"socket_timeout": 1.5, "socket_connect_timeout": 2, "health_check_interval": 10},
    {"pool_class": "redis.BlockingConnectionPool", "max_connections": 7, "timeout": 3},
    {"parser_class": "tests.test_store_clients.ChosenParser", "retry_on_timeout": True},
    {"serializer": "django.core.cache.backends.redis.RedisSerializer", "client_name": "x"},
]


def _plain(kwargs: dict[str, Any], ignored: set[str]) -> dict[str, Any]:
    """Connection settings as comparable values: data as is, helper objects that redis-py
    makes per pool (retry policy, notification handlers) by their type."""
    plain = (str, bytes, int, float, bool, type, type(None))
    return {
        k: v if isinstance(v, plain) else type(v) for k, v in kwargs.items() if k not in ignored
    }


@pytest.mark.parametrize("options", _DJANGO_OPTIONS, ids=range(len(_DJANGO_OPTIONS)))
@pytest.mark.parametrize("location", ["one", "two-urls", "list"])
def test_djangos_rediscache_pool_is_built_as_django_builds_it(
    options: dict[str, Any], location: str, redis_server: Server
) -> None:
    """Django's RedisCache has no public accessor for its client; the engine builds its
    own pool from ``settings.CACHES`` (stores/redis_clients.py ``django_primary_client``). This
    compares that pool with the primary pool Django builds from the same settings,
    through Django's private attributes (here only, in a test): when a Django release
    reads OPTIONS or LOCATION differently, this fails."""
    from django.core.cache import caches

    url = f"redis://:pw@{redis_server.host}:{redis_server.port}/3"
    other = f"redis://{redis_server.host}:{redis_server.port}/4"
    config: dict[str, Any] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": {"one": url, "two-urls": f"{url},{other}", "list": [url, other]}[location],
        "OPTIONS": dict(options),
    }
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        mine = store_for_cache(alias)._client().connection_pool  # type: ignore[attr-defined]
        django = caches[alias]._cache.get_client(None, write=True).connection_pool  # type: ignore[attr-defined]
        assert type(mine) is type(django)
        assert mine.connection_class is django.connection_class
        assert mine.max_connections == django.max_connections
        # Django 6.1 adds a client name (driver_info / lib_name): identification only.
        ignored = {"driver_info", "lib_name"}
        assert _plain(mine.connection_kwargs, ignored) == _plain(django.connection_kwargs, ignored)
        assert mine.connection_kwargs["db"] == 3
        assert mine.connection_kwargs["password"] == "pw"  # noqa: S105
        if "timeout" in options:
            assert mine.timeout == django.timeout == options["timeout"]


def _e010(**settings: Any) -> list[Any]:
    with override_settings(**settings):
        return [m for m in run_checks() if m.id == "hardened_sessions.E010"]


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.cache.backends.filebased.FileBasedCache",
        "django.core.cache.backends.dummy.DummyCache",
        "django.core.cache.backends.db.DatabaseCache",
    ],
)
@pytest.mark.parametrize("engine", [CACHE_ENGINE, "hardened_sessions.backends.cached_db"])
def test_a_cache_that_would_unpickle_is_a_check_error(backend: str, engine: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sessions": {"BACKEND": backend, "LOCATION": str(tmp_path) if "file" in backend else "t"},
    }
    errors = _e010(CACHES=caches, SESSION_CACHE_ALIAS="sessions", SESSION_ENGINE=engine)
    assert len(errors) == 1
    assert "not supported" in errors[0].msg


def test_a_missing_session_cache_alias_is_a_check_error() -> None:
    errors = _e010(SESSION_CACHE_ALIAS="nowhere", SESSION_ENGINE=CACHE_ENGINE)
    assert len(errors) == 1
    assert "nowhere" in errors[0].msg


def test_served_caches_pass_the_check() -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert _e010(CACHES=caches, SESSION_ENGINE=CACHE_ENGINE) == []
    assert _e010(SESSION_ENGINE="hardened_sessions.backends.db") == []


def test_django_redis_shardclient_is_refused_naming_the_cluster_backends_path() -> None:
    """django-redis's ShardClient can't reach a shard's primary: the store refuses it and
    names the Redis Cluster backend by its current path, not the deprecated one."""
    from hardened_sessions.stores import UnsupportedCache

    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"],  # never connected
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
    }
    with sessions_cache(config), pytest.raises(UnsupportedCache) as refused:
        store_for_cache("sessions")
    assert "hardened_sessions.redis_cluster.RedisClusterCache" in str(refused.value)
    assert "hardened_sessions.cache." not in str(refused.value)


def test_rendezvous_placement_spreads_keys_and_moves_only_a_lost_servers_keys() -> None:
    from hardened_sessions.stores.memcached import RendezvousNodes

    nodes = RendezvousNodes()
    assert nodes.get_node("k") is None
    nodes.add_node("a:1")
    assert nodes.get_node("k") == "a:1"  # one server: no hashing needed
    for node in ("b:2", "c:3", "b:2"):
        nodes.add_node(node)
    assert nodes.nodes == ["a:1", "b:2", "c:3"]
    keys = [f"hardened_sessions:{n:064x}" for n in range(3000)]
    before = {key: nodes.get_node(key) for key in keys}
    counts = {node: list(before.values()).count(node) for node in nodes.nodes}
    assert all(800 < count < 1200 for count in counts.values()), counts
    nodes.remove_node("b:2")
    after = {key: nodes.get_node(key) for key in keys}
    moved = {key for key in keys if after[key] != before[key]}
    assert moved == {key for key in keys if before[key] == "b:2"}
    with pytest.raises(ValueError):
        nodes.remove_node("b:2")


@pytest.mark.parametrize("pooled", [False, True], ids=["per-thread", "pooled"])
def test_memcached_clients_are_per_thread_unless_pooled(
    memcached_server: Server, pooled: bool
) -> None:
    import threading

    config = cache_settings("pymemcache", memcached=[memcached_server])
    if pooled:
        config["OPTIONS"]["use_pooling"] = True
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        store: Any = store_for_cache(alias)
        mine = store.clients()
        assert store.clients() is mine
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(store.clients()))
        thread.start()
        thread.join()
        assert (seen[0] is mine) is pooled


def _hold_the_pool(load: Any, hole: FaultProxy) -> tuple[Any, list[BaseException]]:
    """A thread whose command hangs on ``hole``, holding the only pooled client."""
    import threading

    outcome: list[BaseException] = []

    def hold() -> None:
        try:
            load()
        except BaseException as exc:
            outcome.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert hole.received.wait(10), "the first command never reached the server"
    return holder, outcome


def test_an_exhausted_memcached_pool_answers_503_not_500(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``use_pooling`` and ``max_pool_size``, a thread that finds every pooled client
    busy waits for one (``POOL_WAIT``), then fails closed with
    ``SessionStoreUnavailable`` (503), never pymemcache's ``RuntimeError`` (500)."""
    from hardened_sessions.stores import memcached

    monkeypatch.setattr(memcached, "POOL_WAIT", 0.2)
    hole = FaultProxy(None)  # accepts and reads, never answers (a hung memcached)
    config = {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": hole.address,
        "OPTIONS": {"use_pooling": True, "max_pool_size": 1, "timeout": 30},
    }
    try:
        with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE):
            key = "a" * 32
            holder, outcome = _hold_the_pool(lambda: SessionStore(key).load(), hole)
            with pytest.raises(SessionStoreUnavailable, match="max_pool_size"):
                SessionStore(key).load()
            hole.close()  # the held command fails now: a 503 as well
            holder.join(10)
            assert [type(exc) for exc in outcome] == [SessionStoreUnavailable]
    finally:
        hole.close()


def test_pymemcaches_pool_exhaustion_is_a_store_failure() -> None:
    """pymemcache's ``PooledClient`` raises ``RuntimeError("Too many objects ...")`` when
    its pool is exhausted (pymemcache 4.0): the store answers ``SessionStoreUnavailable``
    for it, whoever else took the pool's clients. If a pymemcache release raises another
    exception there, or waits, this fails."""
    from pymemcache import PooledClient

    from hardened_sessions.stores.memcached import MemcachedByteStore

    hole = FaultProxy(None)  # accepts and reads, never answers (a hung memcached)
    host, port = hole.address.split(":")
    pooled = PooledClient((host, int(port)), max_pool_size=1, timeout=30)
    # No max_pool_size given to the store: nothing keeps its threads from the pool's limit.
    store = MemcachedByteStore([(host, int(port))], lambda server: pooled, str, shared=True)
    try:
        holder, outcome = _hold_the_pool(lambda: store.get("0" * 64), hole)
        with pytest.raises(SessionStoreUnavailable, match="in use") as caught:
            store.get("1" * 64)
        assert isinstance(caught.value.__cause__, RuntimeError)
        hole.close()
        holder.join(10)
        assert [type(exc) for exc in outcome] == [SessionStoreUnavailable]
    finally:
        hole.close()
        pooled.close()
