"""A Redis command that ran but whose reply was lost, sent again by redis-py's retry.

With ``retry_on_timeout`` or a ``retry`` policy in the cache's ``OPTIONS`` (and by
default on Redis Cluster), redis-py re-sends a command when the reply does not come.
Re-sent, ``DEL`` answers 0 ("there was nothing") and ``SET NX`` answers "taken":

* a rotation (``cycle_key``, i.e. every login) whose delete is re-sent concluded the
  old session had been revoked meanwhile and started the logged-in session empty;
* a create whose ``SET NX`` is re-sent took its own record for a key collision and
  stored the session a second time under another key (an orphan live record, listed
  among the user's sessions);
* a revocation whose delete is re-sent under-counted what it ended.

The fault is real: a relay in front of Redis (:mod:`tests.support.faults`) lets the
command through and drops Redis's answer, so the client times out and retries, on
django-redis and on Django's ``RedisCache``, each with ``retry_on_timeout`` and with a
``Retry`` policy. On Redis Cluster (whose client retries by default, and whose nodes
the relay can't stand in front of) the delete script is run twice as the retry would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.stores.redis_send import checkout  # redis-py 4 and 8 alike
from tests.support.faults import FaultProxy
from tests.support.servers import (
    RawCache,
    Server,
    cache_settings,
    flush_variant,
    raw_redis,
    sessions_cache,
)
from tests.support.servers_scaleout import RedisClusterHandle

pytestmark = pytest.mark.django_db

ENGINE = "hardened_sessions.backends.cache"
TIMEOUT = 0.3


def _options(variant: str, policy: str) -> dict[str, Any]:
    retry: dict[str, Any] = (
        {"retry_on_timeout": True}
        if policy == "retry_on_timeout"
        else {"retry": Retry(NoBackoff(), 2)}
    )
    if variant == "django-redis":
        return {"SOCKET_TIMEOUT": TIMEOUT, "CONNECTION_POOL_KWARGS": retry}
    return {"socket_timeout": TIMEOUT, **retry}


@pytest.fixture(
    params=[
        ("django-redis", "retry_on_timeout"),
        ("django-redis", "retry"),
        ("django-rediscache", "retry_on_timeout"),
        ("django-rediscache", "retry"),
    ],
    ids=lambda p: "-".join(p),
)
def lossy(
    request: pytest.FixtureRequest, redis_server: Server
) -> Iterator[tuple[FaultProxy, RawCache]]:
    variant, policy = request.param
    proxy = FaultProxy(redis_server)
    servers = {"redis": redis_server}
    flush_variant(variant, servers)
    config = cache_settings(variant, redis=proxy.as_server(), options=_options(variant, policy))
    try:
        with sessions_cache(config, SESSION_ENGINE=ENGINE) as alias:
            # Every script the tests meet is loaded first, so a lost reply is the reply
            # of a command that ran (not of a NOSCRIPT error).
            warm = SessionStore()
            warm["_auth_user_id"] = "0"
            warm.save()
            warm["n"] = 1
            warm.save()
            warm.delete()
            yield proxy, RawCache(variant, servers, alias)
    finally:
        proxy.close()
        flush_variant(variant, servers)


def _records_holding(raw: RawCache, marker: bytes) -> list[str]:
    """Full keys of the session records (not index, staging or tombstone keys) whose
    bytes hold ``marker``."""
    found = []
    for key in raw.keys():  # noqa: SIM118 (RawCache.keys() reads the server)
        tail = key.rsplit("hardened_sessions:", 1)[-1]
        if len(tail) == 64 and (raw.get(key) or b"").find(marker) >= 0:
            found.append(key)
    return found


def test_a_login_whose_delete_is_resent_keeps_the_session_data(
    lossy: tuple[FaultProxy, RawCache], django_user_model: Any
) -> None:
    proxy, raw = lossy
    user = django_user_model.objects.create_user("retry-alice", password="x")
    session = SessionStore()
    session.update({"cart": [1, 2, 3], "_auth_user_id": str(user.pk)})
    session.save()
    old_key = session.session_key
    assert old_key is not None

    request_session = SessionStore(old_key)
    assert request_session["cart"] == [1, 2, 3]  # loaded: the next command is the delete
    proxy.lose_reply_to(raw.key(keys.store_key(old_key)).encode())
    request_session.cycle_key()

    assert proxy.lost == 1  # the delete ran, its reply was lost, the client re-sent it
    assert request_session.session_key not in (None, old_key)
    assert request_session["cart"] == [1, 2, 3]
    assert SessionStore(request_session.session_key)["cart"] == [1, 2, 3]
    assert SessionStore(old_key).load() == {}
    assert [s.key_hash for s in hardened_sessions.user_sessions(user)] == [
        keys.store_key(request_session.session_key)
    ]


def test_a_rotation_of_a_session_revoked_meanwhile_still_starts_empty(
    lossy: tuple[FaultProxy, RawCache],
) -> None:
    """The tombstone is the delete's own: another deleter's work is not taken for it."""
    proxy, raw = lossy
    session = SessionStore()
    session["secret"] = "s"
    session.save()
    request_session = SessionStore(session.session_key)
    assert request_session["secret"] == "s"
    session.delete()  # revoked elsewhere (its tombstone is that delete's, not ours)
    request_session.cycle_key()
    assert dict(request_session.items()) == {}


@pytest.mark.parametrize("with_user", [False, True], ids=["anonymous", "user"])
def test_a_create_whose_set_nx_is_resent_stores_one_record(
    lossy: tuple[FaultProxy, RawCache], django_user_model: Any, with_user: bool
) -> None:
    proxy, raw = lossy
    user = django_user_model.objects.create_user("retry-bob", password="x")
    marker = b"only-here-once-7f3a"
    session = SessionStore()
    session["m"] = marker.decode()
    if with_user:
        session["_auth_user_id"] = str(user.pk)
    proxy.lose_reply_to(marker)
    session.save()

    assert proxy.lost == 1
    assert session.session_key is not None
    assert _records_holding(raw, marker) == [raw.key(keys.store_key(session.session_key))]
    assert SessionStore(session.session_key)["m"] == marker.decode()
    if with_user:
        assert [s.key_hash for s in hardened_sessions.user_sessions(user)] == [
            keys.store_key(session.session_key)
        ]


def test_a_real_key_collision_is_still_a_collision(
    lossy: tuple[FaultProxy, RawCache],
) -> None:
    """A taken key whose record is not this call's own is refused (another key is used)."""
    proxy, raw = lossy
    store: Any = SessionStore()._store
    first = SessionStore()
    first["n"] = 1
    first.save()
    taken = keys.store_key(first.session_key)
    intruder = memoryview(bytes(raw.get(raw.key(taken)) or b"")[:-43] + b"x" * 43)
    assert store.add(taken, intruder, 60, 1) is None
    assert SessionStore(first.session_key)["n"] == 1


def test_a_revocation_whose_delete_is_resent_counts_what_it_ended(
    lossy: tuple[FaultProxy, RawCache], django_user_model: Any
) -> None:
    proxy, raw = lossy
    user = django_user_model.objects.create_user("retry-carol", password="x")
    sessions = []
    for device in range(3):
        session = SessionStore()
        session.update({"_auth_user_id": str(user.pk), "device": device})
        session.save()
        sessions.append(session.session_key)
    # The first delete: a DEL, or the delete script (its tombstone's name says ":gone:").
    proxy.lose_reply_to(b"$3\r\nDEL\r\n", b":gone:")
    ended = hardened_sessions.revoke_user_sessions(user, keep=sessions[0])
    assert proxy.lost == 1
    assert ended == 2
    assert [SessionStore(k).load().get("device") for k in sessions] == [0, None, None]


def test_tombstones_expire_and_are_never_read_as_sessions(
    lossy: tuple[FaultProxy, RawCache], redis_server: Server
) -> None:
    proxy, raw = lossy
    session = SessionStore()
    session["n"] = 1
    session.save()
    record_key = raw.key(keys.store_key(session.session_key))
    session.delete()
    tombstones = [k for k in raw.keys() if k.startswith(record_key + ":gone:")]  # noqa: SIM118
    assert len(tombstones) == 1
    assert 0 < (raw.ttl(tombstones[0]) or 0) <= 120
    client = raw_redis(redis_server)
    try:
        assert client.get(tombstones[0]) == b"1"  # no record, nothing of the session
    finally:
        client.close()


def test_the_lean_path_follows_the_pools_retry_policy(
    lossy: tuple[FaultProxy, RawCache],
) -> None:
    """The lean path takes its connections from the client's own pool, retries included:
    the faults above exercise the policy the user configured, not a home-made one."""
    store: Any = SessionStore()._store
    pool = store._client().connection_pool
    conn = checkout(pool)
    try:
        retry = conn.retry
        # redis-py 4 has no public getter (test only: the package never reads it).
        retries = retry.get_retries() if hasattr(retry, "get_retries") else retry._retries
        assert retries >= 1
        assert conn.socket_timeout == TIMEOUT
    finally:
        pool.release(conn)


@pytest.mark.parametrize("prefix", ["hs-plain", "hs-{tagged}", "hs-{}-empty-tag"])
def test_on_redis_cluster_a_resent_delete_still_answers_deleted(
    redis_cluster: RedisClusterHandle, prefix: str
) -> None:
    """RedisCluster re-sends a command after a timeout or a lost connection by default
    (its own ``retry``, three attempts in redis-py 8). The tombstone must live in the
    record's slot, or the cluster refuses the script (CROSSSLOT); where no such name
    exists (an empty ``{}`` hash tag in the prefix) the delete is a plain ``DEL``."""
    from hardened_sessions.stores.redis import DELETE_SCRIPT, TOMBSTONE_TTL

    config = {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": redis_cluster.urls,
        "KEY_PREFIX": prefix,
        "OPTIONS": {"socket_timeout": 5},
    }
    redis_cluster.flush()
    try:
        with sessions_cache(config, SESSION_ENGINE=ENGINE) as alias:
            try:
                sessions = []
                for n in range(6):  # keys in several slots
                    session = SessionStore()
                    session["n"] = n
                    session.save()
                    sessions.append(session)
                store: Any = sessions[0]._store
                for session in sessions:
                    record_key = store._key(keys.store_key(session.session_key))
                    tombstone = store._tombstone(record_key)
                    if prefix.endswith("empty-tag"):
                        assert tombstone is None
                        assert store.delete(keys.store_key(session.session_key)) is True
                        continue
                    assert tombstone is not None
                    cluster = store._client()
                    assert cluster.keyslot(tombstone) == cluster.keyslot(record_key)
                    # The same call twice, as RedisCluster's retry would send it.
                    args = (DELETE_SCRIPT, [record_key, tombstone], [TOMBSTONE_TTL])
                    assert store._run_script("delete", *args) == 1
                    assert store._run_script("delete", *args) == 1
                    assert SessionStore(session.session_key).load() == {}
                # A rotation on the cluster keeps its data (its delete is the script).
                survivor = SessionStore()
                survivor["kept"] = True
                survivor.save()
                survivor.cycle_key()
                assert SessionStore(survivor.session_key)["kept"] is True
            finally:
                from django.core.cache import caches

                caches[alias].close_client()
    finally:
        redis_cluster.flush()
