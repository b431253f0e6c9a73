"""Real Redis and memcached servers for the tests, and the session caches built on them.

Registered as a pytest plugin by ``tests/conftest.py``. Session-scoped fixtures start
the servers once per run, each on a free loopback port, and stop them at the end:

* ``redis_server``: one ``redis-server`` (no persistence, in a temporary directory);
* ``second_redis_server``: another one (a stand-in "replica" that holds other data);
* ``memcached_servers``: three ``memcached`` processes (a pool), ``memcached_server``
  the first of them.

Each is a :class:`Server` handle: ``.url`` / ``.address`` / ``.host`` / ``.port``, and
``.stop()``, ``.kill()``, ``.start()``, ``with server.stopped(): ...`` to take it away
in the middle of a test. A test that stops a server registers it with the
``revive_servers`` fixture (or uses ``stopped()``), so the server is back for the next
test whatever the outcome. A stopped server comes back empty: nothing is persisted.
To cut the network while the server keeps its data (a partition), put a
:class:`tests.support.faults.FaultProxy` in front of it (``fault_proxy`` fixture) and
``refuse()`` through that.

Servers can be named instead of started: ``HS_TEST_REDIS_URL=redis://host:port/db``
and ``HS_TEST_MEMCACHED=host:port,host:port``. Then no process is started, nothing
there is flushed wholesale (only this run's keys, which carry :data:`RUN_TOKEN` in
their prefix, are ever deleted), and tests that need to stop or cut a server skip
(or fail under ``CI=true``, see ``tests.conftest.require_server``). Without the
variable and without the binary, the fixtures give up the same way.

Process control is mirakuru's ``TCPExecutor``: it starts a command, waits until the
port accepts connections, and stops or kills the whole process group, and one
executor can be stopped and started again on the same port, which is what the
fault-injection tests need, for Redis and memcached alike. pytest-redis covers Redis
only (nothing comparable exists for memcached) and keeps the process behind its own
fixtures, so restarting a server mid-test would mean reaching into its internals.

``session_cache`` runs a test once per cache configuration that the cache engines
serve (ids ``locmem``, ``django-redis``, ``django-rediscache``, ``pymemcache``), as
``CACHES["sessions"]`` with ``SESSION_CACHE_ALIAS = "sessions"``, each with its own
``KEY_PREFIX`` and ``VERSION`` so that the engines' key handling is exercised; it
empties that cache before and after the test. ``raw_session_cache`` (a
:class:`RawCache`) reads and writes what that cache holds around every serializer.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import override_settings
from mirakuru import TCPExecutor
from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired

from tests.conftest import require_server

__all__ = [
    "CACHE_VARIANTS",
    "RUN_TOKEN",
    "SESSIONS_ALIAS",
    "RawCache",
    "Server",
    "ServerSet",
    "cache_settings",
    "flush_variant",
    "memcached_keys",
    "memcached_ttl",
    "raw_memcached",
    "raw_redis",
    "servers_for",
    "sessions_cache",
    "variant_cache",
]

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 15.0
START_ATTEMPTS = 3

# Distinguishes this run's keys on servers named by environment variables, which
# other runs may share: only keys carrying it are ever deleted there.
RUN_TOKEN = secrets.token_hex(4)

SESSIONS_ALIAS = "sessions"

# id -> (cache KEY_PREFIX, VERSION). Distinct per variant, and unlike Django's
# defaults (empty prefix, version 1), so a store that ignored them would be noticed.
CACHE_VARIANTS: dict[str, tuple[str, int]] = {
    "locmem": (f"hs{RUN_TOKEN}-lm", 2),
    "django-redis": (f"hs{RUN_TOKEN}-dr", 3),
    "django-rediscache": (f"hs{RUN_TOKEN}-rc", 4),
    "pymemcache": (f"hs{RUN_TOKEN}-mc", 5),
}

LOCMEM_DEFAULT = {
    "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
    "LOCATION": "hardened-sessions-tests",
}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Server:
    """One Redis or memcached server: started here (``managed``) or named by a variable."""

    def __init__(
        self,
        kind: str,
        host: str,
        port: int,
        *,
        command: list[str] | None = None,
        url: str | None = None,
    ) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self._url = url
        self._executor: TCPExecutor | None = None
        if command is not None:
            self._executor = TCPExecutor(
                command,
                host=host,
                port=port,
                timeout=START_TIMEOUT,
                sleep=0.02,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def __repr__(self) -> str:
        origin = "managed" if self.managed else "external"
        return f"<Server {self.kind} {self.address} {origin}>"

    @property
    def managed(self) -> bool:
        """True when this suite started the server (and may stop or flush it)."""
        return self._executor is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        if self._url is not None:
            return self._url
        if self.kind == "redis":
            return f"redis://{self.address}/0"
        return self.address

    # -- process control ------------------------------------------------------

    def _require_managed(self, what: str) -> TCPExecutor:
        if self._executor is None:
            require_server(
                self.kind,
                f"{what} needs a {self.kind} server started by the tests; "
                f"{self.address} was named by an environment variable",
            )
        assert self._executor is not None
        return self._executor

    def running(self) -> bool:
        return self._executor is None or self._executor.running()

    def start(self) -> None:
        """Start the server (a no-op when it runs); it comes back empty."""
        executor = self._require_managed("starting a server")
        if not executor.running():
            executor.start()

    def stop(self) -> None:
        """Shut the server down (SIGTERM) and wait until it is gone."""
        executor = self._require_managed("stopping a server")
        if executor.running():
            executor.stop()

    def kill(self) -> None:
        """Kill the server outright (SIGKILL), as a crash would."""
        executor = self._require_managed("killing a server")
        if executor.running():
            executor.kill(sig=signal.SIGKILL)

    @contextmanager
    def stopped(self) -> Iterator[Server]:
        """The server is down inside the block and up again after it, whatever happens."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def shutdown(self) -> None:
        """End of the run: stop a managed server for good."""
        if self._executor is not None and self._executor.running():
            self._executor.stop()

    # -- data -----------------------------------------------------------------

    def flush(self, prefix: str | None = None) -> None:
        """Empty a managed server. On an external one, delete only the keys under
        ``prefix`` (this run's keys carry :data:`RUN_TOKEN`), or nothing without one."""
        if not self.running() or (not self.managed and not prefix):
            return
        if self.kind == "redis":
            client = raw_redis(self)
            try:
                if self.managed:
                    client.flushall()
                else:
                    for key in client.scan_iter(match=f"{prefix}*", count=500):
                        client.delete(key)
            finally:
                client.close()
            return
        client = raw_memcached(self)
        try:
            if self.managed:
                client.flush_all(noreply=False)
            else:
                for key in memcached_keys(self):
                    if prefix and key.startswith(prefix):
                        client.delete(key, noreply=False)
        finally:
            client.close()


class ServerSet:
    """Starts managed servers on demand and stops them all at the end of the run."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.started: list[Server] = []

    def _binary(self, name: str, env_var: str) -> str:
        path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
        if path is None:
            require_server(name, f"{name} is not installed and {env_var} is not set")
        assert path is not None
        return path

    def launch(self, kind: str, command: Callable[[int], list[str]]) -> Server:
        # A free port can be taken by someone else between the probe and the start
        # (other test runs share the machine): try another one, a bounded number of times.
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            server = Server(kind, LOOPBACK, port, command=command(port))
            try:
                server.start()
            except (AlreadyRunning, ProcessExitedWithError, TimeoutExpired):
                server.shutdown()
                if attempt == START_ATTEMPTS - 1:
                    raise
                continue
            self.started.append(server)
            return server
        raise AssertionError("unreachable")

    def redis(self) -> Server:
        binary = self._binary("redis-server", "HS_TEST_REDIS_URL")

        def command(port: int) -> list[str]:
            workdir = self.base_dir / f"redis-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            return [
                binary,
                "--port", str(port),
                "--bind", LOOPBACK,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(workdir / "redis.log"),
                "--daemonize", "no",
                "--protected-mode", "yes",
            ]  # fmt: skip

        return self.launch("redis", command)

    def memcached(self) -> Server:
        binary = self._binary("memcached", "HS_TEST_MEMCACHED")

        def command(port: int) -> list[str]:
            args = [binary, "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "64", "-t", "2"]
            if os.geteuid() == 0:
                # memcached refuses to run as root without naming the user to run as.
                args += ["-u", pwd.getpwuid(0).pw_name]
            return args

        return self.launch("memcached", command)

    def shutdown(self) -> None:
        for server in reversed(self.started):
            with suppress(Exception):
                server.shutdown()
        self.started.clear()


def _external_redis() -> Server | None:
    url = os.environ.get("HS_TEST_REDIS_URL", "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    return Server("redis", parts.hostname or LOOPBACK, parts.port or 6379, url=url)


def _external_memcached() -> list[Server] | None:
    spec = os.environ.get("HS_TEST_MEMCACHED", "").strip()
    if not spec:
        return None
    servers = []
    for item in spec.split(","):
        host, _, port = item.strip().rpartition(":")
        servers.append(Server("memcached", host or LOOPBACK, int(port)))
    return servers


def raw_redis(server: Server) -> Any:
    """A plain redis-py client on ``server``: bytes in, bytes out, no serializer."""
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)


def raw_memcached(server: Server) -> Any:
    """A plain pymemcache client on ``server``: no serde, TCP_NODELAY on."""
    from pymemcache.client.base import Client

    return Client((server.host, server.port), no_delay=True, connect_timeout=5, timeout=5)


def memcached_command(server: Server, command: bytes, *, until: bytes) -> bytes:
    """Send one text-protocol command on a fresh connection; read up to ``until``."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(command)
        answer = b""
        while not answer.endswith(until):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def memcached_ttl(server: Server, key: str) -> int | None:
    """Seconds ``key`` has left on ``server`` (meta get), -1 for none, None when absent."""
    answer = memcached_command(server, f"mg {key} t\r\n".encode(), until=b"\r\n")
    if not answer.startswith(b"HD"):
        return None
    for flag in answer.split():
        if flag.startswith(b"t"):
            return int(flag[1:])
    raise AssertionError(f"no TTL in {answer!r}")


def memcached_keys(server: Server) -> list[str]:
    """Every key stored on ``server`` (``lru_crawler metadump``)."""
    from urllib.parse import unquote

    answer = memcached_command(server, b"lru_crawler metadump all\r\n", until=b"END\r\n")
    keys = []
    for line in answer.splitlines():
        if line.startswith(b"key="):
            keys.append(unquote(line.split()[0][4:].decode()))
    return keys


class _Repickled:
    """Pickles into ``pickle.loads(value)``: put in a LocMemCache through its own API,
    the cache's ``get`` unpickles ``value``, as it would a pickle stored by ``set``."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        import _pickle  # pickle.loads itself, even while a test has replaced pickle's

        return (_pickle.loads, (self.value,))


class RawCache:
    """What a ``session_cache`` variant holds, read and written around every serializer.

    Redis: a plain redis-py client on the primary. memcached: plain pymemcache
    clients, one per server (the server holding a key is found by asking each).
    LocMemCache: the package's own byte store of the alias (its inspection methods),
    where the records live, not in the cache. Keys are full cache keys (see :meth:`key`).
    """

    def __init__(self, variant: str, servers: dict[str, Any], alias: str = SESSIONS_ALIAS) -> None:
        self.variant = variant
        self.alias = alias
        self.prefix, self.version = CACHE_VARIANTS[variant]
        self.redis_server: Server | None = servers.get("redis")
        self.memcached_servers: list[Server] = list(servers.get("memcached") or ())

    @property
    def cache(self) -> Any:
        from django.core.cache import caches

        return caches[self.alias]

    def key(self, store_key: str) -> str:
        """The full key a session is stored under, by the cache's own key function."""
        return str(self.cache.make_key("hardened_sessions:" + store_key))

    @property
    def locmem(self) -> Any:
        """The byte store holding a LocMemCache alias's records."""
        from hardened_sessions.stores import store_for_cache

        return store_for_cache(self.alias)

    def _memcached_holder(self, key: str) -> Server | None:
        for server in self.memcached_servers:
            if memcached_ttl(server, key) is not None:
                return server
        return None

    def get(self, key: str) -> bytes | None:
        if self.variant == "locmem":
            return self.locmem.raw_get(key)  # type: ignore[no-any-return]
        if self.redis_server is not None:
            client = raw_redis(self.redis_server)
            try:
                value = client.get(key)
            finally:
                client.close()
            return None if value is None else bytes(value)
        holder = self._memcached_holder(key)
        if holder is None:
            return None
        client = raw_memcached(holder)
        try:
            value = client.get(key)
        finally:
            client.close()
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes, ttl: int = 300, *, pickled: bool = False) -> None:
        """Store ``value`` as is. ``pickled`` marks a memcached entry with pymemcache's
        pickle flag, as ``PyMemcacheCache`` itself would."""
        if self.variant == "locmem":
            self.locmem.raw_set(key, value, ttl)
            if pickled:  # the cache's own API unpickles it, as it would a pickle it wrote
                name = key.split(":", 2)[2]  # before the cache's KEY_PREFIX and VERSION
                self.cache.set(name, _Repickled(value), ttl)
            return
        if self.redis_server is not None:
            client = raw_redis(self.redis_server)
            try:
                client.set(key, value, ex=ttl)
            finally:
                client.close()
            return
        # On every server of the pool: whichever node a client picks for the key (the
        # session store's placement, or the stock cache API's) holds the value.
        for stored in self._on_every_memcached(
            lambda client: client.set(
                key, value, expire=ttl, noreply=False, flags=1 if pickled else 0
            )
        ):
            assert stored

    def delete(self, key: str) -> None:
        if self.variant == "locmem":
            self.locmem.raw_delete(key)
            return
        if self.redis_server is not None:
            client = raw_redis(self.redis_server)
            try:
                client.delete(key)
            finally:
                client.close()
            return
        self._on_every_memcached(lambda client: client.delete(key, noreply=False))

    def _on_every_memcached(self, action: Callable[[Any], Any]) -> list[Any]:
        """``action(client)`` on a plain client of each memcached server; the results."""
        results = []
        for server in self.memcached_servers:
            client = raw_memcached(server)
            try:
                results.append(action(client))
            finally:
                client.close()
        return results

    def ttl(self, key: str) -> float | None:
        """Seconds left before the entry expires; None when absent or without expiry."""
        if self.variant == "locmem":
            return self.locmem.raw_ttl(key)  # type: ignore[no-any-return]
        if self.redis_server is not None:
            client = raw_redis(self.redis_server)
            try:
                left = client.pttl(key)
            finally:
                client.close()
            return None if left < 0 else left / 1000
        for server in self.memcached_servers:
            left = memcached_ttl(server, key)
            if left is not None:
                return None if left < 0 else float(left)
        return None

    def keys(self) -> list[str]:
        """Every key of this variant (its ``KEY_PREFIX``) that the cache holds."""
        if self.variant == "locmem":
            found = self.locmem.raw_keys()
        elif self.redis_server is not None:
            client = raw_redis(self.redis_server)
            try:
                found = [k.decode() for k in client.scan_iter(match=f"{self.prefix}:*")]
            finally:
                client.close()
        else:
            found = [k for server in self.memcached_servers for k in memcached_keys(server)]
        return sorted(k for k in found if k.startswith(self.prefix + ":"))


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSet]:
    servers = ServerSet(tmp_path_factory.mktemp("servers"))
    try:
        yield servers
    finally:
        servers.shutdown()


@pytest.fixture(scope="session")
def redis_server(server_set: ServerSet) -> Server:
    """The Redis server of this run (``HS_TEST_REDIS_URL``, or one started here)."""
    return _external_redis() or server_set.redis()


@pytest.fixture(scope="session")
def second_redis_server(server_set: ServerSet) -> Server:
    """Another Redis server, always started here: a "replica" holding different data."""
    return server_set.redis()


@pytest.fixture(scope="session")
def memcached_servers(server_set: ServerSet) -> list[Server]:
    """A pool of memcached servers (``HS_TEST_MEMCACHED``, or three started here)."""
    return _external_memcached() or [server_set.memcached() for _ in range(3)]


@pytest.fixture(scope="session")
def memcached_server(memcached_servers: list[Server]) -> Server:
    """One memcached server (the first of the pool)."""
    return memcached_servers[0]


@pytest.fixture
def revive_servers() -> Iterator[Callable[[Server], Server]]:
    """``revive(server)`` registers a server that the test will stop; after the test
    it is started again whatever happened (it comes back empty)."""
    touched: list[Server] = []

    def revive(server: Server) -> Server:
        touched.append(server)
        return server

    yield revive
    for server in touched:
        if server.managed and not server.running():
            server.start()


def cache_settings(
    variant: str,
    *,
    redis: Server | None = None,
    memcached: list[Server] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``CACHES`` entry of one ``session_cache`` variant on the given servers."""
    prefix, version = CACHE_VARIANTS[variant]
    config: dict[str, Any]
    if variant == "locmem":
        config = {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"hardened-sessions-tests-sessions-{RUN_TOKEN}",
        }
    elif variant == "django-redis":
        assert redis is not None
        config = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis.url,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    elif variant == "django-rediscache":
        assert redis is not None
        config = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis.url}
    elif variant == "pymemcache":
        assert memcached
        config = {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": [server.address for server in memcached],
            "OPTIONS": {"no_delay": True},
        }
    else:
        raise ValueError(f"unknown cache variant {variant!r}")
    if options:
        config.setdefault("OPTIONS", {}).update(options)
    config["KEY_PREFIX"] = prefix
    config["VERSION"] = version
    return config


def servers_for(variant: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The server fixtures a variant needs, as ``cache_settings`` keyword arguments."""
    if variant in ("django-redis", "django-rediscache"):
        return {"redis": request.getfixturevalue("redis_server")}
    if variant == "pymemcache":
        return {"memcached": request.getfixturevalue("memcached_servers")}
    return {}


def flush_variant(variant: str, servers: dict[str, Any]) -> None:
    """Empty what ``variant`` stores, touching only this suite's own data."""
    prefix = CACHE_VARIANTS[variant][0]
    if "redis" in servers:
        servers["redis"].flush(prefix)
    for server in servers.get("memcached") or ():
        server.flush(prefix)


@contextmanager
def sessions_cache(config: dict[str, Any], **more_settings: Any) -> Iterator[str]:
    """``CACHES["sessions"] = config`` and ``SESSION_CACHE_ALIAS = "sessions"`` inside."""
    from django.core.cache import caches

    with override_settings(
        CACHES={"default": dict(LOCMEM_DEFAULT), SESSIONS_ALIAS: config},
        SESSION_CACHE_ALIAS=SESSIONS_ALIAS,
        **more_settings,
    ):
        try:
            if config["BACKEND"].endswith("LocMemCache"):
                caches[SESSIONS_ALIAS].clear()
            yield SESSIONS_ALIAS
        finally:
            with suppress(Exception):
                caches[SESSIONS_ALIAS].close()


@contextmanager
def variant_cache(variant: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``sessions`` alias on ``variant``, emptied of this suite's data before and after."""
    servers = servers_for(variant, request)
    flush_variant(variant, servers)
    try:
        with sessions_cache(cache_settings(variant, **servers)) as alias:
            yield alias
    finally:
        flush_variant(variant, servers)


@pytest.fixture(params=list(CACHE_VARIANTS), ids=list(CACHE_VARIANTS))
def session_cache(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each cache configuration the cache engines serve, as the ``sessions`` alias."""
    with variant_cache(request.param, request) as alias:
        yield alias


@pytest.fixture
def raw_session_cache(session_cache: str, request: pytest.FixtureRequest) -> RawCache:
    """Raw access (no serializer) to what the current ``session_cache`` variant holds."""
    variant: str = request.node.callspec.params["session_cache"]
    return RawCache(variant, servers_for(variant, request), session_cache)
