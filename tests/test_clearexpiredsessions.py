"""``manage.py clearexpiredsessions``, ``SessionStore.clear_expired()`` and ``clearsessions``.

docs/operations.rst: batched deletes, ``--batch-size``, ``--dry-run``, ``--database``,
one runner at a time (an advisory lock on PostgreSQL, ``GET_LOCK`` on MySQL/MariaDB);
on the cache engine the command says the cache expires entries itself and exits
normally; ``SessionStore.clear_expired()`` runs the same sweep, which checks the
deadline again in its ``DELETE`` (a session renewed between the sweep's ``SELECT`` and
its ``DELETE`` stays); ``manage.py clearsessions`` exists without
``django.contrib.sessions``, and with it installed, whichever app comes first in
``INSTALLED_APPS`` provides the command, both running this sweep.

Sessions are real records written by the db engine; "expired" is set on the
``expire_date`` column, which is what a sweep reads. Every test runs on every alias.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from importlib import import_module
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.management.commands.clearexpiredsessions import (
    LOCK_ID,
    mysql_lock_name,
    single_runner,
)
from hardened_sessions.models import HardenedSession
from tests.conftest import configured_databases, require_server
from tests.support.routers import SessionsAliasRouter

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TABLE = HardenedSession._meta.db_table


def _sessions(count: int, *, expired: bool, alias: str) -> set[str]:
    """``count`` stored sessions on ``alias`` (the routed one); their key hashes."""
    hashes = set()
    for n in range(count):
        session = SessionStore()
        session["n"] = n
        session.save()
        assert session.session_key is not None
        hashes.add(keys.store_key(session.session_key))
    if expired:
        past = timezone.now() - timedelta(minutes=5)
        HardenedSession.objects.using(alias).filter(pk__in=hashes).update(expire_date=past)
    return hashes


def _stored(alias: str) -> set[str]:
    return set(HardenedSession.objects.using(alias).values_list("pk", flat=True))


def _run(*args: str) -> str:
    out = StringIO()
    call_command("clearexpiredsessions", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@contextmanager
def _routed_to(alias: str) -> Iterator[None]:
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        yield


# --- the command ---------------------------------------------------------------------


def test_deletes_exactly_the_expired_rows(db_alias: str) -> None:
    live = _sessions(4, expired=False, alias=db_alias)
    expired = _sessions(5, expired=True, alias=db_alias)

    output = _run()

    assert _stored(db_alias) == live
    assert f"Deleted 5 expired session(s) from {db_alias!r}" in output
    assert not expired & _stored(db_alias)


def test_live_sessions_still_load_afterwards(db_alias: str) -> None:
    session = SessionStore()
    session["cart"] = "3 books"
    session.save()
    _sessions(3, expired=True, alias=db_alias)

    _run()

    assert SessionStore(session.session_key).load() == {"cart": "3 books"}


def test_dry_run_deletes_nothing_and_reports_the_count(db_alias: str) -> None:
    live = _sessions(2, expired=False, alias=db_alias)
    expired = _sessions(6, expired=True, alias=db_alias)

    output = _run("--dry-run")

    assert _stored(db_alias) == live | expired
    assert f"6 expired session(s) would be deleted from {db_alias!r}" in output
    assert "Deleted" not in output


def test_batch_size_deletes_in_batches(db_alias: str) -> None:
    live = _sessions(3, expired=False, alias=db_alias)
    _sessions(50, expired=True, alias=db_alias)

    with CaptureQueriesContext(connections[db_alias]) as queries:
        output = _run("--batch-size", "7", "--no-progress")

    assert _stored(db_alias) == live
    assert f"Deleted 50 expired session(s) from {db_alias!r}" in output
    deletes = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith("DELETE") and TABLE in q["sql"]
    ]
    assert len(deletes) == math.ceil(50 / 7)


def test_nothing_to_delete(db_alias: str) -> None:
    live = _sessions(2, expired=False, alias=db_alias)

    output = _run()

    assert _stored(db_alias) == live
    assert f"Deleted 0 expired session(s) from {db_alias!r}" in output


def test_database_option_picks_the_alias(db_alias: str) -> None:
    others = [alias for alias in configured_databases() if alias != db_alias]
    if not others:
        require_server("a second database", "--database needs two configured aliases")
    other = others[0]
    with _routed_to(other):
        other_expired = _sessions(3, expired=True, alias=other)
    mine_live = _sessions(2, expired=False, alias=db_alias)
    _sessions(4, expired=True, alias=db_alias)

    # The routers point at the other alias; --database overrides them.
    with _routed_to(other):
        output = _run("--database", db_alias)

    assert _stored(db_alias) == mine_live
    assert _stored(other) == other_expired
    assert f"Deleted 4 expired session(s) from {db_alias!r}" in output


def test_bad_arguments_are_command_errors(db_alias: str) -> None:
    expired = _sessions(2, expired=True, alias=db_alias)

    with pytest.raises(CommandError, match="batch-size"):
        _run("--batch-size", "0")
    with pytest.raises(CommandError, match="no-such-alias"):
        _run("--database", "no-such-alias")

    assert _stored(db_alias) == expired


def test_cache_engine_says_the_cache_expires_entries_itself(db_alias: str) -> None:
    expired = _sessions(2, expired=True, alias=db_alias)
    caches = {
        "default": settings.CACHES["default"],
        "sessions": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"clearexpired-{db_alias}",
        },
    }
    with override_settings(
        CACHES=caches,
        SESSION_CACHE_ALIAS="sessions",
        SESSION_ENGINE="hardened_sessions.backends.cache",
    ):
        output = _run()

    assert "cache expires sessions by itself" in output
    assert "nothing to clear" in output
    assert _stored(db_alias) == expired  # the db table is not the engine's: untouched


# --- one runner at a time ----------------------------------------------------------------


@contextmanager
def _lock_held_elsewhere(alias: str) -> Iterator[Any]:
    """Take the command's lock from a second connection to the same test database."""
    other = connections.create_connection(alias)
    try:
        with other.cursor() as cursor:
            if other.vendor == "postgresql":
                cursor.execute("SELECT current_database()")
                assert cursor.fetchone()[0] == connections[alias].settings_dict["NAME"]
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
            else:
                cursor.execute(
                    "SELECT GET_LOCK(%s, 0)",
                    [mysql_lock_name(connections[alias].settings_dict["NAME"])],
                )
            assert cursor.fetchone()[0] in (True, 1)
        yield other
    finally:
        with other.cursor() as cursor:
            if other.vendor == "postgresql":
                cursor.execute("SELECT pg_advisory_unlock_all()")
            else:
                cursor.execute(
                    "SELECT RELEASE_LOCK(%s)",
                    [mysql_lock_name(connections[alias].settings_dict["NAME"])],
                )
        other.close()


def _lock_free(alias: str) -> bool:
    probe = connections.create_connection(alias)
    try:
        with probe.cursor() as cursor:
            if probe.vendor == "postgresql":
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
                obtained = bool(cursor.fetchone()[0])
                cursor.execute("SELECT pg_advisory_unlock_all()")
            else:
                cursor.execute(
                    "SELECT GET_LOCK(%s, 0)",
                    [mysql_lock_name(connections[alias].settings_dict["NAME"])],
                )
                obtained = bool(cursor.fetchone()[0])
                cursor.execute(
                    "SELECT RELEASE_LOCK(%s)",
                    [mysql_lock_name(connections[alias].settings_dict["NAME"])],
                )
        return obtained
    finally:
        probe.close()


@pytest.fixture(params=["postgresql", "mysql"])
def server_alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """The database servers that have an advisory lock (SQLite has none: one writer at a
    time is SQLite's own rule), with the sessions routed there."""
    alias: str = request.param
    if alias not in settings.DATABASES:
        require_server(alias, f"database alias {alias!r} is not configured")
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        yield alias


def test_sqlite_runs_without_a_lock() -> None:
    with single_runner("default") as obtained:
        assert obtained is True


def test_a_second_runner_is_refused_while_the_lock_is_held(server_alias: str) -> None:
    db_alias = server_alias
    expired = _sessions(3, expired=True, alias=db_alias)

    with _lock_held_elsewhere(db_alias):
        with pytest.raises(CommandError, match="holds the lock"):
            _run()
        assert _stored(db_alias) == expired
        assert "3 expired session(s) would be deleted" in _run("--dry-run")

    output = _run()

    assert "Deleted 3 expired session(s)" in output
    assert _stored(db_alias) == set()
    assert _lock_free(db_alias), "the command kept the lock after it finished"


def test_clear_expired_leaves_the_sweep_to_the_runner_holding_the_lock(
    server_alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Django's clearsessions (a cron job) while clearexpiredsessions runs: no second
    sweep, no error; the running one does the work."""
    expired = _sessions(2, expired=True, alias=server_alias)

    with _lock_held_elsewhere(server_alias), caplog.at_level("INFO", "hardened_sessions"):
        SessionStore.clear_expired()
        assert _stored(server_alias) == expired

    assert "Another sweep" in caplog.text
    SessionStore.clear_expired()
    assert _stored(server_alias) == set()


def test_a_second_runner_is_refused_while_a_first_one_runs(server_alias: str) -> None:
    """The same, with a real first runner (the command's own lock, taken on another
    thread's connection) instead of a hand-made one."""
    db_alias = server_alias
    expired = _sessions(2, expired=True, alias=db_alias)
    holding, release = threading.Event(), threading.Event()
    first_obtained: list[bool] = []

    def first_runner() -> None:
        try:
            with single_runner(db_alias) as obtained:
                first_obtained.append(obtained)
                holding.set()
                release.wait(30)
        finally:
            connections[db_alias].close()

    thread = threading.Thread(target=first_runner)
    thread.start()
    try:
        assert holding.wait(30)
        assert first_obtained == [True]
        with pytest.raises(CommandError, match="holds the lock"):
            _run()
        assert _stored(db_alias) == expired
    finally:
        release.set()
        thread.join(30)

    assert "Deleted 2 expired session(s)" in _run()
    assert _stored(db_alias) == set()


def test_the_lock_is_per_database(server_alias: str) -> None:
    """A runner on another database of the same server (another site, another test run)
    does not stop this one: PostgreSQL's advisory locks are per database, MySQL's
    GET_LOCK names are per server, so the name must say which database it guards."""
    db_alias = server_alias
    vendor = connections[db_alias].vendor
    base = connections[db_alias]
    elsewhere = type(base)(
        {**base.settings_dict, "NAME": "postgres" if vendor == "postgresql" else "mysql"},
        f"{db_alias}-elsewhere",
    )
    elsewhere_lock = mysql_lock_name(elsewhere.settings_dict["NAME"])
    expired = _sessions(2, expired=True, alias=db_alias)
    try:
        with elsewhere.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
            else:
                cursor.execute("SELECT GET_LOCK(%s, 0)", [elsewhere_lock])
            assert cursor.fetchone()[0] in (True, 1)

        output = _run()

        assert "Deleted 2 expired session(s)" in output
        assert not expired & _stored(db_alias)
    finally:
        with elsewhere.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute("SELECT pg_advisory_unlock_all()")
            else:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [elsewhere_lock])
        elsewhere.close()


# --- clear_expired and Django's clearsessions ----------------------------------------


@pytest.mark.parametrize(
    "engine", ["hardened_sessions.backends.db", "hardened_sessions.backends.cached_db"]
)
def test_session_store_clear_expired(db_alias: str, engine: str) -> None:
    live = _sessions(3, expired=False, alias=db_alias)
    _sessions(4, expired=True, alias=db_alias)
    store_class = import_module(engine).SessionStore

    store_class.clear_expired()

    assert _stored(db_alias) == live


def test_djangos_clearsessions_command(db_alias: str) -> None:
    # django.contrib.sessions only needs to be installed for its command to exist; its
    # model and table play no part (the command calls SessionStore.clear_expired()).
    live = _sessions(2, expired=False, alias=db_alias)
    _sessions(3, expired=True, alias=db_alias)

    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "django.contrib.sessions"]):
        call_command("clearsessions", stdout=StringIO(), stderr=StringIO())

    assert _stored(db_alias) == live


# --- a session renewed while the sweep runs ------------------------------------------


@contextmanager
def _renewed_before_the_delete(alias: str, store_key: str) -> Iterator[list[str]]:
    """Just before the sweep's first DELETE on the sessions table runs, another
    connection renews ``store_key`` (its deadline moves an hour ahead) and commits: a
    request that saved the session between the sweep's SELECT and its DELETE."""
    renewed: list[str] = []
    other = connections.create_connection(alias)
    future = timezone.now() + timedelta(hours=1)

    def renew_first(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not renewed and sql.lstrip().upper().startswith("DELETE") and TABLE in sql:
            with other.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {other.ops.quote_name(TABLE)} SET expire_date = %s "
                    "WHERE key_hash = %s",
                    [other.ops.adapt_datetimefield_value(future), store_key],
                )
                assert cursor.rowcount == 1
            renewed.append(sql)
        return execute(sql, params, many, context)

    try:
        with connections[alias].execute_wrapper(renew_first):
            yield renewed
    finally:
        other.close()


@pytest.mark.parametrize("door", ["clear_expired", "clearexpiredsessions", "clearsessions"])
def test_a_session_renewed_during_the_sweep_is_not_deleted(db_alias: str, door: str) -> None:
    live = _sessions(2, expired=False, alias=db_alias)
    expired = _sessions(5, expired=True, alias=db_alias)
    renewing = sorted(expired)[0]

    with _renewed_before_the_delete(db_alias, renewing) as renewed:
        if door == "clear_expired":
            SessionStore.clear_expired()
        else:
            call_command(door, stdout=StringIO(), stderr=StringIO())

    assert renewed, "the sweep never deleted anything"
    assert _stored(db_alias) == live | {renewing}


# --- manage.py clearsessions, whichever app provides it ------------------------------


def _clearsessions_app() -> str:
    from django.core.management import get_commands

    return get_commands()["clearsessions"]


def test_clearsessions_without_django_contrib_sessions(db_alias: str) -> None:
    assert "django.contrib.sessions" not in settings.INSTALLED_APPS
    live = _sessions(2, expired=False, alias=db_alias)
    _sessions(3, expired=True, alias=db_alias)
    out, err = StringIO(), StringIO()

    assert _clearsessions_app() == "hardened_sessions"
    call_command("clearsessions", stdout=out, stderr=err)

    assert _stored(db_alias) == live
    # Quiet, like Django's: a cron job mails whatever a command prints.
    assert (out.getvalue(), err.getvalue()) == ("", "")


@pytest.mark.parametrize("first", ["django.contrib.sessions", "hardened_sessions"])
def test_clearsessions_with_django_contrib_sessions_in_either_order(
    db_alias: str, first: str
) -> None:
    """Django runs the command of the app listed FIRST in INSTALLED_APPS. Whichever that
    is, the sweep is this package's: Django's command calls the engine's
    ``SessionStore.clear_expired()``."""
    apps = [a for a in settings.INSTALLED_APPS if a != "hardened_sessions"]
    ordered = (
        [*apps, "django.contrib.sessions", "hardened_sessions"]
        if first == "django.contrib.sessions"
        else [*apps, "hardened_sessions", "django.contrib.sessions"]
    )
    live = _sessions(2, expired=False, alias=db_alias)
    _sessions(3, expired=True, alias=db_alias)

    with override_settings(INSTALLED_APPS=ordered):
        assert _clearsessions_app() == first
        call_command("clearsessions", stdout=StringIO(), stderr=StringIO())

    assert _stored(db_alias) == live
