"""One way to ask what an engine or a store can do: ``Capability``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.test import override_settings

from hardened_sessions.backends import cache as cache_engine
from hardened_sessions.backends import cached_db, db
from hardened_sessions.capabilities import Capability, capabilities_of, engine_capabilities
from hardened_sessions.stores import (
    STORE_CLASSES,
    UnsupportedCache,
    cache_capabilities,
    kind_of,
    store_class_for,
    store_for_cache,
)
from hardened_sessions.stores.locmem import LocMemByteStore
from hardened_sessions.stores.memcached import MemcachedByteStore
from hardened_sessions.stores.redis import RedisByteStore
from tests.support.servers import free_port, sessions_cache

pytestmark = pytest.mark.django_db

ROWS, CACHE = Capability.ROWS, Capability.CACHE
USER_INDEX, USER_CAP = Capability.USER_INDEX, Capability.USER_CAP

CACHE_ENGINE = "hardened_sessions.backends.cache"
DB_ENGINE = "hardened_sessions.backends.db"
CACHED_DB_ENGINE = "hardened_sessions.backends.cached_db"

# What each cache variant's store can do: every one but memcached keeps the exact
# per-user index, and with it enforces the cap in the write.
STORE_CAPABILITIES = {
    "locmem": USER_INDEX | USER_CAP,
    "django-redis": USER_INDEX | USER_CAP,
    "django-rediscache": USER_INDEX | USER_CAP,
    "pymemcache": Capability(0),
}


class ProjectCacheEngine(cache_engine.SessionStore):
    """A project's own engine built on the cache engine."""


class ProjectDBEngine(db.SessionStore):
    """A project's own engine built on the db engine."""


class ProjectLocMem(LocMemCache):
    """A project's own subclass of a supported cache backend."""


def _variant(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["session_cache"])


# --- stores -------------------------------------------------------------------------


def test_each_store_reports_what_it_can_do(
    session_cache: str, request: pytest.FixtureRequest
) -> None:
    expected = STORE_CAPABILITIES[_variant(request)]
    assert store_for_cache(session_cache).capabilities == expected
    # The same answer from the configuration alone, before any store is built.
    assert cache_capabilities(session_cache) == expected


@pytest.mark.parametrize(
    ("engine", "own"),
    [(DB_ENGINE, ROWS), (CACHED_DB_ENGINE, ROWS | CACHE), (CACHE_ENGINE, CACHE)],
)
def test_each_engine_on_each_cache_reports_what_it_can_do(
    session_cache: str, request: pytest.FixtureRequest, engine: str, own: Capability
) -> None:
    with override_settings(SESSION_ENGINE=engine):
        caps = engine_capabilities()
    if ROWS in own:  # the table lists a user's sessions and caps them, whatever the cache
        assert caps == own | USER_INDEX | USER_CAP
    else:
        assert caps == own | STORE_CAPABILITIES[_variant(request)]


def test_the_engines_classmethods() -> None:
    assert db.SessionStore.capabilities() == ROWS | USER_INDEX | USER_CAP
    assert cached_db.SessionStore.capabilities() == ROWS | CACHE | USER_INDEX | USER_CAP
    with sessions_cache({"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}):
        assert cache_engine.SessionStore.capabilities() == CACHE | USER_INDEX | USER_CAP


def test_redis_cluster_keeps_no_user_index_and_is_not_connected_to_say_so() -> None:
    down = [f"redis://127.0.0.1:{free_port()}"]
    config = {"BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache", "LOCATION": down}
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        assert cache_capabilities(alias) == Capability(0)
        assert engine_capabilities() == CACHE


def _scrambled(key: str, key_prefix: str, version: int) -> str:
    return f"{key_prefix}:{version}:{key[::-1]}"


def test_a_key_function_that_rewrites_the_key_keeps_the_index_but_not_the_cap() -> None:
    config = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{free_port()}",
        "KEY_FUNCTION": f"{__name__}._scrambled",
    }
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        assert cache_capabilities(alias) == USER_INDEX
        assert store_for_cache(alias).capabilities == USER_INDEX  # built without I/O
        assert engine_capabilities() == CACHE | USER_INDEX


def test_an_unsupported_cache_is_a_cache_engine_that_can_do_nothing_more() -> None:
    config = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
    with sessions_cache(config, SESSION_ENGINE=CACHE_ENGINE) as alias:
        with pytest.raises(UnsupportedCache):
            cache_capabilities(alias)
        assert engine_capabilities() == CACHE


# --- engine_capabilities follows SESSION_ENGINE -------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{__name__}", CACHE | USER_INDEX | USER_CAP),  # this module: ProjectCacheEngine
        ("django.contrib.sessions.backends.signed_cookies", Capability(0)),
        ("django.contrib.sessions.backends.db", Capability(0)),
        ("no.such.engine", Capability(0)),
    ],
)
def test_engine_capabilities_follows_session_engine(path: str, expected: Capability) -> None:
    locmem = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    with sessions_cache(locmem, SESSION_ENGINE=path):
        assert engine_capabilities() == expected


def test_a_subclass_engine_answers_as_its_base() -> None:
    assert capabilities_of(ProjectDBEngine) == db.SessionStore.capabilities()
    assert capabilities_of(object) == Capability(0)
    assert capabilities_of("not a class") == Capability(0)


# This module doubles as an engine module for the override above.
SessionStore = ProjectCacheEngine


# --- the store table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "store", "kind"),
    [
        ("django_redis.cache.RedisCache", RedisByteStore, "redis"),
        ("django.core.cache.backends.redis.RedisCache", RedisByteStore, "redis"),
        ("hardened_sessions.redis_cluster.RedisClusterCache", RedisByteStore, "redis"),
        ("django.core.cache.backends.memcached.PyMemcacheCache", MemcachedByteStore, "memcached"),
        ("django.core.cache.backends.locmem.LocMemCache", LocMemByteStore, "locmem"),
    ],
)
def test_the_table_picks_the_store_class(backend: str, store: type, kind: str) -> None:
    from django.utils.module_loading import import_string

    assert import_string(STORE_CLASSES[backend]) is store
    cache = import_string(backend).__new__(import_string(backend))
    assert store_class_for(cache) is store
    assert kind_of(cache) == kind


def test_a_subclass_of_a_listed_backend_gets_its_store() -> None:
    config = {"BACKEND": f"{__name__}.ProjectLocMem", "LOCATION": "capabilities-subclass"}
    with sessions_cache(config) as alias:
        assert store_class_for(caches[alias]) is LocMemByteStore
        assert isinstance(store_for_cache(alias), LocMemByteStore)
        assert cache_capabilities(alias) == USER_INDEX | USER_CAP


def test_a_new_store_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
    with sessions_cache(config) as alias:
        with pytest.raises(UnsupportedCache):
            store_for_cache(alias)
        monkeypatch.setitem(
            STORE_CLASSES,
            "django.core.cache.backends.dummy.DummyCache",
            f"{__name__}.DummyStore",
        )
        store = store_for_cache(alias)
        assert isinstance(store, DummyStore) and store.alias == alias
        assert cache_capabilities(alias) == USER_INDEX


class DummyStore:
    capabilities = USER_INDEX

    def __init__(self, alias: str) -> None:
        self.alias = alias

    @classmethod
    def capabilities_for(cls, cache: Any) -> Capability:
        return cls.capabilities

    @classmethod
    def from_cache(cls, cache: Any, alias: str) -> DummyStore:
        return cls(alias)


# --- one way to ask -------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "hardened_sessions"
ENGINE_CLASSES = r"(DBStore|CacheStore|HardenedSessionBase|SessionStore|import_string\(base\))"


def _sources() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(PACKAGE)), path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "capabilities.py"
    ]


def test_no_issubclass_on_engine_classes_outside_capabilities() -> None:
    pattern = re.compile(r"issubclass\([^)]*,\s*" + ENGINE_CLASSES)
    found = [name for name, text in _sources() if pattern.search(text)]
    assert found == []


def test_no_session_engine_string_compares_outside_capabilities() -> None:
    # Importing the setting, or showing it in a message, is fine; comparing it is not.
    compare = re.compile(
        r"SESSION_ENGINE[^\n]*(==|!=|\.startswith\(|\.endswith\(|\bin\b\s*[(\[{])"
        r"|(==|!=)\s*settings\.SESSION_ENGINE"
    )
    # ... also through a variable: ``engine = settings.SESSION_ENGINE``, then compared.
    engine_var = re.compile(r"(\w+) = [^\n]*\bSESSION_ENGINE\b")
    found = []
    for name, text in _sources():
        for line in text.splitlines():
            if compare.search(line) and "!r}" not in line:
                found.append((name, line.strip()))
        for var in engine_var.findall(text):
            if re.search(rf"\b{var}\s*(==|!=)|\b{var}\.(startswith|endswith)\(", text):
                found.append((name, var))
    assert found == []


def test_no_supports_user_attributes_remain() -> None:
    assert [name for name, text in _sources() if "supports_user_" in text] == []
