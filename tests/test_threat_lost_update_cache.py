"""Threat: a lost update on the cache engines (a dropped 2FA flag coming back).

The database engine's version-checked saves have their own suite
(``test_threat_lost_update.py``). The cache engine saves through each store's
compare-and-set: a Lua script on Redis (a staged ``SET`` renamed by the script, on
clients with a connection pool), ``gets``/``cas`` on memcached, the cache's lock on
LocMemCache. Every case runs on every cache variant.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.sessions.backends.base import UpdateError

from hardened_sessions import keys
from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.redis_send import checkout  # redis-py 4 and 8 alike
from tests.support.helpers import new_session
from tests.support.servers import RawCache, servers_for, variant_cache

THREAD_TIMEOUT = 60


def loaded(key: str) -> SessionStore:
    """A request that has read the session (and holds it from then on)."""
    session = SessionStore(key)
    session._get_session()
    return session


def stored(key: str) -> tuple[dict[str, Any], int]:
    rec = SessionStore(key)
    data = rec.load()
    assert rec.record is not None
    return data, rec.record.version


def test_flag_removed_by_one_request_is_not_restored_by_a_stale_save(
    raw_session_cache: RawCache,
) -> None:
    key = new_session(SessionStore, {"user": "alice", "otp_verified": True, "theme": "light"})
    a = loaded(key)
    b = loaded(key)  # stale from here on: it still holds the flag

    del a["otp_verified"]
    a.save()
    b["theme"] = "dark"
    b.save()

    assert stored(key) == ({"user": "alice", "theme": "dark"}, 3)
    assert a.session_key == b.session_key == key
    assert staging_keys(raw_session_cache) == []


def test_a_stale_save_after_a_delete_raises_and_stores_nothing(
    raw_session_cache: RawCache,
) -> None:
    key = new_session(SessionStore, {"user": "alice"})
    a = loaded(key)
    b = loaded(key)
    a.flush()
    b["late"] = 1
    with pytest.raises(UpdateError):
        b.save()
    assert SessionStore(key).load() == {}
    assert raw_session_cache.get(raw_session_cache.key(keys.store_key(key))) is None
    assert staging_keys(raw_session_cache) == []


@pytest.mark.parametrize("n_requests", [8])
def test_many_stale_requests_saving_at_once_all_survive(
    raw_session_cache: RawCache, n_requests: int
) -> None:
    key = new_session(SessionStore, {"user": "alice"})
    all_loaded = threading.Barrier(n_requests, timeout=THREAD_TIMEOUT)
    errors: list[BaseException] = []

    def request(i: int) -> None:
        try:
            session = loaded(key)
            all_loaded.wait()  # every request has read version 1 before any saves
            session[f"t{i}"] = i
            session.save()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n_requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)

    assert errors == []
    data, version = stored(key)
    assert data == {"user": "alice", **{f"t{i}": i for i in range(n_requests)}}
    assert version == 1 + n_requests
    assert staging_keys(raw_session_cache) == []


def staging_keys(raw: RawCache) -> list[str]:
    """Keys a Redis save staged and did not clean up (none elsewhere)."""
    found = raw.keys()
    return [k for k in found if ":next:" in k]


# --------------------------------------------------------------------------- Redis only


@pytest.fixture(params=["django-redis", "django-rediscache"])
def redis_cache(request: pytest.FixtureRequest) -> Iterator[RawCache]:
    variant: str = request.param
    with variant_cache(variant, request) as alias:
        yield RawCache(variant, servers_for(variant, request), alias)


def test_saves_recover_when_the_server_forgot_its_scripts(redis_cache: RawCache) -> None:
    from tests.support.servers import raw_redis

    assert redis_cache.redis_server is not None
    key = new_session(SessionStore, {"n": 0})
    for n in range(1, 4):
        admin = raw_redis(redis_cache.redis_server)
        try:
            admin.script_flush()
        finally:
            admin.close()
        session = loaded(key)
        session["n"] = n
        session.save()
        # The connection that met NOSCRIPT left no unread reply behind: every pooled
        # connection answers its own command.
        for _ in range(5):
            assert SessionStore(key)["n"] == n
    assert staging_keys(redis_cache) == []


def test_a_save_sends_the_record_outside_the_script(redis_cache: RawCache) -> None:
    # The script gets the head, the ttl and key names; the record goes by plain SET.
    store: Any = store_for_cache(redis_cache.alias)
    assert store._lean  # (Redis Cluster clients keep the record as a script argument)
    sent: list[tuple[Any, ...]] = []
    real = store._execute

    def spy(commands: Any, **kwargs: Any) -> Any:
        sent.extend(commands)
        return real(commands, **kwargs)

    key = new_session(SessionStore, {"blob": "x" * 20_000})
    store._execute = spy
    try:
        for blob in ("y", "z"):
            session = loaded(key)
            session["blob"] = blob * 20_000
            session.save()
    finally:
        del store._execute
    assert [c[0] for c in sent] == ["GET", "SET", "EVALSHA"] * 2
    evalsha = [c for c in sent if c[0] == "EVALSHA"]
    assert max(len(a) for a in evalsha[0] if isinstance(a, bytes | str)) < 200
    # Each write stages under a name of its own (concurrent saves never share one).
    staged = [c[1] for c in sent if c[0] == "SET"]
    assert len(set(staged)) == 2
    assert all(name.startswith(redis_cache.key(keys.store_key(key)) + ":next:") for name in staged)
    assert stored(key)[0] == {"blob": "z" * 20_000}
    assert staging_keys(redis_cache) == []


def test_a_failed_batch_leaves_no_reply_for_the_next_command(redis_cache: RawCache) -> None:
    # Both commands of a save fail (out of memory): the connection that holds the
    # second error reply must not go back to the pool with it.
    from hardened_sessions.exceptions import SessionStoreUnavailable
    from tests.support.servers import raw_redis

    assert redis_cache.redis_server is not None
    key = new_session(SessionStore, {"n": 0})
    admin = raw_redis(redis_cache.redis_server)
    try:
        admin.config_set("maxmemory", 1)
        session = loaded(key)
        session["n"] = 1
        with pytest.raises(SessionStoreUnavailable):
            session.save()
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    for _ in range(5):
        assert SessionStore(key)["n"] == 0


# --------------------------------------------------------------------------- Redis connections


def loaded_over_redis(redis_cache: RawCache) -> tuple[Any, str, Any]:
    """The store, the key of a session {"n": 1} loaded once, and the client's pool."""
    store: Any = store_for_cache(redis_cache.alias)
    key = new_session(SessionStore, {"n": 1})
    assert SessionStore(key)["n"] == 1  # a connection of the pool is open now
    return store, key, store._client().connection_pool


def test_threads_share_the_pools_connections(redis_cache: RawCache) -> None:
    """Every command goes over a connection checked out of the client's pool and given
    back (so max_connections, health checks and Sentinel's handling apply): a thread
    that runs after another reuses its connection instead of keeping one of its own."""
    store, key, pool = loaded_over_redis(redis_cache)
    idle = checkout(pool)  # the connection the load gave back
    pool.release(idle)
    seen: list[Any] = []

    def other_thread() -> None:
        assert SessionStore(key)["n"] == 1
        conn = checkout(pool)
        seen.append(conn)
        pool.release(conn)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(THREAD_TIMEOUT)
    assert seen and seen[0] is idle


def test_a_connection_the_server_closed_is_replaced_before_use(redis_cache: RawCache) -> None:
    from tests.support.servers import raw_redis

    assert redis_cache.redis_server is not None
    _, key, _ = loaded_over_redis(redis_cache)
    admin = raw_redis(redis_cache.redis_server)
    try:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        admin.close()
    # No 503 for the next request: the dead socket is noticed before the command.
    session = SessionStore(key)
    assert session["n"] == 1
    session["n"] = 2
    session.save()
    assert SessionStore(key)["n"] == 2


def test_a_forked_child_opens_its_own_connection(redis_cache: RawCache) -> None:
    import os

    store, key, pool = loaded_over_redis(redis_cache)
    parent_conn = checkout(pool)
    pool.release(parent_conn)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        status = 1
        try:
            ok = SessionStore(key)["n"] == 1
            conn = checkout(pool)  # the pool started afresh in this process
            ok = ok and conn is not parent_conn and pool.pid == os.getpid()
            os.write(write, b"ok" if ok else b"no")
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    answer = os.read(read, 2)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and answer == b"ok"
    # The parent's connection is untouched and in step.
    conn = checkout(pool)
    pool.release(conn)
    assert conn is parent_conn
    assert SessionStore(key)["n"] == 1
