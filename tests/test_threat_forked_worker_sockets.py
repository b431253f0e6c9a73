"""Threat: a forked worker talks over its parent's memcached sockets.

A pre-fork server (gunicorn, uWSGI) imports the site and may touch sessions before it
forks its workers; each child inherits the parent's open sockets. A child and its parent
(or two children) sending commands over one inherited connection read each other's
replies: one user's session handed to another. The memcached store drops its clients in
a forked child (``os.register_at_fork``), which then opens connections of its own.

(The Redis store's counterpart is in ``test_threat_lost_update_cache.py``.)
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.stores import store_for_cache
from tests.support.servers import Server, cache_settings, sessions_cache

CACHE_ENGINE = "hardened_sessions.backends.cache"
SESSIONS = 12
ROUNDS = 300


def make_sessions(tag: str) -> dict[str, dict[str, Any]]:
    """Sessions of different sizes, so a crossed reply cannot pass for the right one."""
    made = {}
    for n in range(SESSIONS):
        session = SessionStore()
        data = {"owner": tag, "n": n, "pad": tag * (n * 37 + 1)}
        session.update(data)
        session.save()
        assert session.session_key is not None
        made[session.session_key] = data
    return made


def hammer(sessions: dict[str, dict[str, Any]], seed: int) -> str | None:
    """Load (and now and then save) the sessions at random; the first wrong answer."""
    rnd = random.Random(seed)
    keys = list(sessions)
    for round_ in range(ROUNDS):
        key = rnd.choice(keys)
        try:
            session = SessionStore(key)
            loaded = session.load()
            if loaded != sessions[key]:
                return f"round {round_}: got {str(loaded)[:60]!r}"
            if round_ % 5 == 0:
                session["n"] = sessions[key]["n"] = loaded["n"] + 1
                session.save()
        except Exception as exc:
            return f"round {round_}: {exc!r}"
    return None


@pytest.mark.parametrize("pooled", [False, True], ids=["per-thread", "pooled"])
def test_a_forked_child_never_shares_a_socket_with_its_parent(
    memcached_server: Server, pooled: bool
) -> None:
    # A crossed reply would leave one side waiting for an answer the other one read.
    config = cache_settings("pymemcache", memcached=[memcached_server], options={"timeout": 5})
    if pooled:
        config["OPTIONS"].update(use_pooling=True, max_pool_size=4)
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        store: Any = store_for_cache(alias)
        parents = make_sessions("p")
        childs = make_sessions("c")
        (inherited,) = store.clients()  # connected: the parent used it
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            status = 1
            try:
                os.close(read)
                (mine,) = store.clients()
                if mine is inherited:
                    answer = "the child uses its parent's client"
                else:
                    answer = hammer(childs, seed=2) or "ok"
                os.write(write, answer.encode()[:500])
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        try:
            wrong = hammer(parents, seed=1)
        finally:
            chunks = []
            while chunk := os.read(read, 500):
                chunks.append(chunk)
            os.close(read)
            _, status = os.waitpid(pid, 0)
        assert status == 0
        assert b"".join(chunks).decode() == "ok"
        assert wrong is None
        # The parent keeps its own client, still in step.
        assert store.clients() == (inherited,)
        assert {key: SessionStore(key).load() for key in parents} == parents
        for key, data in childs.items():  # the child saved its own, the parent sees them
            loaded = SessionStore(key).load()
            assert (loaded["owner"], loaded["pad"]) == (data["owner"], data["pad"])
            assert loaded["n"] >= data["n"]
