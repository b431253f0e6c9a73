"""``manage.py importdjangosessions``: stock Django sessions carried over to hardened records.

The command reads ``django_session`` with plain SQL, verifies each row with Django's
own signing under the JSON serializer (never pickle), and writes a hardened record
under the SHA-256 of the original key, so existing cookies keep working. It skips
(and counts) rows that are expired, undecodable, over ``MAX_BYTES``, or whose key is
not one the engine would accept; a second run imports nothing new; ``--dry-run``
writes nothing.

The stock table is created by hand on each alias, with the column types Django's own
migration gives it there, and filled with rows encoded exactly as
``django.contrib.sessions.backends.base.SessionBase.encode`` does.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.serializers import JSONSerializer
from django.core import signing
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client, override_settings
from django.utils import timezone

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from tests.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TABLE = "django_session"
# What SessionBase.key_salt is for django.contrib.sessions' db and cached_db engines.
DJANGO_SALT = "django.contrib.sessions.SessionStore"
COOKIE = settings.SESSION_COOKIE_NAME
MAX_BYTES = 1024
PASSWORD = "correct horse battery staple"

# A valid-looking Django key, but not 32 characters of [a-z0-9].
UPPERCASE_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SHORT_KEY = "tooshort0123456789"

_DDL = {
    "sqlite": (
        'CREATE TABLE "django_session" ("session_key" varchar(40) NOT NULL PRIMARY KEY, '
        '"session_data" text NOT NULL, "expire_date" datetime NOT NULL)'
    ),
    "postgresql": (
        'CREATE TABLE "django_session" ("session_key" varchar(40) NOT NULL PRIMARY KEY, '
        '"session_data" text NOT NULL, "expire_date" timestamp with time zone NOT NULL)'
    ),
    "mysql": (
        "CREATE TABLE `django_session` (`session_key` varchar(40) NOT NULL PRIMARY KEY, "
        "`session_data` longtext NOT NULL, `expire_date` datetime(6) NOT NULL)"
    ),
}


# --- what stock Django would have stored -----------------------------------------------


def django_encode(data: dict[str, Any]) -> str:
    """``SessionBase.encode`` of django.contrib.sessions' db/cached_db engines."""
    return signing.dumps(data, salt=DJANGO_SALT, serializer=JSONSerializer, compress=True)


class PickleSerializer:
    """The serializer Django used to offer (removed in 5.0): what old tables may hold."""

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        raise AssertionError("the test never unpickles")


SPRUNG: list[str] = []


def _sprung(marker: str) -> str:
    SPRUNG.append(marker)
    return marker


class Trap:
    """Unpickling this calls ``_sprung``: proof that something unpickled the row."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_sprung, ("unpickled",))


def _new_key() -> str:
    return keys.generate_key()


@pytest.fixture
def stock_table(db_alias: str) -> Iterator[Any]:
    """An empty ``django_session`` on the routed alias; ``insert(key, data, expire)``."""
    connection = connections[db_alias]
    vendor = connection.vendor
    quoted = connection.ops.quote_name(TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {quoted}")
        cursor.execute(_DDL[vendor])

    def insert(key: str, session_data: str, expire: datetime) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quoted} (session_key, session_data, expire_date) "
                "VALUES (%s, %s, %s)",
                [key, session_data, connection.ops.adapt_datetimefield_value(expire)],
            )

    try:
        yield insert
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quoted}")


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("pickle.loads was called")

    SPRUNG.clear()
    monkeypatch.setattr(pickle, "loads", refuse)
    yield calls
    SPRUNG.clear()


@pytest.fixture
def stock_rows(stock_table: Any, alice: Any) -> dict[str, Any]:
    """One row of each kind; the keys and data of the two that must be imported."""
    soon = timezone.now() + timedelta(days=14)
    auth_data = {
        "_auth_user_id": str(alice.pk),
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": alice.get_session_auth_hash(),
        "cart": ["book-1", "book-2"],
    }
    anon_data = {"theme": "dark", "visits": 3, "flags": {"beta": True}}
    rows = {
        "auth": _new_key(),
        "anon": _new_key(),
        "expired": _new_key(),
        "garbage": _new_key(),
        "bad_signature": _new_key(),
        "pickle": _new_key(),
        "oversize": _new_key(),
    }
    stock_table(rows["auth"], django_encode(auth_data), soon)
    stock_table(rows["anon"], django_encode(anon_data), soon)
    stock_table(
        rows["expired"], django_encode({"theme": "old"}), timezone.now() - timedelta(hours=1)
    )
    stock_table(rows["garbage"], "this is not a signed session at all", soon)
    with override_settings(SECRET_KEY="some other site's secret key, long enough to pass"):
        stock_table(rows["bad_signature"], django_encode({"theme": "forged"}), soon)
    stock_table(
        rows["pickle"],
        signing.dumps(
            {"payload": Trap()}, salt=DJANGO_SALT, serializer=PickleSerializer, compress=True
        ),
        soon,
    )
    stock_table(rows["oversize"], django_encode({"blob": "x" * (MAX_BYTES * 2)}), soon)
    stock_table(UPPERCASE_KEY, django_encode({"theme": "upper"}), soon)
    stock_table(SHORT_KEY, django_encode({"theme": "short"}), soon)
    return {"keys": rows, "auth_data": auth_data, "anon_data": anon_data}


def _import(*args: str) -> str:
    out = StringIO()
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}):
        call_command("importdjangosessions", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def _stored(alias: str) -> dict[str, bytes]:
    return {
        pk: bytes(data)
        for pk, data in HardenedSession.objects.using(alias).values_list("pk", "data")
    }


EXPECTED_SKIPS = (
    "1 expired, 3 undecodable, 1 over MAX_BYTES, "
    "2 with a key that is not 32 characters of [a-z0-9]."
)


# --- the import ------------------------------------------------------------------------


def test_imports_the_live_sessions_and_counts_each_skip(
    db_alias: str, stock_rows: dict[str, Any], alice: Any, no_unpickling: list[Any]
) -> None:
    keys_ = stock_rows["keys"]

    output = _import()

    assert f"imported 2; skipped: 0 already imported, {EXPECTED_SKIPS}" in output
    assert set(_stored(db_alias)) == {keys.store_key(keys_["auth"]), keys.store_key(keys_["anon"])}
    assert SessionStore(keys_["auth"]).load() == stock_rows["auth_data"]
    assert SessionStore(keys_["anon"]).load() == stock_rows["anon_data"]
    rows = HardenedSession.objects.using(db_alias)
    assert rows.get(pk=keys.store_key(keys_["auth"])).user_id == str(alice.pk)
    assert rows.get(pk=keys.store_key(keys_["anon"])).user_id is None
    for skipped in ("expired", "garbage", "bad_signature", "pickle", "oversize"):
        assert SessionStore(keys_[skipped]).load() == {}
    assert no_unpickling == []
    assert SPRUNG == []


def test_the_stored_record_holds_no_raw_key(db_alias: str, stock_rows: dict[str, Any]) -> None:
    _import()

    for key in (stock_rows["keys"]["auth"], stock_rows["keys"]["anon"]):
        row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key))
        assert key not in bytes(row.data).decode()
        assert row.expire_date > timezone.now() + timedelta(days=13)


def test_expire_date_carries_over(db_alias: str, stock_table: Any) -> None:
    key = _new_key()
    expire = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    stock_table(key, django_encode({"theme": "dark"}), expire)

    _import()

    row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key))
    assert abs(row.expire_date - expire) <= timedelta(seconds=1)
    session = SessionStore(key)
    assert session.load() == {"theme": "dark"}
    assert session.record is not None
    assert session.record.deadline == int(expire.timestamp())


def test_a_second_run_imports_nothing_new(db_alias: str, stock_rows: dict[str, Any]) -> None:
    _import()
    first = _stored(db_alias)
    auth_key = stock_rows["keys"]["auth"]
    # A session used after the import must not be overwritten by a second run.
    session = SessionStore(auth_key)
    session["cart"] = ["book-3"]
    session.save()
    changed = _stored(db_alias)

    output = _import()

    assert f"imported 0; skipped: 2 already imported, {EXPECTED_SKIPS}" in output
    assert set(_stored(db_alias)) == set(first)
    assert _stored(db_alias) == changed
    assert SessionStore(auth_key).load()["cart"] == ["book-3"]


def test_dry_run_writes_nothing(
    db_alias: str, stock_rows: dict[str, Any], no_unpickling: list[Any]
) -> None:
    output = _import("--dry-run")

    assert f"would import 2; skipped: 0 already imported, {EXPECTED_SKIPS}" in output
    assert _stored(db_alias) == {}
    assert SessionStore(stock_rows["keys"]["auth"]).load() == {}
    assert SPRUNG == []

    assert "imported 2;" in _import()
    assert len(_stored(db_alias)) == 2


def test_small_batches_import_every_row(db_alias: str, stock_table: Any) -> None:
    soon = timezone.now() + timedelta(days=1)
    imported = {}
    for n in range(7):
        key = _new_key()
        stock_table(key, django_encode({"n": n}), soon)
        imported[key] = n

    output = _import("--batch-size", "2")

    assert "imported 7; skipped: 0 already imported, 0 expired" in output
    for key, n in imported.items():
        assert SessionStore(key).load() == {"n": n}


def test_no_stock_table_is_a_command_error(db_alias: str) -> None:
    connection = connections[db_alias]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {connection.ops.quote_name(TABLE)}")

    with pytest.raises(CommandError, match="django_session"):
        _import()


def test_an_imported_cookie_is_logged_in_through_the_middleware(
    db_alias: str, stock_rows: dict[str, Any]
) -> None:
    _import()

    with override_settings(ROOT_URLCONF=URLCONF):
        logged_in = Client()
        logged_in.cookies[COOKIE] = stock_rows["keys"]["auth"]
        anonymous = Client()
        anonymous.cookies[COOKIE] = stock_rows["keys"]["anon"]
        refused = Client()
        refused.cookies[COOKIE] = stock_rows["keys"]["expired"]

        assert json.loads(logged_in.get("/whoami/").content)["username"] == "alice"
        assert json.loads(anonymous.get("/whoami/").content)["authenticated"] is False
        assert json.loads(refused.get("/whoami/").content)["authenticated"] is False
