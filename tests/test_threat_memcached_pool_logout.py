"""Threat: on a memcached pool, a logout reports success while the session stays live.

A pool client decides by itself which servers are dead. With pymemcache's
``HashClient`` each client (one per thread) keeps its own view: a short outage seen
by one thread's socket made that thread alone declare the session's server dead and
send the session's keys to the next server, for ``dead_timeout``. A logout, a
rotation or a revoke on that thread then deleted on the wrong server and returned
normally, while the other threads and processes went on loading the session from
its real server (and so did the glitched thread itself once ``dead_timeout``
passed). Sessions that thread created meanwhile landed on the next server, where
another process's logout never looked. With ``cached_db`` the row was deleted but
the cached copy still loaded.

docs/engines.rst, "Cache configurations" (memcached): a logout, rotation or revoke of a
session whose server the process sees failing or dead fails closed with 503, and
"success is reported only once the delete has reached it", whatever each client's view
of dead nodes (docs/design.rst, "Places that report success").

Set-up, as in production: three memcached servers, each behind a TCP proxy (the
pool's ``LOCATION``), two long-lived worker threads of this process and a second,
long-lived process. The glitch: only the first thread's connection to the session's
server is dropped, and for a few seconds new connections to that server go to a
black hole (they connect, then nothing answers), while the connections the other
thread and process already hold keep working. The first thread is driven until its
view of the server changes (503s, then an answer without that server), the network
heals, and that thread logs the session out, rotates it or revokes it. Either that
fails with ``SessionStoreUnavailable`` (``SessionRotationFailed`` for a rotation), or
the session must be gone for every thread and process, at once and after
``dead_timeout``. Once the pool is healthy again the same operation must succeed.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from pymemcache import HashClient
from pymemcache.client.rendezvous import RendezvousHash

from hardened_sessions import keys
from hardened_sessions.exceptions import SessionRotationFailed, SessionStoreUnavailable
from hardened_sessions.models import HardenedSession
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.memcached import (
    MemcachedByteStore,
    RendezvousNodes,
    unsupported_options,
)
from tests.support.faults import FaultProxy
from tests.support.servers import (
    RawCache,
    Server,
    cache_settings,
    flush_variant,
    free_port,
    sessions_cache,
)
from tests.support.settings import SQLITE_OPTIONS
from tests.support.views_http import clock_shifted

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "support" / "threat_memcached_pool_worker.py"

# docs/engines.rst, "Cache configurations", with short socket timeouts.
POOL_OPTIONS: dict[str, Any] = {
    "retry_attempts": 2,
    "retry_timeout": 1,
    "dead_timeout": 60,
    "connect_timeout": 0.5,
    "timeout": 0.5,
}
AFTER_DEAD_TIMEOUT = POOL_OPTIONS["dead_timeout"] + 5
VIEW_CHANGES_WITHIN = 20.0
CALL_TIMEOUT = 60.0
UNAVAILABLE = "unavailable"

ENGINES = {
    "cache": "hardened_sessions.backends.cache",
    "cached_db": "hardened_sessions.backends.cached_db",
}
engine_param = pytest.mark.parametrize(
    "engine",
    [
        pytest.param("cache"),
        pytest.param("cached_db", marks=pytest.mark.django_db(transaction=True)),
    ],
)


def store_class() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore


# --- the workers -------------------------------------------------------------------------


class Worker:
    """One long-lived thread that runs what it is given, as a WSGI worker thread does:
    its per-thread clients (and their view of the servers) live across calls."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args).result(timeout=CALL_TIMEOUT)

    def close(self) -> None:
        with suppress(Exception):
            self.run(connections.close_all)
        self._pool.shutdown(wait=True)


class OtherProcess:
    """A second Django process on the same pool, answering one request at a time."""

    def __init__(self, engine: str, cache: dict[str, Any]) -> None:
        config = {
            "secret_key": settings.SECRET_KEY,
            "engine": ENGINES[engine],
            "cache": cache,
            "database": str(connections["default"].settings_dict["NAME"]),
            "database_options": SQLITE_OPTIONS,
        }
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self._process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._next() == "ready"

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.strip())
        self._lines.put("")

    def _next(self) -> str:
        try:
            return self._lines.get(timeout=CALL_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"the other process did not answer{self._errors()}") from None

    def _errors(self) -> str:
        self._stderr.seek(0)
        return ": " + self._stderr.read()[-3000:]

    def call(self, op: str, key: str) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": op, "key": key}) + "\n")
        self._process.stdin.flush()
        line = self._next()
        assert line, f"the other process ended{self._errors()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def load(self, key: str) -> dict[str, Any] | str:
        answer = self.call("load", key)
        if answer.get("error") == "SessionStoreUnavailable":
            return UNAVAILABLE
        assert "error" not in answer, answer
        data: dict[str, Any] = answer["data"]
        return data

    def close(self) -> None:
        with suppress(Exception):
            assert self._process.stdin is not None
            self._process.stdin.write("\n")
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stderr.close()


# --- operations, run on a worker thread --------------------------------------------------


def create(data: dict[str, Any]) -> str:
    session = store_class()()
    session.update(data)
    session.save()
    key = session.session_key
    assert key is not None
    return str(key)


def loaded(key: str) -> Any:
    """A session object of ``key``, loaded (a request that has read its session)."""
    session = store_class()(key)
    session.load()
    return session


def load(key: str) -> dict[str, Any] | str:
    try:
        return dict(store_class()(key).items())
    except SessionStoreUnavailable:
        return UNAVAILABLE


def logout(session: Any, key: str) -> None:
    session.flush()


def rotate(session: Any, key: str) -> None:
    session.cycle_key()


def revoke(session: Any, key: str) -> None:
    # As the admin's revoke action: by key hash, on a fresh session object.
    store_class()().revoke(keys.store_key(key))


OPERATIONS = {"logout": logout, "rotation": rotate, "revoke": revoke}
FAILED_CLOSED = (SessionStoreUnavailable, SessionRotationFailed)


def attempt(operation: Callable[[Any, str], None], session: Any, key: str) -> BaseException | None:
    try:
        operation(session, key)
    except FAILED_CLOSED as exc:
        return exc
    return None


# --- the pool ----------------------------------------------------------------------------


@dataclass
class Pool:
    servers: list[Server]
    proxies: list[FaultProxy]
    hole: FaultProxy
    config: dict[str, Any]
    engine: str

    @property
    def raw(self) -> RawCache:
        return RawCache("pymemcache", {"memcached": self.servers})

    def holder(self, key: str) -> int | None:
        """Index of the server whose memory holds session ``key``'s record, if any."""
        full_key = self.raw.key(keys.store_key(key))
        held = [i for i, s in enumerate(self.servers) if self.raw_holds(s, full_key)]
        assert len(held) <= 1, f"the record is on {len(held)} servers"
        return held[0] if held else None

    @staticmethod
    def raw_holds(server: Server, full_key: str) -> bool:
        from tests.support.servers import memcached_ttl

        return memcached_ttl(server, full_key) is not None

    def row_exists(self, key: str) -> bool:
        return HardenedSession.objects.filter(pk=keys.store_key(key)).exists()


@pytest.fixture
def pool(
    memcached_servers: list[Server],
    black_hole: Callable[[], FaultProxy],
    request: pytest.FixtureRequest,
) -> Iterator[Pool]:
    servers = memcached_servers[:3]
    assert len(servers) == 3
    engine: str = request.node.callspec.params["engine"]
    proxies = [FaultProxy(s) for s in servers]
    hole = black_hole()
    flush_variant("pymemcache", {"memcached": servers})
    config = cache_settings(
        "pymemcache",
        memcached=[Server("memcached", "127.0.0.1", p.port) for p in proxies],
        options=POOL_OPTIONS,
    )
    try:
        with sessions_cache(config, SESSION_ENGINE=ENGINES[engine]):
            yield Pool(servers, proxies, hole, config, engine)
    finally:
        for proxy in proxies:
            proxy.close()
        flush_variant("pymemcache", {"memcached": servers})


@pytest.fixture
def workers(pool: Pool) -> Iterator[tuple[Worker, Worker, OtherProcess]]:
    w1, w2 = Worker("w1"), Worker("w2")
    other = OtherProcess(pool.engine, pool.config)
    try:
        yield w1, w2, other
    finally:
        other.close()
        w1.close()
        w2.close()


def glitch_one_thread(pool: Pool, w1: Worker, victim: int, w1_sockets: Any, key: str) -> list[Any]:
    """Break w1's connection to server ``victim`` and send new ones into a black hole,
    until w1's view of that server changes (503s, then an answer without it); then
    heal the network. The answers w1 got."""
    proxy = pool.proxies[victim]
    upstream = proxy.upstream
    proxy.redirect((pool.hole.host, pool.hole.port))
    proxy.drop(w1_sockets)
    seen: list[Any] = []
    deadline = time.monotonic() + VIEW_CHANGES_WITHIN
    try:
        while True:
            answer = w1.run(load, key)
            seen.append(answer)
            if UNAVAILABLE in seen and answer != UNAVAILABLE:
                return seen
            assert time.monotonic() < deadline, f"w1's view did not change: {seen}"
            time.sleep(0.05)
    finally:
        proxy.redirect(upstream)


def set_up_session(
    pool: Pool, w1: Worker, w2: Worker, other: OtherProcess, data: dict[str, Any]
) -> tuple[str, Any, int]:
    """A session created and loaded by w1, then loaded by w2 and the other process;
    returns its key, w1's loaded session object, and the server holding it."""
    key = w1.run(create, data)
    session = w1.run(loaded, key)  # also fills the cache of cached_db
    assert dict(session.items()) == data
    victim = pool.holder(key)
    assert victim is not None, "the session is on no server"
    w1_sockets = pool.proxies[victim].open_sockets()
    assert w1_sockets, "w1 holds no connection to the session's server"
    # The other thread and process connect now, and keep their connections.
    assert w2.run(load, key) == data
    assert other.load(key) == data
    seen = glitch_one_thread(pool, w1, victim, w1_sockets, key)
    assert seen[-1] in ({}, data), seen
    return key, session, victim


def assert_gone_everywhere(
    pool: Pool, key: str, w1: Worker, w2: Worker, other: OtherProcess, data: dict[str, Any]
) -> None:
    """No thread or process loads ``key`` now, nor w1 and w2 after ``dead_timeout``."""
    for who, answer in (("w1", w1.run(load, key)), ("w2", w2.run(load, key))):
        assert answer != data, f"{who} still loads the session"
    assert other.load(key) != data, "the other process still loads the session"
    assert pool.holder(key) is None, "a server still holds the session"
    if pool.engine == "cached_db":
        assert not pool.row_exists(key)
    with clock_shifted(AFTER_DEAD_TIMEOUT):
        assert w1.run(load, key) == {}, "w1 loads the session again after dead_timeout"
        assert w2.run(load, key) == {}, "w2 loads the session again after dead_timeout"
    assert other.load(key) == {}


@engine_param
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_glitched_threads_logout_never_succeeds_while_the_session_stays_live(
    engine: str, operation: str, pool: Pool, workers: tuple[Worker, Worker, OtherProcess]
) -> None:
    w1, w2, other = workers
    data = {"owner": "alice", "op": operation}
    key, session, _victim = set_up_session(pool, w1, w2, other, data)

    failure = w1.run(attempt, OPERATIONS[operation], session, key)
    if failure is None:
        assert_gone_everywhere(pool, key, w1, w2, other, data)
        return

    # Failed closed. Once the pool is healthy (past dead_timeout), the same operation in
    # a new request (the failed one remembers its failure) succeeds.
    assert isinstance(failure, FAILED_CLOSED)
    with clock_shifted(AFTER_DEAD_TIMEOUT):
        session = w1.run(loaded, key)
        assert dict(session.items()) == data
        assert w1.run(attempt, OPERATIONS[operation], session, key) is None
        if operation == "rotation":
            new_key = session.session_key
            assert new_key is not None and new_key != key
            assert w1.run(load, new_key) == data
            assert w2.run(load, new_key) == data
        for who, answer in (("w1", w1.run(load, key)), ("w2", w2.run(load, key))):
            assert answer == {}, f"{who} still loads the session"
    assert other.load(key) == {}
    assert pool.holder(key) is None
    if engine == "cached_db":
        assert not pool.row_exists(key)


@engine_param
def test_sessions_created_by_a_glitched_thread_are_logged_out_by_every_process(
    engine: str, pool: Pool, workers: tuple[Worker, Worker, OtherProcess]
) -> None:
    """Sessions created while one thread considers a server dead: the other process's
    logout must reach them (with HashClient they landed on the next server, where a
    client that saw the server alive never looked)."""
    w1, w2, other = workers
    set_up_session(pool, w1, w2, other, {"owner": "first"})
    created = []
    for n in range(20):
        data = {"owner": f"user{n}"}
        try:
            key = w1.run(create, data)
        except SessionStoreUnavailable:
            # cached_db drops a cached copy before it inserts; on a dead server it can't.
            assert engine == "cached_db"
            continue
        assert w1.run(load, key) == data  # in use: cached_db also caches it
        created.append((key, data))
    assert len(created) >= 5

    ended = 0
    for key, data in created:
        # Where the other process looks (it saw no failure), the session is.
        assert other.load(key) == data
        answer = other.call("delete", key)
        if "error" in answer:
            assert answer["error"] == "SessionStoreUnavailable", answer
            continue
        ended += 1
        assert w1.run(load, key) != data, "w1 still loads a session logged out elsewhere"
        assert w2.run(load, key) != data
        assert pool.holder(key) is None, "a server still holds a logged-out session"
        with clock_shifted(AFTER_DEAD_TIMEOUT):
            assert w1.run(load, key) == {}, "w1 loads it again after dead_timeout"
    assert ended, "no logout succeeded"


@engine_param
def test_a_connection_cut_while_idle_is_retried_not_counted_as_a_failure(
    engine: str, pool: Pool, workers: tuple[Worker, Worker, OtherProcess]
) -> None:
    """Only w1's idle connection to the session's server drops (the server stays up):
    w1's next load and logout go through on a new connection, and the logout ends the
    session everywhere."""
    w1, w2, other = workers
    data = {"owner": "bob"}
    key = w1.run(create, data)
    session = w1.run(loaded, key)
    victim = pool.holder(key)
    assert victim is not None
    w1_sockets = pool.proxies[victim].open_sockets()
    assert w2.run(load, key) == data
    assert other.load(key) == data
    pool.proxies[victim].drop(w1_sockets)
    assert w1.run(load, key) == data
    pool.proxies[victim].drop(pool.proxies[victim].open_sockets())
    assert w1.run(attempt, logout, session, key) is None
    assert_gone_everywhere(pool, key, w1, w2, other, data)


def test_placement_is_rendezvous_over_the_configured_servers() -> None:
    """The store's home of a key is the rendezvous choice over LOCATION (the placement
    of earlier releases), whatever the order of the list."""
    names = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211", "/run/memcached.sock"]
    servers: list[Any] = [(f"10.0.0.{n}", 11211) for n in (1, 2, 3)] + ["/run/memcached.sock"]
    nodes = RendezvousNodes()
    for name in names:
        nodes.add_node(name)
    store = MemcachedByteStore(servers, lambda s: None, str, shared=False)
    backwards = MemcachedByteStore(servers[::-1], lambda s: None, str, shared=False)
    homes = []
    for n in range(2000):
        k = f"hardened_sessions:{n:064x}"
        home = names[store.home(k)]
        assert home == nodes.get_node(k) == names[::-1][backwards.home(k)]
        homes.append(home)
    assert all(350 < homes.count(name) < 650 for name in names)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"hasher": RendezvousHash}, "hasher"),
        ({"retry_attemps": 2}, "retry_attemps"),
        ({"dead_timeout": -1}, "dead_timeout"),
        ({"retry_timeout": "1"}, "retry_timeout"),
    ],
)
def test_a_hasher_or_an_unknown_option_is_refused(options: dict[str, Any], complaint: str) -> None:
    assert any(complaint in problem for problem in unsupported_options(options))


def test_a_configured_hasher_fails_closed(memcached_servers: list[Server]) -> None:
    """Another placement would send deletes where other clients do not look."""
    options = {**POOL_OPTIONS, "hasher": RendezvousHash}  # a valid HashClient option
    config = cache_settings("pymemcache", memcached=memcached_servers, options=options)
    with (
        sessions_cache(config, SESSION_ENGINE=ENGINES["cache"]),
        pytest.raises(ImproperlyConfigured, match="hasher"),
    ):
        store_class()("a" * 32).load()


def test_with_every_server_down_a_new_session_is_unavailable_not_a_key_failure() -> None:
    """No live server to place it on: 503 (``SessionStoreUnavailable``), not the random
    source's ``SessionKeyUnavailable`` after KEY_ATTEMPTS redraws."""
    config = cache_settings(
        "pymemcache",
        memcached=[Server("memcached", "127.0.0.1", free_port()) for _ in range(3)],
        options={**POOL_OPTIONS, "retry_attempts": 0},
    )
    with sessions_cache(config, SESSION_ENGINE=ENGINES["cache"]):
        for n in range(6):
            with pytest.raises(SessionStoreUnavailable):
                create({"n": n})
        assert load("a" * 32) == {}  # every server is dead: sessions count as missing


def test_servers_are_named_and_placed_as_pymemcache_names_them() -> None:
    """LOCATION read as pymemcache's HashClient reads it (so sessions stay where an earlier
    release put them, and a change in pymemcache's reading shows up here)."""
    location = ["127.0.0.1:11211", "[::1]:11212", "unix:/tmp/hs.sock", "localhost", "h:1"]
    config = cache_settings("pymemcache", memcached=[Server("memcached", "127.0.0.1", 1)])
    config["LOCATION"] = location
    with sessions_cache(config, SESSION_ENGINE=ENGINES["cache"]) as alias:
        store: Any = store_for_cache(alias)
        names = store.server_names()
        assert names == list(HashClient(location).clients)
        nodes = RendezvousNodes()
        for name in names:
            nodes.add_node(name)
        for n in range(500):
            k = f"hardened_sessions:{n:064x}"
            assert names[store.home(k)] == nodes.get_node(k)


# Options pymemcache's HashClient accepts (Django builds one when settings change), but
# that the store cannot honour.
@pytest.mark.parametrize("options", [{"hasher": RendezvousHash}, {"dead_timeout": -1}])
def test_a_memcached_option_the_store_cannot_honour_is_a_check_error(
    options: dict[str, Any], memcached_servers: list[Server]
) -> None:
    from hardened_sessions.checks import check_settings

    config = cache_settings("pymemcache", memcached=memcached_servers, options=options)
    with sessions_cache(config, SESSION_ENGINE="hardened_sessions.backends.cache"):
        ids = [message.id for message in check_settings()]
    assert "hardened_sessions.E105" in ids
