"""Under gevent's monkey-patching, the engines stay within their connection pool's limit.

gevent turns every thread-local into a greenlet-local: a client kept per thread becomes
a client per greenlet, one connection per request in flight, however small the pool was
configured. Each test runs ``tests/support/gevent_worker.py`` in a subprocess (``patch_all()``
must run before anything else is imported): 200 greenlets, let go at once, each create,
load, save and load a session. Meanwhile this process counts the worker's TCP
connections to the server (psutil, from outside the worker, every few milliseconds),
and for Redis the server's own client list too. Every greenlet must finish with the
right data, and no count may exceed the pool's limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings
from django.db import connections

from tests.conftest import require_server
from tests.support.servers import Server, cache_settings, raw_redis

WORKER = Path(__file__).parent / "support" / "gevent_worker.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
GREENLETS = 200
LIMIT = 4
RUN_TIMEOUT = 150.0

CACHE_ENGINE = "hardened_sessions.backends.cache"
DB_ENGINE = "hardened_sessions.backends.db"
SQLITE_UNUSED = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}


class ConnectionCounter:
    """Peak number of the worker's TCP connections to ``port`` (and, for Redis, of the
    server's clients beyond those it had before), sampled until ``stop()``."""

    def __init__(self, pid: int, port: int, redis_server: Server | None = None) -> None:
        self._process = psutil.Process(pid)
        self._port = port
        self._redis = raw_redis(redis_server) if redis_server is not None else None
        self._redis_baseline = self._redis_clients() if self._redis is not None else 0
        self.peak = 0
        self.server_peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _redis_clients(self) -> int:
        assert self._redis is not None
        return len(self._redis.client_list())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = self._process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                return
            count = sum(
                1
                for conn in found
                if conn.raddr and conn.raddr.port == self._port and conn.status != "LISTEN"
            )
            self.peak = max(self.peak, count)
            if self._redis is not None:
                extra = self._redis_clients() - self._redis_baseline
                self.server_peak = max(self.server_peak, extra)
            self.samples += 1
            time.sleep(0.002)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._redis is not None:
            self._redis.close()


def run_worker(
    engine: str,
    cache: dict[str, Any] | None,
    database: dict[str, Any],
    port: int,
    redis_server: Server | None = None,
) -> tuple[dict[str, Any], ConnectionCounter]:
    config = {
        "secret_key": settings.SECRET_KEY,
        "engine": engine,
        "cache": cache or {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "database": database,
        "greenlets": GREENLETS,
    }
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    counter: ConnectionCounter | None = None
    try:
        assert worker.stdin is not None and worker.stdout is not None
        ready = worker.stdout.readline().strip()
        if ready != "ready":
            worker.kill()
            _, stderr = worker.communicate(timeout=RUN_TIMEOUT)
            pytest.fail(f"the gevent worker did not start: {ready!r}\n{stderr[-3000:]}")
        counter = ConnectionCounter(worker.pid, port, redis_server)
        counter.start()
        stdout, stderr = worker.communicate("go\n", timeout=RUN_TIMEOUT)
    finally:
        if counter is not None:
            counter.stop()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, stderr[-3000:]
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert result["patched"] == {"socket": True, "threading": True}
    assert counter.samples > 0
    return result, counter


def assert_bounded(result: dict[str, Any], counter: ConnectionCounter, *, server: bool) -> None:
    seen = f"peak {counter.peak} connections of the worker ({counter.samples} samples)"
    if server:
        seen += f", peak {counter.server_peak} more clients on the server"
    assert (result["done"], result["errors"]) == (GREENLETS, {}), seen
    assert counter.peak <= LIMIT, seen
    assert counter.server_peak <= LIMIT, seen


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        pytest.param(
            "django-redis",
            {
                "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
                "CONNECTION_POOL_KWARGS": {"max_connections": LIMIT, "timeout": 60},
            },
            id="django-redis",
        ),
        pytest.param(
            "django-rediscache",
            {"pool_class": "redis.BlockingConnectionPool", "max_connections": LIMIT, "timeout": 60},
            id="django-rediscache",
        ),
    ],
)
def test_cache_engine_on_redis_stays_within_max_connections(
    variant: str, options: dict[str, Any], redis_server: Server
) -> None:
    cache = cache_settings(variant, redis=redis_server, options=options)
    result, counter = run_worker(
        CACHE_ENGINE, cache, SQLITE_UNUSED, redis_server.port, redis_server=redis_server
    )
    assert_bounded(result, counter, server=True)


def test_cache_engine_on_memcached_stays_within_max_pool_size(
    memcached_server: Server,
) -> None:
    cache = cache_settings(
        "pymemcache",
        memcached=[memcached_server],
        options={"use_pooling": True, "max_pool_size": LIMIT},
    )
    result, counter = run_worker(CACHE_ENGINE, cache, SQLITE_UNUSED, memcached_server.port)
    assert_bounded(result, counter, server=False)


@pytest.mark.django_db(transaction=True, databases=["default", "postgresql"])
def test_db_engine_on_postgresql_stays_within_the_pool(db: None) -> None:
    if "postgresql" not in settings.DATABASES:
        require_server("postgresql", "needs HS_TEST_POSTGRES_URL (a database URL)")
    source = connections["postgresql"].settings_dict
    database = {key: source[key] for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")}
    # Django's own pool (Django 5.1+, psycopg_pool); a greenlet's connection goes back
    # to it at request_finished.
    database["CONN_MAX_AGE"] = 0
    database["OPTIONS"] = {"pool": {"min_size": 1, "max_size": LIMIT, "timeout": 60}}
    port = int(source["PORT"] or 5432)
    result, counter = run_worker(DB_ENGINE, None, database, port)
    assert_bounded(result, counter, server=False)
