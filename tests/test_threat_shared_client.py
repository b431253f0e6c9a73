"""Threat: threads sharing one cache connection read each other's answers.

A Django process serves requests from several threads (gunicorn's gthread worker,
``runserver``, the thread pool behind ASGI's sync views). The cache engine keeps one
byte store per cache alias and process, so its client must be safe to use from all of
those threads at once: a client whose socket two threads talk over at the same time
hands one thread the answer meant for the other, that is, one user's session to
another user. pymemcache's plain client is such a client; redis-py's pools and the
LocMemCache lock are not.

Each thread here loads and saves sessions of its own, of different sizes, and checks
every answer: any crossed reply shows up as another session's data or a protocol error.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from hardened_sessions.backends.cache import SessionStore
from tests.support.servers import Server, cache_settings, flush_variant, sessions_cache

THREADS = 8
SESSIONS = 32
ROUNDS = 150


def hammer(sessions: dict[str, int]) -> list[str]:
    """THREADS threads loading (and now and then saving) random sessions; the errors."""
    errors: list[str] = []
    keys = list(sessions)
    start = threading.Barrier(THREADS)

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        start.wait()
        try:
            for n in range(ROUNDS):
                key = rnd.choice(keys)
                session = SessionStore(key)
                owner = session.get("owner")
                if owner != sessions[key]:
                    errors.append(f"thread {seed} read owner {owner!r} for {sessions[key]}")
                    return
                if n % 10 == 0:
                    session[f"seen-by-{seed}"] = n
                    session.save()
        except Exception as exc:  # a crossed reply may also break the protocol
            errors.append(f"thread {seed}: {exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return errors


def make_sessions() -> dict[str, int]:
    sessions: dict[str, int] = {}
    for owner in range(SESSIONS):
        session = SessionStore()
        # Sizes from 100 bytes to about 20 KiB: replies of many lengths to cross.
        session.update({"owner": owner, "pad": "x" * (100 + owner * 600)})
        session.save()
        key = session.session_key
        assert key is not None
        sessions[key] = owner
    return sessions


def test_threads_sharing_the_store_each_get_their_own_sessions(session_cache: str) -> None:
    assert hammer(make_sessions()) == []


@pytest.mark.parametrize("options", [{}, {"use_pooling": True}], ids=["default", "pooled"])
def test_threads_sharing_one_memcached_server_each_get_their_own_sessions(
    memcached_server: Server, options: dict[str, Any]
) -> None:
    # One server: the store may take a shortcut past the hashing of several servers.
    servers = {"memcached": [memcached_server]}
    flush_variant("pymemcache", servers)
    try:
        with sessions_cache(cache_settings("pymemcache", **servers, options=options)):
            assert hammer(make_sessions()) == []
    finally:
        flush_variant("pymemcache", servers)


@pytest.mark.parametrize("options", [{}, {"use_pooling": True}], ids=["default", "pooled"])
def test_threads_sharing_a_memcached_pool_each_get_their_own_sessions(
    memcached_servers: list[Server], options: dict[str, Any]
) -> None:
    # Several servers: one client per server and thread (or one pooled client per server).
    servers = {"memcached": memcached_servers}
    flush_variant("pymemcache", servers)
    try:
        with sessions_cache(cache_settings("pymemcache", **servers, options=options)):
            assert hammer(make_sessions()) == []
    finally:
        flush_variant("pymemcache", servers)
