"""System checks on the session cache's client and on the sessions table.

* ``hardened_sessions.E210``: a Redis session cache with ``decode_responses`` on answers
  text where the engine reads bytes: every session load failed with a TypeError (a 500).
  Found in the settings wherever each backend takes it: ``OPTIONS`` (Django's
  ``RedisCache``, ``RedisClusterCache``), ``OPTIONS["CONNECTION_POOL_KWARGS"]``
  (django-redis) and the ``LOCATION`` URLs' query strings, where redis-py passes the
  value on as a string, so that even ``?decode_responses=False`` turns decoding on.
* ``hardened_sessions.E211``: a cache over Redis or memcached whose client library is
  not installed is an error naming the package extra, not a traceback out of the checks.
  The libraries' absence is simulated the way Python sees a missing package: ``None``
  in ``sys.modules`` for the package and its submodules. (Django's own cache checks
  instantiate every cache, so with ``PyMemcacheCache`` or django-redis a full ``check``
  still stops at Django's ImportError before ours runs; ``check --tag sessions`` shows
  E211. Django's ``RedisCache`` imports redis only at its first command: there E211 is
  what a full ``check`` reports, where the first session request used to fail.)
* ``hardened_sessions.W213``: a cache (any alias) whose ``BACKEND`` is the Redis Cluster
  backend's old path, ``hardened_sessions.cache.RedisClusterCache``: it still loads,
  with a ``DeprecationWarning``, until the next major release.
* ``hardened_sessions.W212`` (``check --database``): the sessions table is missing where
  the sessions are routed (migrations not applied).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import CheckMessage, Tags, run_checks
from django.db import connections
from django.test import override_settings

from tests.support.routers import SessionsAliasRouter

pytestmark = pytest.mark.django_db

REDIS_URL = "redis://127.0.0.1:6379/0"
DJANGO_REDIS = "django.core.cache.backends.redis.RedisCache"
DJANGO_REDIS_PACKAGE = "django_redis.cache.RedisCache"
CLUSTER = "hardened_sessions.redis_cluster.RedisClusterCache"
OLD_CLUSTER = "hardened_sessions.cache.RedisClusterCache"
PYMEMCACHE = "django.core.cache.backends.memcached.PyMemcacheCache"
CACHE_ENGINES = ["hardened_sessions.backends.cache", "hardened_sessions.backends.cached_db"]


def _messages(
    cache: dict[str, Any], engine: str = CACHE_ENGINES[0], tags: list[str] | None = None
) -> list[CheckMessage]:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sessions": cache,
    }
    with override_settings(CACHES=caches, SESSION_CACHE_ALIAS="sessions", SESSION_ENGINE=engine):
        return [m for m in run_checks(tags=tags) if m.id and m.id.startswith("hardened_sessions.")]


def _ids(cache: dict[str, Any], engine: str = CACHE_ENGINES[0]) -> list[str]:
    return [m.id for m in _messages(cache, engine) if m.id]


# --- E210: decode_responses ---------------------------------------------------------------

DECODING: dict[str, dict[str, Any]] = {
    "django-options": {
        "BACKEND": DJANGO_REDIS,
        "LOCATION": REDIS_URL,
        "OPTIONS": {"decode_responses": True},
    },
    "django-url": {"BACKEND": DJANGO_REDIS, "LOCATION": f"{REDIS_URL}?decode_responses=True"},
    "django-url-false-is-a-string": {
        "BACKEND": DJANGO_REDIS,
        "LOCATION": f"{REDIS_URL}?decode_responses=False",
    },
    "django-second-url-of-a-string": {
        "BACKEND": DJANGO_REDIS,
        "LOCATION": f"{REDIS_URL};redis://127.0.0.1:6380/0?db=0&decode_responses=1",
    },
    "django-redis-pool-kwargs": {
        "BACKEND": DJANGO_REDIS_PACKAGE,
        "LOCATION": REDIS_URL,
        "OPTIONS": {"CONNECTION_POOL_KWARGS": {"decode_responses": True}},
    },
    "django-redis-url": {
        "BACKEND": DJANGO_REDIS_PACKAGE,
        "LOCATION": [REDIS_URL, f"{REDIS_URL}?decode_responses=yes"],
    },
    "cluster-options": {
        "BACKEND": CLUSTER,
        "LOCATION": ["redis://127.0.0.1:7000"],
        "OPTIONS": {"decode_responses": True},
    },
}
NOT_DECODING: dict[str, dict[str, Any]] = {
    "django-plain": {"BACKEND": DJANGO_REDIS, "LOCATION": REDIS_URL},
    "django-options-false": {
        "BACKEND": DJANGO_REDIS,
        "LOCATION": REDIS_URL,
        "OPTIONS": {"decode_responses": False},
    },
    "django-url-other-options": {
        "BACKEND": DJANGO_REDIS,
        "LOCATION": f"{REDIS_URL}?socket_timeout=1&health_check_interval=10",
    },
    "django-redis-pool-kwargs-false": {
        "BACKEND": DJANGO_REDIS_PACKAGE,
        "LOCATION": REDIS_URL,
        "OPTIONS": {"CONNECTION_POOL_KWARGS": {"decode_responses": False, "max_connections": 5}},
    },
}


@pytest.mark.parametrize("engine", CACHE_ENGINES)
@pytest.mark.parametrize("config", list(DECODING))
def test_decode_responses_is_e210(config: str, engine: str) -> None:
    messages = [m for m in _messages(DECODING[config], engine) if m.id == "hardened_sessions.E210"]
    assert len(messages) == 1
    assert "'sessions'" in messages[0].msg
    # The URL's password, if any, is not echoed: the message names the URL by position.
    assert "redis://" not in messages[0].msg


@pytest.mark.parametrize("config", list(NOT_DECODING))
def test_no_decode_responses_is_no_e210(config: str) -> None:
    assert "hardened_sessions.E210" not in _ids(NOT_DECODING[config])


def test_decode_responses_on_a_cache_the_sessions_do_not_use_is_no_e210() -> None:
    with override_settings(
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "other": DECODING["django-options"],
        },
        SESSION_ENGINE="hardened_sessions.backends.cache",
    ):
        assert "hardened_sessions.E210" not in [m.id for m in run_checks()]


def test_decode_responses_under_the_db_engine_is_no_e210() -> None:
    assert "hardened_sessions.E210" not in _ids(
        DECODING["django-options"], "hardened_sessions.backends.db"
    )


def test_the_url_password_is_not_in_the_message() -> None:
    config = {
        "BACKEND": DJANGO_REDIS,
        "LOCATION": "redis://:s3cret@127.0.0.1:6379/0?decode_responses=1",
    }
    (message,) = [m for m in _messages(config) if m.id == "hardened_sessions.E210"]
    assert "s3cret" not in message.msg


# --- E211: client library not installed ----------------------------------------------------


def _uninstall(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``import package`` (and its submodules) fail as if it were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


MISSING: dict[str, tuple[str, dict[str, Any], str]] = {
    "pymemcache": (
        "pymemcache",
        {"BACKEND": PYMEMCACHE, "LOCATION": "127.0.0.1:11211"},
        "memcached",
    ),
    "redis-under-django": ("redis", {"BACKEND": DJANGO_REDIS, "LOCATION": REDIS_URL}, "redis"),
    "redis-under-cluster": (
        "redis",
        {"BACKEND": CLUSTER, "LOCATION": ["redis://127.0.0.1:7000"]},
        "redis",
    ),
    "django-redis": (
        "django_redis",
        {"BACKEND": DJANGO_REDIS_PACKAGE, "LOCATION": REDIS_URL},
        "redis",
    ),
    "redis-under-django-redis": (
        "redis",
        {"BACKEND": DJANGO_REDIS_PACKAGE, "LOCATION": REDIS_URL},
        "redis",
    ),
}


@pytest.mark.parametrize("engine", CACHE_ENGINES)
@pytest.mark.parametrize("case", list(MISSING))
def test_missing_client_library_is_e211(
    monkeypatch: pytest.MonkeyPatch, case: str, engine: str
) -> None:
    package, cache, extra = MISSING[case]
    _uninstall(monkeypatch, package)

    messages = _messages(cache, engine, tags=["sessions"])

    (error,) = [m for m in messages if m.id == "hardened_sessions.E211"]
    assert repr(package) in error.msg
    assert error.hint == f"pip install django-hardened-sessions[{extra}]"
    assert "hardened_sessions.E010" not in [m.id for m in messages]


@pytest.mark.parametrize("case", list(MISSING))
def test_installed_client_library_is_no_e211(case: str) -> None:
    _, cache, _ = MISSING[case]
    assert "hardened_sessions.E211" not in _ids(cache)


def test_missing_redis_under_djangos_redis_cache_is_e211_in_a_full_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _uninstall(monkeypatch, "redis")
    assert "hardened_sessions.E211" in _ids({"BACKEND": DJANGO_REDIS, "LOCATION": REDIS_URL})


def test_a_backend_that_does_not_exist_is_e010_not_a_traceback() -> None:
    messages = _messages(
        {"BACKEND": "myproject.caches.NoSuchCache", "LOCATION": "x"}, tags=["sessions"]
    )
    (error,) = [m for m in messages if m.id == "hardened_sessions.E010"]
    assert "myproject.caches.NoSuchCache" in error.msg


def test_a_missing_library_under_the_db_engine_is_no_e211(monkeypatch: pytest.MonkeyPatch) -> None:
    _uninstall(monkeypatch, "pymemcache")
    cache = {"BACKEND": PYMEMCACHE, "LOCATION": "127.0.0.1:11211"}
    messages = _messages(cache, "hardened_sessions.backends.db", tags=["sessions"])
    assert "hardened_sessions.E211" not in [m.id for m in messages]


# --- W213: the Redis Cluster backend under its old path ------------------------------------

CLUSTER_LOCATION = ["redis://127.0.0.1:7000"]


def test_the_old_cluster_backend_path_loads_the_same_class_with_a_deprecation_warning() -> None:
    from django.utils.module_loading import import_string

    from hardened_sessions.redis_cluster import RedisClusterCache

    # As Django loads CACHES[alias]["BACKEND"], and as a project's own import would.
    with pytest.warns(DeprecationWarning, match=re.escape(CLUSTER)):
        assert import_string(OLD_CLUSTER) is RedisClusterCache
    with pytest.warns(DeprecationWarning, match=re.escape(CLUSTER)):
        from hardened_sessions.cache import RedisClusterCache as old_name
    assert old_name is RedisClusterCache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert import_string(CLUSTER) is RedisClusterCache


def _w213(caches: dict[str, Any], engine: str, tags: list[str] | None = None) -> list[CheckMessage]:
    settings: dict[str, Any] = {"CACHES": caches, "SESSION_ENGINE": engine}
    with override_settings(**settings), warnings.catch_warnings():
        # Django's own cache checks load every backend (the warning is tested above).
        warnings.simplefilter("ignore", DeprecationWarning)
        return [m for m in run_checks(tags=tags) if m.id == "hardened_sessions.W213"]


@pytest.mark.parametrize("tags", [None, ["sessions"], [Tags.caches]])
@pytest.mark.parametrize("engine", [*CACHE_ENGINES, "hardened_sessions.backends.db"])
def test_the_old_cluster_backend_path_is_w213(engine: str, tags: list[str] | None) -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sessions": {"BACKEND": OLD_CLUSTER, "LOCATION": CLUSTER_LOCATION},
    }
    (warning,) = _w213(caches, engine, tags)
    assert warning.msg.startswith(f"CACHES['sessions']['BACKEND'] is {OLD_CLUSTER!r}")
    assert "removed in the next major release" in warning.msg
    assert warning.hint == f"Set CACHES['sessions']['BACKEND'] = {CLUSTER!r}."


def test_w213_names_each_alias_on_the_old_path() -> None:
    caches = {
        "default": {"BACKEND": OLD_CLUSTER, "LOCATION": CLUSTER_LOCATION},
        "sessions": {"BACKEND": CLUSTER, "LOCATION": CLUSTER_LOCATION},
        "other": {"BACKEND": OLD_CLUSTER, "LOCATION": CLUSTER_LOCATION},
    }
    messages = _w213(caches, CACHE_ENGINES[0])
    assert [m.hint for m in messages] == [
        f"Set CACHES['default']['BACKEND'] = {CLUSTER!r}.",
        f"Set CACHES['other']['BACKEND'] = {CLUSTER!r}.",
    ]


@pytest.mark.parametrize("engine", [*CACHE_ENGINES, "hardened_sessions.backends.db"])
def test_the_new_cluster_backend_path_is_no_w213(engine: str) -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sessions": {"BACKEND": CLUSTER, "LOCATION": CLUSTER_LOCATION},
    }
    assert _w213(caches, engine) == []


# --- W212: the sessions table is missing (check --database) ------------------------------------

EMPTY_ALIAS = "sessions_not_migrated"


@pytest.fixture
def empty_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, django_db_blocker: Any
) -> Iterator[str]:
    """An SQLite database without any table, routed to as the sessions' database."""
    config = dict(connections.settings["default"], NAME=str(tmp_path / "empty.sqlite3"))
    monkeypatch.setitem(connections.settings, EMPTY_ALIAS, config)
    try:
        with (
            django_db_blocker.unblock(),
            override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(EMPTY_ALIAS)]),
        ):
            yield EMPTY_ALIAS
    finally:
        connections[EMPTY_ALIAS].close()
        del connections[EMPTY_ALIAS]


def _database_ids(databases: list[str]) -> list[str]:
    return [
        m.id
        for m in run_checks(tags=[Tags.database], databases=databases)
        if m.id and m.id.startswith("hardened_sessions.")
    ]


@pytest.mark.parametrize(
    "engine", ["hardened_sessions.backends.db", "hardened_sessions.backends.cached_db"]
)
def test_missing_sessions_table_is_w212(empty_database: str, engine: str) -> None:
    with override_settings(SESSION_ENGINE=engine):
        messages = [
            m
            for m in run_checks(tags=[Tags.database], databases=[empty_database])
            if m.id == "hardened_sessions.W212"
        ]
    assert len(messages) == 1
    assert empty_database in messages[0].msg
    assert "migrate" in (messages[0].hint or "")


def test_missing_table_is_not_checked_without_databases(empty_database: str) -> None:
    # Plain ``check`` (no --database) never opens a connection.
    assert "hardened_sessions.W212" not in _database_ids([])


def test_missing_table_under_the_cache_engine_is_no_w212(empty_database: str) -> None:
    with override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"):
        assert "hardened_sessions.W212" not in _database_ids([empty_database])


def test_migrated_database_is_no_w212() -> None:
    assert "hardened_sessions.W212" not in _database_ids(["default"])
