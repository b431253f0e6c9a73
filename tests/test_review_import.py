"""``importdjangosessions --database``: the stock table may live apart from the sessions.

docs/engines.rst (the db engine): it follows the database routers, so sessions can live
in a database of their own while ``django_session`` stays where
``django.contrib.sessions`` kept it (``default``). ``--database`` names where the *stock table* is read; the records and
their import markers go where the engine reads and writes sessions (the router's
alias), whatever ``--database`` says. Otherwise the run reported every session as
imported while the engine could load none of them, and markers kept in another database
than the sessions could not keep a later run from importing a session twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession, ImportedDjangoSession
from tests.conftest import require_server
from tests.support.routers import SessionsAliasRouter
from tests.test_importdjangosessions import _DDL, MAX_BYTES, TABLE, django_encode

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SOURCE = "default"


@pytest.fixture(params=["postgresql", "mysql"])
def sessions_alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """Sessions routed to their own database; the stock table stays on ``default``."""
    alias: str = request.param
    if alias not in settings.DATABASES:
        require_server(alias, f"database alias {alias!r} is not configured")
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        yield alias


@pytest.fixture
def stock_on_default(sessions_alias: str) -> Iterator[Any]:
    connection = connections[SOURCE]
    quoted = connection.ops.quote_name(TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {quoted}")
        cursor.execute(_DDL[connection.vendor])

    def insert(key: str, data: dict[str, Any]) -> None:
        expire = timezone.now() + timedelta(days=1)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quoted} (session_key, session_data, expire_date) "
                "VALUES (%s, %s, %s)",
                [key, django_encode(data), connection.ops.adapt_datetimefield_value(expire)],
            )

    try:
        yield insert
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quoted}")


def _import(*args: str) -> str:
    out = StringIO()
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}):
        call_command("importdjangosessions", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_records_go_where_the_engine_reads_them(sessions_alias: str, stock_on_default: Any) -> None:
    key = keys.generate_key()
    stock_on_default(key, {"theme": "dark"})

    output = _import("--database", SOURCE)

    assert "imported 1;" in output
    assert SessionStore(key).load() == {"theme": "dark"}
    store_key = keys.store_key(key)
    assert HardenedSession.objects.using(sessions_alias).filter(pk=store_key).exists()
    assert ImportedDjangoSession.objects.using(sessions_alias).filter(pk=store_key).exists()
    assert not HardenedSession.objects.using(SOURCE).exists()
    assert not ImportedDjangoSession.objects.using(SOURCE).exists()


def test_an_ended_session_stays_ended_across_runs(
    sessions_alias: str, stock_on_default: Any
) -> None:
    key = keys.generate_key()
    stock_on_default(key, {"theme": "dark"})
    _import("--database", SOURCE)
    session = SessionStore(key)
    assert session.load() == {"theme": "dark"}
    session.flush()  # a logout

    output = _import("--database", SOURCE)

    assert "imported 0; skipped: 1 already imported" in output
    assert SessionStore(key).load() == {}


# --- rows the database cannot hand over as Python values ---------------------------------


@pytest.fixture
def stock_on(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``django_session`` on the alias the test is parametrized with (sessions routed
    there too); ``execute(sql, params)`` on it."""
    alias: str = request.param
    if alias not in settings.DATABASES:
        require_server(alias, f"database alias {alias!r} is not configured")
    connection = connections[alias]
    quoted = connection.ops.quote_name(TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {quoted}")
        cursor.execute(_DDL[connection.vendor])

    def execute(sql: str, params: list[Any]) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql.replace("{table}", quoted), params)

    execute.connection = connection  # type: ignore[attr-defined]
    try:
        with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
            yield execute
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quoted}")


def _good_row(execute: Any) -> str:
    key = keys.generate_key()
    expire = timezone.now() + timedelta(days=1)
    execute(
        "INSERT INTO {table} (session_key, session_data, expire_date) VALUES (%s, %s, %s)",
        [key, django_encode({"theme": "dark"}), expire],
    )
    return key


@pytest.mark.parametrize("stock_on", ["postgresql"], indirect=True)
def test_an_expiry_python_cannot_hold_is_counted_not_a_crash(stock_on: Any) -> None:
    """PostgreSQL keeps 'infinity', years past 9999 and BC dates; the driver cannot turn
    them into a datetime, and one such row failed every run at its batch."""
    good = _good_row(stock_on)
    for moment in ("infinity", "-infinity", "12000-01-01 00:00:00+00", "0044-03-15 BC"):
        stock_on(
            "INSERT INTO {table} (session_key, session_data, expire_date) VALUES (%s, %s, %s)",
            [keys.generate_key(), django_encode({"theme": "odd"}), moment],
        )

    output = _import("--batch-size", "2")

    assert "imported 1;" in output
    assert "4 without a valid expire_date" in output
    assert SessionStore(good).load() == {"theme": "dark"}


@pytest.mark.parametrize("stock_on", ["default"], indirect=True)
def test_text_that_is_not_utf8_is_counted_not_a_crash(stock_on: Any) -> None:
    """SQLite keeps any bytes as text; the driver raises on text that is not UTF-8, and
    one such row failed every run at its batch."""
    good = _good_row(stock_on)
    soon = timezone.now() + timedelta(days=1)
    bad = b"\xff\xfe not utf-8"
    insert = (
        "INSERT INTO {table} (session_key, session_data, expire_date) "
        "VALUES (CAST(%s AS TEXT), CAST(%s AS TEXT), CAST(%s AS TEXT))"
    )
    stock_on(insert, [keys.generate_key(), bad, soon.isoformat()])  # data
    stock_on(insert, [bad + b"0" * 20, django_encode({"a": 1}), soon.isoformat()])  # key
    stock_on(insert, [keys.generate_key(), django_encode({"a": 1}), bad])  # expiry
    # Keys SQLite keeps as an integer or as bytes (sorted apart from text keys: a scan
    # that pages by key never reached them). Stock Django never served them.
    raw = (
        "INSERT INTO {table} (session_key, session_data, expire_date) "
        "VALUES (%s, %s, CAST(%s AS TEXT))"
    )
    stock_on(raw, [12345, django_encode({"a": 1}), soon.isoformat()])
    stock_on(raw, [keys.generate_key().encode(), django_encode({"a": 1}), soon.isoformat()])

    output = _import("--batch-size", "2")

    assert "imported 1;" in output
    assert "1 without a valid expire_date, 1 undecodable" in output
    assert "3 with a key that is not 32 characters" in output
    assert SessionStore(good).load() == {"theme": "dark"}
