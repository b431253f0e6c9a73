"""Django's ``SessionTestsMixin`` run against the hardened engines.

Every test of the mixin runs unchanged against:

* ``hardened_sessions.backends.db`` on the default database (SQLite);
* ``hardened_sessions.backends.cache`` on each cache configuration of the
  ``session_cache`` fixture (``locmem``, ``django-redis``, ``django-rediscache``,
  ``pymemcache``: see ``tests/support/servers.py``);
* ``hardened_sessions.backends.cached_db`` on each of those caches, with the sessions
  table on SQLite and on PostgreSQL.

The mixin's tests are unittest methods, so the combinations are classes built by
:func:`conformance_class`. Each takes its servers from the session-scoped server
fixtures through the class-scoped ``conformance_settings`` fixture, which applies the
cache, engine and database routing with ``override_settings`` for the whole class
(and skips, or fails under ``CI=true``, when a server is missing).

Deliberate deviations are overridden in :class:`HardenedDeviations` with their reason;
there are none at present.

The last part checks the harness that runs Django's own test modules
(``tests/django_own/``) against the hardened middleware and engines.
"""

from __future__ import annotations

import ast
import importlib.util
import pickle
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.conf import settings
from django.test import SimpleTestCase, TransactionTestCase

from hardened_sessions.backends.db import SessionStore as DBStore
from tests.conftest import require_server
from tests.support.django_suite import load_mixin
from tests.support.routers import SessionsAliasRouter
from tests.support.servers import (
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


# --- Django's own test modules (tests/django_own/): the harness ----------------------
#
# CI runs Django's runtests.py with the hardened middleware, app and engines swapped in
# (tox's django-own-* environments). These tests check the harness itself: the list of
# accepted deviations, how a listed test is made an expected failure, the check of the
# stock baseline's record, and the parts of Django's runtests.py it relies on (not a
# public API: checked on the installed Django's own copy, so a change fails here).

DJANGO_OWN = Path(__file__).resolve().parent / "django_own"


def _django_own(name: str) -> ModuleType:
    """A module of tests/django_own/ (a folder of scripts, not a package), by path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DJANGO_OWN / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_deviation_list_is_documented() -> None:
    deviations = _django_own("hs_deviations").load()
    run = _django_own("run")
    for deviation in deviations:
        assert deviation.module() in run.MODULE_SETS["full"], deviation.test
        assert len(deviation.reason) > 60, deviation.test


@pytest.mark.parametrize(
    "entry",
    [
        'engines = ["db"]\nreason = "no tests key at all here"',
        'tests = ["a.b.C.d"]\nengines = ["db"]',
        'tests = ["a.b.C.d"]\nengines = ["db"]\nreason = "too short"',
        'tests = ["a.b.C.d"]\nengines = ["file"]\nreason = "an engine that does not exist"',
        'tests = ["a.b.C.d"]\nengines = ["db", "db"]\nreason = "the same engine listed twice"',
        'tests = ["a.b.C.d"]\nengines = []\nreason = "no engine at all, stock or not"',
        'tests = ["a.b.C.d"]\nengines = ["db"]\nstock = true\nreason = "stock must be a list"',
        'tests = ["test_foo"]\nengines = ["db"]\nreason = "an id without module and class"',
        'tests = ["a.b.C.d"]\nengines = ["db"]\nreason = "an unknown key in the entry"\nwhy = 1',
        'tests = ["a.b.C.d"]\nengines = ["db"]\nreason = "since is not a version"\nsince = 6.0',
    ],
)
def test_deviation_list_rejects_malformed_entries(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "deviations.toml"
    path.write_text(f"[[deviation]]\n{entry}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="entry 1"):
        _django_own("hs_deviations").load(path)


def test_deviation_applies_from_its_django_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import django

    path = tmp_path / "deviations.toml"
    path.write_text(
        '[[deviation]]\ntests = ["a.b.C.d"]\nengines = ["db"]\nstock = ["cache"]\n'
        'since = "6.0"\nreason = "a test that Django 6.0 added"\n',
        encoding="utf-8",
    )
    hs_deviations = _django_own("hs_deviations")
    for version, applies in [((5, 2, 19, "final", 0), False), ((6, 0, 0, "final", 0), True)]:
        monkeypatch.setattr(django, "VERSION", version)
        assert bool(hs_deviations.applicable("db", "hardened", path)) is applies
        assert bool(hs_deviations.applicable("cache", "stock", path)) is applies
        assert not hs_deviations.applicable("cache", "hardened", path)
        assert not hs_deviations.applicable("db", "stock", path)


def test_deviation_list_rejects_a_test_listed_twice(tmp_path: Path) -> None:
    entry = (
        '[[deviation]]\ntests = ["a.b.C.d"]\nengines = ["db"]\nreason = "one reason for it here"\n'
    )
    path = tmp_path / "deviations.toml"
    path.write_text(entry + entry.replace('"db"', '"cache"'), encoding="utf-8")
    with pytest.raises(ValueError, match="entry 2"):
        _django_own("hs_deviations").load(path)


class ListedTests(SimpleTestCase):
    """Stand-ins for Django tests named in deviations.toml (run by the tests below)."""

    __test__ = False  # not collected by pytest

    def test_fails(self) -> None:
        self.assertEqual(1, 2)

    def test_passes(self) -> None:
        pass

    async def test_fails_async(self) -> None:
        self.assertEqual(1, 2)


@pytest.mark.parametrize("name", ["test_fails", "test_passes", "test_fails_async"])
def test_listed_test_is_an_expected_failure_that_still_pickles(name: str) -> None:
    """A listed test must fail: one that passes is an unexpected success (a failed run).

    runtests.py --parallel pickles test cases to its worker processes.
    """
    test = ListedTests(name)
    _django_own("hs_deviations").expect_failure(test)
    test = pickle.loads(pickle.dumps(test))
    result = unittest.TestResult()
    test(result)  # as a runner does (SimpleTestCase.__call__ runs async tests)
    assert not result.failures and not result.errors
    if name == "test_passes":
        assert result.unexpectedSuccesses == [test] and not result.wasSuccessful()
    else:
        assert [t for t, _ in result.expectedFailures] == [test] and result.wasSuccessful()
    unlisted = unittest.TestResult()
    ListedTests(name)(unlisted)
    assert unlisted.wasSuccessful() is (name == "test_passes")


def test_hardened_run_refuses_a_list_changed_since_its_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hs_deviations = _django_own("hs_deviations")
    run = _django_own("run")
    listed = tmp_path / "deviations.toml"
    listed.write_bytes(hs_deviations.DEVIATIONS_FILE.read_bytes())
    monkeypatch.setattr(hs_deviations, "DEVIATIONS_FILE", listed)
    monkeypatch.setattr(run, "RECORD_FILE", tmp_path / "baseline.txt")
    sessions, full = run.MODULE_SETS["sessions"], run.MODULE_SETS["full"]
    assert run.check_record(sessions) is not None  # no baseline recorded
    run.write_record("sessions", list(run.ENGINES))
    assert run.check_record(sessions) is None
    assert run.check_record(sessions[:2]) is None
    assert run.check_record(full) is not None  # modules the baseline did not run
    with listed.open("a", encoding="utf-8") as handle:
        handle.write("# an edit\n")
    assert "tox -m django-baseline" in run.check_record(sessions)


def _assigned_list(tree: ast.Module, name: str) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"runtests.py no longer assigns {name}")


def test_runtests_of_the_installed_django_has_the_hooks_used() -> None:
    """tests/django_own/hs_runtests.py relies on runtests.py internals (checked on
    Django 5.2, 6.0, 6.1): the module-level lists ALWAYS_MIDDLEWARE and
    ALWAYS_INSTALLED_APPS, which setup_collect_tests() assigns to settings, and the
    ``if __name__ == "__main__":`` block, run as is."""
    from tests.support.django_suite import tests_dir

    script = tests_dir() / "runtests.py"
    hs_deviations = _django_own("hs_deviations")
    hs_runtests = _django_own("hs_runtests")
    tree = ast.parse(script.read_text(encoding="utf-8"))
    middleware = _assigned_list(tree, "ALWAYS_MIDDLEWARE")
    apps = _assigned_list(tree, "ALWAYS_INSTALLED_APPS")
    assert middleware.count(hs_deviations.STOCK_MIDDLEWARE) == 1
    assert "django.contrib.sessions" in apps
    setup = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "setup_collect_tests"
    )
    assignments = {
        ast.unparse(n.targets[0]): ast.unparse(n.value)
        for n in ast.walk(setup)
        if isinstance(n, ast.Assign)
    }
    assert assignments["settings.MIDDLEWARE"] == "ALWAYS_MIDDLEWARE"
    assert assignments["settings.INSTALLED_APPS"] == "ALWAYS_INSTALLED_APPS"
    assert hs_runtests.main_block(script).body

    fake = ModuleType("runtests")
    swapped_middleware, swapped_apps = list(middleware), list(apps)
    vars(fake).update(
        __file__=str(script),
        ALWAYS_MIDDLEWARE=swapped_middleware,
        ALWAYS_INSTALLED_APPS=swapped_apps,
    )
    hs_runtests.swap_in_hardened(fake)
    assert swapped_middleware == [
        hs_deviations.HARDENED_MIDDLEWARE if m == hs_deviations.STOCK_MIDDLEWARE else m
        for m in middleware
    ]
    assert swapped_apps == [*apps, "hardened_sessions"]
    with pytest.raises(RuntimeError, match="needs updating"):
        hs_runtests.swap_in_hardened(fake)  # no stock middleware left to replace
