"""Shared test harness: server requirements, database aliases, routing.

Tests of behaviour that must hold on every database take the ``db_alias`` fixture,
which runs them once per alias (``sqlite``, ``postgresql``, ``mysql``) and routes the
``hardened_sessions`` models to that alias for the test's duration::

    @pytest.mark.django_db(transaction=True, databases="__all__")
    def test_something(db_alias): ...

``databases="__all__"`` means every *configured* alias; a list must name only
configured ones, so build it with ``configured_databases()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from tests.support.routers import SessionsAliasRouter

# Real Redis and memcached servers, the session caches built on them, and the fault
# proxy that goes between.
pytest_plugins = [
    "tests.support.servers",
    "tests.support.servers_scaleout",
    "tests.support.faults",
]

# Alias -> environment variable that configures it (None: always configured).
DATABASE_ALIASES: dict[str, str | None] = {
    "default": None,
    "postgresql": "HS_TEST_POSTGRES_URL",
    "mysql": "HS_TEST_MYSQL_URL",
}

_FALSY = {"", "0", "false", "no", "off"}


def running_under_ci() -> bool:
    """True when the environment variable CI holds a truthy value."""
    return os.environ.get("CI", "").strip().lower() not in _FALSY


def require_server(kind: str, reason: str) -> None:
    """Give up on a test that needs a server the environment does not provide.

    Skips it on a developer's machine; fails it under CI, where every server must be
    there and a silent skip would hide a broken setup.
    """
    if running_under_ci():
        pytest.fail(f"{kind} is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


def configured_databases(*aliases: str) -> list[str]:
    """The given aliases (default: all known ones) that settings.DATABASES defines.

    For ``@pytest.mark.django_db(databases=configured_databases())``: Django refuses an
    alias that is not configured.
    """
    wanted = aliases or tuple(DATABASE_ALIASES)
    return [alias for alias in wanted if alias in settings.DATABASES]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None,
    django_db_keepdb: bool,
    django_db_createdb: bool,
) -> None:
    """Remove what an interrupted run left of the SQLite test database.

    Django deletes an old test database file before creating a new one, but not its
    ``-wal`` and ``-shm`` companions: SQLite would replay a stale WAL into the new file.
    """
    if django_db_keepdb and not django_db_createdb:
        return
    for config in settings.DATABASES.values():
        name = config.get("TEST", {}).get("NAME")
        if config["ENGINE"] != "django.db.backends.sqlite3" or not name or ":memory:" in name:
            continue
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)


@pytest.fixture(
    params=list(DATABASE_ALIASES),
    ids=["sqlite", "postgresql", "mysql"],
)
def db_alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each database alias in turn, with the ``hardened_sessions`` models routed to it."""
    alias: str = request.param
    if alias not in settings.DATABASES:
        env_var = DATABASE_ALIASES[alias]
        require_server(alias, f"database alias {alias!r} needs {env_var} (a database URL)")
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        yield alias


# HS_TEST_NO_ORJSON=1 (tox -e py312-noorjson, orjson uninstalled): the orjson cases
# are not generated at all, and every json_backend test checks that orjson really is
# gone. Without it, a missing orjson fails under CI.
NO_ORJSON = os.environ.get("HS_TEST_NO_ORJSON", "").strip().lower() not in _FALSY


@pytest.fixture(params=["json"] if NO_ORJSON else ["orjson", "json"])
def json_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each JSON path of ``hardened_sessions.payload_json`` in turn: orjson where it
    stands, and the json module alone (as without orjson installed)."""
    from hardened_sessions import payload_json

    backend: str = request.param
    if NO_ORJSON:
        if payload_json.orjson is not None:
            pytest.fail("HS_TEST_NO_ORJSON is set but orjson is importable", pytrace=False)
        return backend
    if backend == "json":
        monkeypatch.setattr(payload_json, "orjson", None)
    elif payload_json.orjson is None:
        if running_under_ci():
            pytest.fail("orjson is required when CI is set (an install requirement)")
        pytest.skip("orjson is not installed")
    return backend
