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
from hardened_sessions.stores import store_for_cache
from tests.servers import Server, cache_settings, sessions_cache

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
        client: Any = store_for_cache(alias)._client  # type: ignore[attr-defined]
        sockets = [member.sock for member in client.clients.values() if member.sock]
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
        # The engine's own per-thread connection, and any the pool made.
        pool = store._client().connection_pool
        connections = list(pool._available_connections) + list(pool._in_use_connections)
        connections.append(store._local.conn)
        sockets = [c._sock for c in connections if c._sock is not None]
        assert store._local.conn._sock in sockets
        assert all(nodelay(sock) for sock in sockets)


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
        mine = store._client
        assert store._client is mine
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(store._client))
        thread.start()
        thread.join()
        assert (seen[0] is mine) is pooled
