"""Django's ``SessionTestsMixin`` run against the hardened engines.

Every test of the mixin runs unchanged against:

* ``hardened_sessions.backends.db`` on the default database (SQLite);
* ``hardened_sessions.backends.cache`` on each cache configuration of the
  ``session_cache`` fixture (``locmem``, ``django-redis``, ``django-rediscache``,
  ``pymemcache``: see ``tests/servers.py``);
* ``hardened_sessions.backends.cached_db`` on each of those caches, with the sessions
  table on SQLite and on PostgreSQL.

The mixin's tests are unittest methods, so the combinations are classes built by
:func:`conformance_class`. Each takes its servers from the session-scoped server
fixtures through the class-scoped ``conformance_settings`` fixture, which applies the
cache, engine and database routing with ``override_settings`` for the whole class
(and skips, or fails under ``CI=true``, when a server is missing).

Deliberate deviations are overridden in :class:`HardenedDeviations` with their reason;
there are none at present.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import TransactionTestCase

from hardened_sessions.backends.db import SessionStore as DBStore
from tests.conftest import require_server
from tests.django_suite import load_mixin
from tests.routers import SessionsAliasRouter
from tests.servers import (
    CACHE_VARIANTS,
    RawCache,
    cache_settings,
    flush_variant,
    servers_for,
    sessions_cache,
)

SessionTestsMixin = load_mixin()

ENGINES = {
    "cache": "hardened_sessions.backends.cache",
    "cached_db": "hardened_sessions.backends.cached_db",
}
# Database aliases the cached_db engine is run on, with the pytest marker of each.
CACHED_DB_DATABASES = {"default": None, "postgresql": pytest.mark.postgresql}


class HardenedDBSessionConformance(SessionTestsMixin, TransactionTestCase):  # type: ignore[misc, valid-type]
    backend = DBStore


class IntendedStores:
    """A check of the harness itself: each generated class runs where it says it does."""

    cache_variant: str
    sessions_database: str
    servers: dict[str, Any]

    def test_runs_on_the_intended_stores(self) -> None:
        from django.core.cache import caches

        from hardened_sessions.keys import store_key
        from hardened_sessions.models import HardenedSession

        expected = cache_settings(self.cache_variant, **self.servers)
        cache = caches[settings.SESSION_CACHE_ALIAS]
        backend = f"{type(cache).__module__}.{type(cache).__qualname__}"
        assert backend == expected["BACKEND"]
        assert self.backend.__module__ == settings.SESSION_ENGINE  # type: ignore[attr-defined]

        session = self.backend()  # type: ignore[attr-defined]
        session["probe"] = self.cache_variant
        session.save()
        self.backend(session.session_key).load()  # type: ignore[attr-defined]  # fills cached_db's copy
        raw = RawCache(self.cache_variant, self.servers, settings.SESSION_CACHE_ALIAS)
        value = raw.get(raw.key(store_key(session.session_key)))
        assert value is not None and value.startswith(b"hs1:")
        rows = {
            alias: HardenedSession.objects.using(alias)
            .filter(pk=store_key(session.session_key))
            .exists()
            for alias in self.databases  # type: ignore[attr-defined]
        }
        if self.backend.__module__.endswith("cached_db"):  # type: ignore[attr-defined]
            assert rows == {a: a == self.sessions_database for a in rows}
        else:
            assert not any(rows.values())
        session.delete()


class HardenedDeviations:
    """Overrides of mixin tests whose expectation the engines deliberately do not meet.

    Each override states the reason in its docstring. (None needed so far: the mixin
    inspects nothing of Django's own cache key format or serializer.)
    """


@pytest.fixture(scope="class")
def conformance_settings(request: pytest.FixtureRequest) -> Iterator[None]:
    """The class's cache (on this run's servers), engine and database routing."""
    cls: Any = request.cls
    alias: str = cls.sessions_database
    if alias not in settings.DATABASES:
        require_server(alias, f"database alias {alias!r} is not configured")
    servers = servers_for(cls.cache_variant, request)
    flush_variant(cls.cache_variant, servers)
    cls.servers = servers
    try:
        with sessions_cache(
            cache_settings(cls.cache_variant, **servers),
            SESSION_ENGINE=cls.backend.__module__,
            DATABASE_ROUTERS=[SessionsAliasRouter(alias)],
        ):
            yield
    finally:
        flush_variant(cls.cache_variant, servers)


def conformance_class(engine: str, variant: str, database: str = "default") -> type[Any]:
    """A TransactionTestCase running the mixin on ``engine`` over cache ``variant``."""
    from importlib import import_module

    backend = import_module(ENGINES[engine]).SessionStore
    words = [engine, variant.replace("-", "_")]
    if engine == "cached_db":
        words.append("sqlite" if database == "default" else database)
    name = "Hardened" + "".join(w.title().replace("_", "") for w in words) + "Conformance"
    configured = database in settings.DATABASES
    cls = type(
        name,
        (IntendedStores, HardenedDeviations, SessionTestsMixin, TransactionTestCase),
        {
            "__module__": __name__,
            "__doc__": f"Django's SessionTestsMixin on {ENGINES[engine]} over the "
            f"{variant} cache"
            + (f", sessions table on {database!r}." if engine == "cached_db" else "."),
            "backend": backend,
            "cache_variant": variant,
            "sessions_database": database,
            # Only configured aliases: Django refuses the others (the fixture then
            # skips or fails the class).
            "databases": {"default", database} if configured else {"default"},
            "available_apps": ["hardened_sessions"],
        },
    )
    cls = pytest.mark.usefixtures("conformance_settings")(cls)
    marker = CACHED_DB_DATABASES.get(database)
    if marker is not None:
        cls = marker(cls)
    return cls


def _build() -> dict[str, type[Any]]:
    classes = {}
    for variant in CACHE_VARIANTS:
        cls = conformance_class("cache", variant)
        classes[cls.__name__] = cls
    for database in CACHED_DB_DATABASES:
        for variant in CACHE_VARIANTS:
            cls = conformance_class("cached_db", variant, database)
            classes[cls.__name__] = cls
    return classes


globals().update(_build())
