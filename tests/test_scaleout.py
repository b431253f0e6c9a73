"""Scale-out stores: Redis Cluster, Redis Sentinel, and a pool of memcached servers.

docs/engines.rst: "Scale-out: Redis Cluster and Sentinel, several
memcached servers, PostgreSQL — existing engines, nothing home-made"; the cache
engine serves Redis Cluster through ``hardened_sessions.redis_cluster.RedisClusterCache``
(Django's ``RedisCache`` on redis-py's ``RedisCluster``), Sentinel through
django-redis's ``SentinelClient``, and memcached pools through ``PyMemcacheCache``'s
server list. docs/engines.rst, "Cache configurations", gives the settings of each.

Servers are real and started by the fixtures of ``tests.support.servers_scaleout`` (a
three-primary cluster, a primary with a sentinel) and ``tests.support.servers`` (three
memcached processes). Nothing is mocked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.base import UpdateError
from django.core.cache import caches
from django.http import HttpResponseBase
from django.test import Client, TransactionTestCase, override_settings

import hardened_sessions
from hardened_sessions import keys, record
from hardened_sessions.backends.cache import SessionStore
from tests.conftest import require_server
from tests.support.django_suite import load_mixin
from tests.support.faults import FaultProxy
from tests.support.servers import (
    RUN_TOKEN,
    SESSIONS_ALIAS,
    RawCache,
    Server,
    cache_settings,
    flush_variant,
    memcached_ttl,
    sessions_cache,
)
from tests.support.servers_scaleout import SENTINEL_SERVICE, RedisClusterHandle, SentinelHandle
from tests.support.views_http import (
    URLCONF,
    assert_cookie_expired,
    clock_shifted,
    session_cookie,
    set_cookie_headers,
)

SessionTestsMixin = load_mixin()

pytestmark = pytest.mark.django_db(transaction=True)

CACHE_ENGINE = "hardened_sessions.backends.cache"
PASSWORD = "correct horse battery staple"
COOKIE = settings.SESSION_COOKIE_NAME
MAX_BYTES = 65536


def full_key(session_key: str) -> str:
    """The cache key a session is stored under (the cache's KEY_PREFIX and VERSION)."""
    return str(caches[SESSIONS_ALIAS].make_key("hardened_sessions:" + keys.store_key(session_key)))


def new_session(**data: Any) -> SessionStore:
    session = SessionStore()
    session.update(data)
    session.save()
    return session


def loads(session_key: str) -> dict[str, Any]:
    return SessionStore(session_key).load()


# --- Redis Cluster ----------------------------------------------------------------------

CLUSTER_PREFIX = f"hs{RUN_TOKEN}-cl"


def cluster_cache(cluster: RedisClusterHandle) -> dict[str, Any]:
    """docs/engines.rst's Redis Cluster configuration, on this run's cluster."""
    return {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": cluster.urls,
        "KEY_PREFIX": CLUSTER_PREFIX,
        "VERSION": 6,
        "OPTIONS": {"socket_timeout": 5, "socket_connect_timeout": 5},
    }


def _close_cluster_client() -> None:
    caches[SESSIONS_ALIAS].close_client()


@pytest.fixture
def on_cluster(redis_cluster: RedisClusterHandle) -> Iterator[RedisClusterHandle]:
    """The cache engine on the cluster (``SESSION_CACHE_ALIAS = "sessions"``)."""
    redis_cluster.flush()
    try:
        with sessions_cache(
            cluster_cache(redis_cluster), SESSION_ENGINE=CACHE_ENGINE, ROOT_URLCONF=URLCONF
        ):
            try:
                yield redis_cluster
            finally:
                _close_cluster_client()
    finally:
        redis_cluster.flush()


def spread_over_cluster(cluster: RedisClusterHandle, per_node: int = 2) -> list[SessionStore]:
    """Create sessions until every primary holds at least ``per_node`` of them."""
    sessions: list[SessionStore] = []
    held = {node.port: 0 for node in cluster.nodes}
    for i in range(300):
        sessions.append(new_session(n=i, _auth_user_id=str(i)))
        held[cluster.owner_of(full_key(sessions[-1].session_key)).port] += 1
        if min(held.values()) >= per_node:
            return sessions
    raise AssertionError(f"300 sessions did not reach every node: {held}")


def test_sessions_land_on_every_cluster_node_and_live_their_whole_life(
    on_cluster: RedisClusterHandle,
) -> None:
    """Sessions spread over the three primaries (each record on the node serving its
    key's slot, each node's DBSIZE above zero), and on every node a session is
    loaded, saved, rotated (old key gone, data under the new one) and deleted."""
    cluster = on_cluster
    sessions = spread_over_cluster(cluster)

    # Where each one is: the primary that serves its key's slot holds its record.
    for session in sessions:
        key = full_key(session.session_key)
        owner = cluster.owner_of(key)
        raw = cluster.get(owner, key)
        assert raw is not None and raw.startswith(b"hs1:")
        decoded = record.decode(raw, keys.store_key(session.session_key), MAX_BYTES)
        assert decoded.data == dict(session.items())
    sizes = cluster.dbsizes()
    assert all(size > 0 for size in sizes.values()), sizes
    assert sum(sizes.values()) == len(sessions)  # no per-user index keys on a cluster

    for session in sessions:
        old_key = session.session_key
        assert loads(old_key) == dict(session.items())

        request = SessionStore(old_key)
        request["step"] = "saved"
        request.save()
        assert loads(old_key)["step"] == "saved"

        request.cycle_key()
        new_key = request.session_key
        assert new_key != old_key
        assert loads(old_key) == {}
        assert cluster.get(cluster.owner_of(full_key(old_key)), full_key(old_key)) is None
        assert loads(new_key)["step"] == "saved"

        SessionStore(new_key).delete()
        assert loads(new_key) == {}
        assert cluster.get(cluster.owner_of(full_key(new_key)), full_key(new_key)) is None
    # Left: only the two deletes' tombstones per session (docs/engines.rst, "Retries"), which the
    # delete script wrote in its record's slot (else the cluster refuses the script).
    left = []
    for node in cluster.nodes:
        client = cluster.raw(node)
        try:
            left += [k.decode() for k in client.keys("*")]
        finally:
            client.close()
    assert len(left) == 2 * len(sessions)
    assert all(":gone:" in k for k in left), left


def test_stale_concurrent_saves_merge_on_every_cluster_node(on_cluster: RedisClusterHandle) -> None:
    """The compare-and-set script runs on each node: a late save applies only its own
    change (a removed flag stays removed), and a save after a logout raises
    ``UpdateError`` instead of recreating the record."""
    cluster = on_cluster
    sessions = spread_over_cluster(cluster, per_node=1)
    for session in sessions:
        key = session.session_key
        request_a = SessionStore(key)
        request_b = SessionStore(key)
        request_a["sudo"] = True
        request_a.save()  # version 2
        assert loads(key)["sudo"] is True

        slow = SessionStore(key)
        ending = SessionStore(key)
        assert slow["sudo"] is True and ending["sudo"] is True
        del ending["sudo"]  # sudo mode ends (version 3)
        ending.save()
        slow["cart"] = 2  # a request that loaded before that saves late (version 4)
        slow.save()

        expected = {**dict(session.items()), "cart": 2}
        assert loads(key) == expected, "a stale save brought back a removed key"
        raw = cluster.get(cluster.owner_of(full_key(key)), full_key(key))
        assert raw is not None and record.peek_version(raw) == 4

        # A save from a request that loaded before a logout never resurrects it.
        assert request_b["n"] == session["n"]
        SessionStore(key).delete()
        request_b["late"] = True
        with pytest.raises(UpdateError):
            request_b.save()
        assert cluster.get(cluster.owner_of(full_key(key)), full_key(key)) is None


def test_the_plain_django_cache_api_works_on_the_cluster(on_cluster: RedisClusterHandle) -> None:
    """``RedisClusterCache`` as an ordinary Django cache, with keys on every node (the
    multi-key calls must not send one command across slots)."""
    cluster = on_cluster
    cache = caches[SESSIONS_ALIAS]
    values = {f"plain-{i}": {"i": i, "tag": ("t", i)} for i in range(40)}
    owners = {cluster.owner_of(cache.make_key(k)).port for k in values}
    assert owners == {node.port for node in cluster.nodes}, "the keys must span every node"

    cache.set("single", [1, 2, 3], 60)
    assert cache.get("single") == [1, 2, 3]
    assert cache.get("absent", "default") == "default"
    assert cache.add("single", "other") is False
    assert cache.add("added", "new") is True
    assert cache.get("added") == "new"
    assert cache.has_key("single") is True

    assert cache.set_many(values, 60) == []
    assert cache.get_many([*values, "absent"]) == values
    doomed = [k for i, k in enumerate(values) if i % 2]
    cache.delete_many(doomed)
    kept = {k: v for k, v in values.items() if k not in doomed}
    assert cache.get_many(list(values)) == kept
    assert sum(cluster.dbsizes().values()) == len(kept) + 2

    cache.set("counter", 1)
    assert cache.incr("counter", 4) == 5
    assert cache.touch("counter", 30) is True
    assert cache.delete("counter") is True

    cache.clear()
    assert cluster.dbsizes() == {node.port: 0 for node in cluster.nodes}
    assert cache.get_many(list(values)) == {}


OLD_CLUSTER_BACKEND = "hardened_sessions.cache.RedisClusterCache"


def test_the_old_cluster_backend_path_still_works_and_warns(
    redis_cluster: RedisClusterHandle,
) -> None:
    """``hardened_sessions.cache.RedisClusterCache``, the path before the module was named
    ``redis_cluster``, loads the same backend for one more release; Django loading it
    gets a ``DeprecationWarning`` that names the new path."""
    from hardened_sessions.redis_cluster import RedisClusterCache

    redis_cluster.flush()
    old = {**cluster_cache(redis_cluster), "BACKEND": OLD_CLUSTER_BACKEND}
    try:
        with sessions_cache(old, SESSION_ENGINE=CACHE_ENGINE):
            with pytest.warns(DeprecationWarning, match=r"hardened_sessions\.redis_cluster\."):
                cache = caches[SESSIONS_ALIAS]
            try:
                assert type(cache) is RedisClusterCache
                session = new_session(probe="old path")
                key = full_key(session.session_key)
                stored = redis_cluster.get(redis_cluster.owner_of(key), key)
                assert stored is not None and stored.startswith(b"hs1:")
                assert loads(session.session_key) == {"probe": "old path"}
            finally:
                _close_cluster_client()
    finally:
        redis_cluster.flush()


def test_per_user_helpers_say_the_cluster_keeps_no_index(on_cluster: RedisClusterHandle) -> None:
    """docs/api.rst and docs/operations.rst, "Per-user sessions": the per-user helpers
    raise ``NotImplementedError`` saying why where no index can be kept consistently; a
    cluster is such a place."""
    user = get_user_model().objects.create_user("alice", password=PASSWORD)
    session = new_session(_auth_user_id=str(user.pk))

    with pytest.raises(NotImplementedError, match="Cluster"):
        hardened_sessions.user_sessions(user)
    with pytest.raises(NotImplementedError, match="Cluster"):
        hardened_sessions.revoke_user_sessions(user)
    assert loads(session.session_key) == {"_auth_user_id": str(user.pk)}  # nothing ended
    assert sum(on_cluster.dbsizes().values()) == 1


def test_login_and_logout_through_the_middleware_on_the_cluster(
    on_cluster: RedisClusterHandle,
) -> None:
    get_user_model().objects.create_user("alice", password=PASSWORD)
    client = Client()
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    morsel = session_cookie(response)
    assert morsel is not None
    key = full_key(morsel.value)
    assert on_cluster.get(on_cluster.owner_of(key), key) is not None
    assert json.loads(client.get("/whoami/").content)["username"] == "alice"

    assert client.post("/logout/").status_code == 302
    assert on_cluster.get(on_cluster.owner_of(key), key) is None
    assert json.loads(client.get("/whoami/").content)["authenticated"] is False


@pytest.fixture(scope="class")
def cluster_conformance(request: pytest.FixtureRequest) -> Iterator[None]:
    """The cluster cache and the cache engine for a whole conformance class."""
    cluster: RedisClusterHandle = request.getfixturevalue("redis_cluster")
    request.cls.cluster = cluster
    cluster.flush()
    try:
        with sessions_cache(cluster_cache(cluster), SESSION_ENGINE=CACHE_ENGINE):
            try:
                yield
            finally:
                _close_cluster_client()
    finally:
        cluster.flush()


@pytest.mark.usefixtures("cluster_conformance")
class HardenedCacheRedisClusterConformance(SessionTestsMixin, TransactionTestCase):  # type: ignore[misc, valid-type]
    """Django's SessionTestsMixin on hardened_sessions.backends.cache over a Redis Cluster
    (``hardened_sessions.redis_cluster.RedisClusterCache``)."""

    backend = SessionStore
    databases = {"default"}
    available_apps = ["hardened_sessions"]
    cluster: RedisClusterHandle

    def test_runs_on_the_cluster(self) -> None:
        cache = caches[settings.SESSION_CACHE_ALIAS]
        assert f"{type(cache).__module__}.{type(cache).__qualname__}" == (
            "hardened_sessions.redis_cluster.RedisClusterCache"
        )
        assert settings.SESSION_ENGINE == CACHE_ENGINE
        session = self.backend()
        session["probe"] = "cluster"
        session.save()
        key = full_key(session.session_key)
        value = self.cluster.get(self.cluster.owner_of(key), key)
        assert value is not None and value.startswith(b"hs1:")
        session.delete()


# --- Redis Sentinel ---------------------------------------------------------------------

SENTINEL_PREFIX = f"hs{RUN_TOKEN}-st"
SENTINEL_DB = 1


def sentinel_cache(sentinel: SentinelHandle, *, connection_factory: bool) -> dict[str, Any]:
    """docs/engines.rst's Sentinel configuration; ``connection_factory`` adds the option
    without which django-redis cannot build Sentinel pools (the docs include it)."""
    options: dict[str, Any] = {
        "CLIENT_CLASS": "django_redis.client.SentinelClient",
        "SENTINELS": sentinel.sentinels,
        "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
        "SOCKET_CONNECT_TIMEOUT": 5,
        "SOCKET_TIMEOUT": 5,
    }
    if connection_factory:
        options["CONNECTION_FACTORY"] = "django_redis.pool.SentinelConnectionFactory"
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://{SENTINEL_SERVICE}/{SENTINEL_DB}",
        "KEY_PREFIX": SENTINEL_PREFIX,
        "VERSION": 7,
        "OPTIONS": options,
    }


def _forget_sentinel_pools() -> None:
    """django-redis keeps its pools process-wide, by URL: drop (and close) ours."""
    from django_redis.pool import ConnectionFactory

    for url in [u for u in ConnectionFactory._pools if f"//{SENTINEL_SERVICE}/" in u]:
        ConnectionFactory._pools.pop(url).disconnect()


def _primary(sentinel: SentinelHandle) -> Any:
    """A plain client on the primary itself, in the sessions' database."""
    import redis

    return redis.Redis(
        host=sentinel.primary.host, port=sentinel.primary.port, db=SENTINEL_DB, socket_timeout=5
    )


def _flush_sentinel_db(sentinel: SentinelHandle) -> None:
    client = _primary(sentinel)
    try:
        client.flushdb()
    finally:
        client.close()


def primary_get(sentinel: SentinelHandle, key: str) -> bytes | None:
    """``GET key`` on the primary itself."""
    client = _primary(sentinel)
    try:
        value = client.get(key)
    finally:
        client.close()
    return None if value is None else bytes(value)


@pytest.fixture
def through_sentinel(redis_sentinel: SentinelHandle) -> Iterator[SentinelHandle]:
    _forget_sentinel_pools()
    _flush_sentinel_db(redis_sentinel)
    try:
        with sessions_cache(
            sentinel_cache(redis_sentinel, connection_factory=True),
            SESSION_ENGINE=CACHE_ENGINE,
            ROOT_URLCONF=URLCONF,
        ):
            yield redis_sentinel
    finally:
        _forget_sentinel_pools()
        _flush_sentinel_db(redis_sentinel)


def test_the_engine_runs_through_sentinel(through_sentinel: SentinelHandle) -> None:
    """Create, load, a merged stale save, rotate and delete, through django-redis's
    ``SentinelClient``: the records are on the primary that the sentinel names."""
    from redis.sentinel import SentinelConnectionPool

    sentinel = through_sentinel
    client = caches[SESSIONS_ALIAS].client.get_client(write=True)
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.service_name == SENTINEL_SERVICE

    session = new_session(cart=1, sudo=True)
    key = session.session_key
    raw = primary_get(sentinel, full_key(key))  # on the primary the sentinel names
    assert raw is not None and raw.startswith(b"hs1:")
    assert loads(key) == {"cart": 1, "sudo": True}

    slow, ending = SessionStore(key), SessionStore(key)
    assert slow["cart"] == 1 and ending["sudo"] is True
    del ending["sudo"]
    ending.save()
    slow["cart"] = 2
    slow.save()
    assert loads(key) == {"cart": 2}

    rotating = SessionStore(key)
    rotating.cycle_key()
    assert loads(key) == {} and primary_get(sentinel, full_key(key)) is None
    assert loads(rotating.session_key) == {"cart": 2}

    SessionStore(rotating.session_key).delete()
    assert loads(rotating.session_key) == {}
    assert primary_get(sentinel, full_key(rotating.session_key)) is None


def _login(username: str) -> tuple[Client, str]:
    client = Client()
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302
    morsel = session_cookie(response)
    assert morsel is not None and morsel.value
    return client, morsel.value


def _username(client: Client) -> str | None:
    response = client.get("/whoami/")
    assert response.status_code == 200
    return json.loads(response.content)["username"]  # type: ignore[no-any-return]


def test_user_sessions_and_revoke_through_sentinel(through_sentinel: SentinelHandle) -> None:
    """The per-user index works through Sentinel: list a user's sessions, end all but
    one ("log out other devices"); other users' sessions are untouched."""
    user_model = get_user_model()
    alice = user_model.objects.create_user("alice", password=PASSWORD)
    user_model.objects.create_user("bob", password=PASSWORD)
    devices = [_login("alice") for _ in range(3)]
    bob, _bob_key = _login("bob")

    listed = hardened_sessions.user_sessions(alice)
    assert {s.key_hash for s in listed} == {keys.store_key(k) for _c, k in devices}
    assert all(s.user_id == str(alice.pk) for s in listed)

    kept_client, kept_key = devices[0]
    assert hardened_sessions.revoke_user_sessions(alice, keep=kept_key) == 2

    assert [s.key_hash for s in hardened_sessions.user_sessions(alice)] == [
        keys.store_key(kept_key)
    ]
    assert _username(kept_client) == "alice"
    for client, key in devices[1:]:
        assert _username(client) is None
        assert primary_get(through_sentinel, full_key(key)) is None
    assert _username(bob) == "bob"
    assert len(hardened_sessions.user_sessions(user_model.objects.get(username="bob"))) == 1


def test_the_readme_sentinel_configuration_works(redis_sentinel: SentinelHandle) -> None:
    """docs/engines.rst, "Cache configurations", "Redis Sentinel with django-redis", verbatim
    (but for the sentinel's address)."""
    _forget_sentinel_pools()
    try:
        with sessions_cache(
            sentinel_cache(redis_sentinel, connection_factory=True), SESSION_ENGINE=CACHE_ENGINE
        ):
            session = new_session(n=1)
            assert loads(session.session_key) == {"n": 1}
            session.delete()
    finally:
        _forget_sentinel_pools()
        _flush_sentinel_db(redis_sentinel)


# --- memcached: a pool of three servers --------------------------------------------------

# docs/engines.rst, "Cache configurations", plus short socket timeouts.
POOL_OPTIONS = {
    "retry_attempts": 2,
    "retry_timeout": 1,
    "dead_timeout": 60,
    "connect_timeout": 0.5,
    "timeout": 0.5,
}
# Long enough for pymemcache to retry a failing node twice (retry_timeout apart).
DECLARED_DEAD_WITHIN = 20.0


class Visitor:
    """One browser: a client logged in as its own user, and where its session lives."""

    def __init__(self, username: str, client: Client, key: str, holder: Server) -> None:
        self.username = username
        self.client = client
        self.key = key
        self.holder = holder


def holder_of(raw: RawCache, servers: list[Server], session_key: str) -> Server | None:
    key = raw.key(keys.store_key(session_key))
    for server in servers:
        if server.running() and memcached_ttl(server, key) is not None:
            return server
    return None


def login_visitor(username: str, raw: RawCache, servers: list[Server]) -> Visitor:
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_password(PASSWORD)
        user.save()
    client = Client(raise_request_exception=False)
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, (response.status_code, response.content)
    morsel = session_cookie(response)
    assert morsel is not None and morsel.value
    holder = holder_of(raw, servers, morsel.value)
    assert holder is not None, "the new session is on no server"
    return Visitor(username, client, morsel.value, holder)


def spread_visitors(raw: RawCache, servers: list[Server], per_node: int = 2) -> list[Visitor]:
    """Log visitors in until every server holds at least ``per_node`` sessions."""
    visitors: list[Visitor] = []
    for i in range(90):
        visitors.append(login_visitor(f"user{i}", raw, servers))
        held = [sum(v.holder is s for v in visitors) for s in servers]
        if min(held) >= per_node:
            return visitors
    raise AssertionError("90 sessions did not reach every memcached server")


def whoami(client: Client) -> tuple[int, dict[str, Any] | None, HttpResponseBase]:
    response = client.get("/whoami/")
    body = json.loads(response.content) if response.status_code == 200 else None
    return response.status_code, body, response


def assert_unavailable(response: HttpResponseBase) -> None:
    assert response.status_code == 503, (response.status_code, response.content)
    assert int(response["Retry-After"]) > 0
    assert set_cookie_headers(response) == []


class Drive:
    """Repeated requests until a node is declared dead, checking every answer."""

    def __init__(self, doomed: Visitor, survivors: list[Visitor]) -> None:
        self.doomed = doomed
        self.survivors = survivors
        self.statuses: list[int] = []
        self.unavailable = 0
        self.failing_for = 0.0  # seconds from the first 503 to the first other answer

    def until_declared_dead(self) -> HttpResponseBase:
        """The doomed session's first answer that is not a 503 (the node is dead)."""
        started = time.monotonic()
        deadline = started + DECLARED_DEAD_WITHIN
        turn = 0
        while True:
            status, _body, response = whoami(self.doomed.client)
            self.statuses.append(status)
            if status != 503:
                self.failing_for = time.monotonic() - started
                return response
            assert_unavailable(response)
            self.unavailable += 1
            # Meanwhile, sessions on the other servers are served, read and written.
            survivor = self.survivors[turn % len(self.survivors)]
            turn += 1
            status, body, _ = whoami(survivor.client)
            self.statuses.append(status)
            assert status == 200 and body is not None
            assert body["username"] == survivor.username
            wrote = survivor.client.get("/set/", {"key": "turn", "value": str(turn)})
            self.statuses.append(wrote.status_code)
            assert wrote.status_code == 200
            assert time.monotonic() < deadline, (
                f"the node was not declared dead within {DECLARED_DEAD_WITHIN} s"
            )
            time.sleep(0.05)

    def assert_failed_until_declared_dead(self) -> None:
        """The node answered 503 for as long as pymemcache kept retrying it: at least
        one ``retry_timeout`` (it is retried only after that), and more than
        ``retry_attempts`` requests."""
        assert self.unavailable > POOL_OPTIONS["retry_attempts"], self.statuses
        assert self.failing_for >= POOL_OPTIONS["retry_timeout"], self.failing_for


def require_managed(servers: list[Server]) -> None:
    if len(servers) < 3 or not all(s.managed for s in servers):
        require_server("memcached", "the pool tests need three memcached servers started here")


@pytest.fixture
def pool_servers(memcached_servers: list[Server]) -> Iterator[list[Server]]:
    require_managed(memcached_servers)
    servers = memcached_servers[:3]
    flush_variant("pymemcache", {"memcached": servers})
    yield servers
    flush_variant("pymemcache", {"memcached": servers})


def test_a_killed_pool_node_answers_503_until_declared_dead_then_its_sessions_are_missing(
    pool_servers: list[Server], revive_servers: Callable[[Server], Server]
) -> None:
    """docs/engines.rst, "Cache configurations" (memcached): a failing server's sessions
    "answer 503 until the process declares it dead", "then they count as missing, so
    those users log in again". The
    sessions on the other two servers are read and written throughout; no 500."""
    servers = pool_servers
    config = cache_settings("pymemcache", memcached=servers, options=POOL_OPTIONS)
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE, ROOT_URLCONF=URLCONF):
        raw = RawCache("pymemcache", {"memcached": servers})
        visitors = spread_visitors(raw, servers)
        victim = visitors[0].holder
        doomed = [v for v in visitors if v.holder is victim]
        survivors = [v for v in visitors if v.holder is not victim]

        revive_servers(victim).kill()
        drive = Drive(doomed[0], survivors)
        first_served = drive.until_declared_dead()

        # 503 while pymemcache retried the node (retry_attempts failures, retry_timeout
        # apart), never a silent "anonymous" before it was declared dead.
        drive.assert_failed_until_declared_dead()
        assert first_served.status_code == 200
        assert json.loads(first_served.content)["authenticated"] is False
        assert_cookie_expired(first_served)
        for visitor in doomed[1:]:
            status, body, _ = whoami(visitor.client)
            drive.statuses.append(status)
            assert status == 200 and body is not None and body["authenticated"] is False
        for visitor in survivors:
            status, body, _ = whoami(visitor.client)
            drive.statuses.append(status)
            assert status == 200 and body is not None and body["username"] == visitor.username

        # The user logs in again; the new session lands on a live server.
        again = login_visitor(doomed[0].username, raw, servers)
        assert again.holder is not victim and again.holder.running()
        status, body, _ = whoami(again.client)
        assert status == 200 and body is not None and body["username"] == doomed[0].username
        assert 500 not in drive.statuses


def test_a_partitioned_pool_node_that_rejoins_serves_nothing_past_its_deadlines(
    pool_servers: list[Server], fault_proxy: Callable[[Server], FaultProxy]
) -> None:
    """A partition that heals, and the rejoin risk the docs state.

    docs/engines.rst, "Cache configurations" (memcached): "What a dead server held is
    not deleted: if other processes still reach it (a partial partition) or it rejoins
    after a partition, those records load again there [...]. Each is still checked
    against its signature and its own deadlines on every load, so the exposure is
    bounded by the record's earliest deadline: set ``ABSOLUTE_TIMEOUT`` (and
    ``IDLE_TIMEOUT``) to bound it, and restart (flush) a memcached server that was
    partitioned rather than letting it rejoin." (Also docs/design.rst, "Threat model",
    "Not covered".)

    Asserted here: while cut off, the node's sessions answer 503 until pymemcache
    declares it dead, then count as missing, and the other servers serve throughout;
    after the partition heals and ``dead_timeout`` passes, the node is back in
    rotation with the records it held (a session left alone there loads again); and
    the bound: the record of a session that was logged out while the node was away,
    still on the node, does not load once its own deadline (``ABSOLUTE_TIMEOUT``) has
    passed. The clock (``time.time``, which pymemcache's timeouts and the records'
    deadlines both read) is moved forward for the last two steps; memcached's own
    TTLs keep real time, so the node really still holds that record.
    """
    servers = pool_servers
    absolute_timeout = 300
    proxies = [fault_proxy(server) for server in servers]
    config = cache_settings(
        "pymemcache", memcached=[p.as_server() for p in proxies], options=POOL_OPTIONS
    )
    with (
        sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE, ROOT_URLCONF=URLCONF),
        override_settings(HARDENED_SESSIONS={"ABSOLUTE_TIMEOUT": absolute_timeout}),
    ):
        raw = RawCache("pymemcache", {"memcached": servers})  # straight to the servers
        visitors = spread_visitors(raw, servers)
        victim = visitors[0].holder
        away = proxies[servers.index(victim)]
        leaving, left_alone = [v for v in visitors if v.holder is victim][:2]
        survivors = [v for v in visitors if v.holder is not victim]
        leaving_key = raw.key(keys.store_key(leaving.key))

        away.refuse()
        drive = Drive(leaving, survivors)
        first_served = drive.until_declared_dead()
        drive.assert_failed_until_declared_dead()
        assert json.loads(first_served.content)["authenticated"] is False
        assert 500 not in drive.statuses

        # The user logs out while the node is away (the delete goes to another server),
        # then logs in again, on a live server.
        stolen = leaving.key  # a copy of the cookie, kept by someone else
        leaving.client.cookies[COOKIE] = leaving.key
        assert leaving.client.post("/logout/").status_code == 302
        again = login_visitor(leaving.username, raw, servers)
        assert again.holder is not victim
        assert memcached_ttl(victim, leaving_key) is not None  # still on the cut-off node

        away.restore()  # the partition heals
        with clock_shifted(POOL_OPTIONS["dead_timeout"] + 5):
            # After dead_timeout the node is back, with what it held.
            status, body, _ = whoami(left_alone.client)
            assert status == 200 and body is not None
            assert body["username"] == left_alone.username

        with clock_shifted(absolute_timeout + 60):
            # The node is in rotation: new sessions land on it and load ...
            for i in range(60):
                probe = login_visitor(f"probe{i}", raw, servers)
                if probe.holder is victim:
                    break
            else:
                raise AssertionError("60 new sessions and none landed on the rejoined node")
            assert whoami(probe.client)[1] == {
                "authenticated": True,
                "username": probe.username,
                "keys": [
                    "_auth_user_backend",
                    "_auth_user_hash",
                    "_auth_user_id",
                    "_hs_authenticated_at",  # the login's proof (hardened_sessions.reauth)
                ],
            }
            # ... and it still holds the logged-out session, unexpired by memcached ...
            assert memcached_ttl(victim, leaving_key) is not None
            thief = Client(raise_request_exception=False)
            thief.cookies[COOKIE] = stolen
            status, body, response = whoami(thief)
            # ... which does not load: its own absolute deadline has passed.
            assert status == 200 and body is not None and body["authenticated"] is False
            assert_cookie_expired(response)
        # Rejected as past its deadline, it was deleted from the node too (best effort).
        assert memcached_ttl(victim, leaving_key) is None


def test_the_cluster_cache_stores_other_values_through_djangos_own_serializer() -> None:
    """The package pickles nothing itself: ``RedisClusterCache`` borrows the serializer
    class that Django's ``RedisCache`` uses by default. Fails loudly if Django moves it."""
    from django.utils.module_loading import import_string

    from hardened_sessions.redis_cluster import DJANGO_SERIALIZER

    serializer = import_string(DJANGO_SERIALIZER)()
    assert serializer.dumps(7) == 7
    value = {"i": 1, "tag": ("t", 1)}
    assert serializer.loads(serializer.dumps(value)) == value
