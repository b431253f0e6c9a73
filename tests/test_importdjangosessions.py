"""``manage.py importdjangosessions``: stock Django sessions carried over to hardened records.

The command reads ``django_session`` with plain SQL, verifies each row with Django's
own signing under the JSON serializer (never pickle), and writes a hardened record
under the SHA-256 of the original key, so existing cookies keep working. It skips
(and counts) rows that are expired, undecodable, over ``MAX_BYTES``, or whose key is
not one the engine would accept; a second run imports nothing new; ``--dry-run``
writes nothing. A stock session is imported at most once: after its import, whatever
ends it (logout, admin revoke, password change, rotation) is not undone by the next
run, on every engine, with runs at once or runs that stop halfway.

The stock table is created by hand on each alias, with the column types Django's own
migration gives it there, and filled with rows encoded exactly as
``django.contrib.sessions.backends.base.SessionBase.encode`` does.
"""

from __future__ import annotations

import json
import pickle
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from importlib import import_module
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
from hardened_sessions.admin import row_id
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.management.commands.importdjangosessions import (
    Command as ImportCommand,
)
from hardened_sessions.models import HardenedSession, ImportedDjangoSession
from tests.conftest import require_server
from tests.support.servers import cache_settings, flush_variant, sessions_cache
from tests.support.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TABLE = "django_session"
# What SessionBase.key_salt is for django.contrib.sessions' db and cached_db engines.
DJANGO_SALT = "django.contrib.sessions.SessionStore"
COOKIE = settings.SESSION_COOKIE_NAME
MAX_BYTES = 1024
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a new password, also long enough"

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
    "1 expired, 0 without a valid expire_date, 3 undecodable, 1 over MAX_BYTES, "
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


# --- an imported session is imported once: ended sessions stay ended ---------------------
#
# docs/adoption.rst's procedure runs the command again after the deploy. Whatever ended an
# imported session in between (logout, an admin revoke, a password change elsewhere, a
# rotation at login or by cycle_key()) must not be undone by that second run: the stock
# row is still there (rollbacks and old instances read it), so the command has to
# remember what it imported.

ENDINGS = ["logout", "admin_revoke", "password_change", "login_rotation", "cycle_key"]


def _with_cookie(key: str) -> Client:
    client = Client()
    client.cookies[COOKIE] = key
    return client


def _whoami(client: Client) -> str | None:
    username: str | None = json.loads(client.get("/whoami/").content)["username"]
    return username


def _end_session(how: str, key: str, alias: str, user: Any) -> None:
    """End the imported session ``key`` of ``user`` the way ``how`` names."""
    with override_settings(ROOT_URLCONF=URLCONF, STATIC_URL="/static/"):
        if how == "logout":
            response = _with_cookie(key).post("/accounts/logout/")
            assert response.status_code in (200, 302), response.status_code
        elif how == "admin_revoke":
            root = get_user_model().objects.create_superuser("root", password=PASSWORD)
            admin = Client()
            admin.force_login(root)
            response = admin.post(
                "/admin/hardened_sessions/hardenedsession/",
                {
                    "action": "revoke_selected",
                    "_selected_action": [row_id(HardenedSession(key_hash=keys.store_key(key)))],
                    "index": "0",
                    "select_across": "0",
                },
            )
            assert response.status_code == 302, response.status_code
        elif how == "password_change":
            # Another device changes the password: every other session of the user ends.
            other = Client()
            response = other.post(
                "/accounts/login/", {"username": user.get_username(), "password": PASSWORD}
            )
            assert response.status_code == 302
            response = other.post(
                "/accounts/password_change/",
                {
                    "old_password": PASSWORD,
                    "new_password1": NEW_PASSWORD,
                    "new_password2": NEW_PASSWORD,
                },
            )
            assert response.status_code == 302, response.status_code
        elif how == "login_rotation":
            # Django's login() cycles the key of a session that held no user (one that
            # already holds the same user is kept as it is).
            client = _with_cookie(key)
            response = client.post(
                "/accounts/login/", {"username": user.get_username(), "password": PASSWORD}
            )
            assert response.status_code == 302, response.status_code
            assert client.cookies[COOKIE].value != key
        elif how == "cycle_key":
            session = import_module(settings.SESSION_ENGINE).SessionStore(key)
            assert session.load() != {}
            session.cycle_key()
            assert session.session_key != key
        else:
            raise AssertionError(how)
    assert not _loads(key), f"{how} did not end the session"


def _loads(key: str) -> dict[str, Any]:
    return dict(import_module(settings.SESSION_ENGINE).SessionStore(key).load())


def _auth_row(stock_table: Any, user: Any, **extra: Any) -> str:
    key = _new_key()
    data = {
        "_auth_user_id": str(user.pk),
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": user.get_session_auth_hash(),
        **extra,
    }
    stock_table(key, django_encode(data), timezone.now() + timedelta(days=14))
    return key


@pytest.mark.parametrize("how", ENDINGS)
def test_a_second_import_does_not_bring_back_an_ended_session(
    db_alias: str, stock_table: Any, alice: Any, how: str
) -> None:
    if how == "login_rotation":
        key = _new_key()
        stock_table(key, django_encode({"cart": ["book-1"]}), timezone.now() + timedelta(days=1))
    else:
        key = _auth_row(stock_table, alice, cart=["book-1"])
    bystander = _auth_row(stock_table, alice, cart=["book-2"])
    assert "imported 2;" in _import()
    assert _loads(key)["cart"] == ["book-1"]

    _end_session(how, key, db_alias, alice)
    output = _import()

    assert "imported 0;" in output
    assert not HardenedSession.objects.using(db_alias).filter(pk=keys.store_key(key)).exists()
    assert _loads(key) == {}
    with override_settings(ROOT_URLCONF=URLCONF):
        assert _whoami(_with_cookie(key)) is None
    if how != "password_change":
        assert _loads(bystander)["cart"] == ["book-2"]


@pytest.mark.parametrize("how", ["logout", "cycle_key", "admin_revoke"])
def test_a_second_import_on_cached_db_does_not_bring_back_an_ended_session(
    db_alias: str, stock_table: Any, alice: Any, how: str
) -> None:
    locmem = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": f"import-cached-db-{db_alias}-{how}",
    }
    with override_settings(
        SESSION_ENGINE="hardened_sessions.backends.cached_db",
        CACHES={**settings.CACHES, "import-sessions": locmem},
        SESSION_CACHE_ALIAS="import-sessions",
    ):
        key = _auth_row(stock_table, alice)
        assert "imported 1;" in _import()
        assert _loads(key)["_auth_user_id"] == str(alice.pk)

        _end_session(how, key, db_alias, alice)
        assert "imported 0;" in _import()

        assert _loads(key) == {}


# --- rows the command cannot use: counted and skipped, never a traceback -----------------

# django_session as a hand-made (or older) schema may have it: NULLs allowed.
_LAX_DDL = {
    vendor: ddl.replace("NOT NULL,", "NULL,").replace("NOT NULL)", "NULL)")
    for vendor, ddl in _DDL.items()
}


@pytest.fixture
def lax_stock_table(db_alias: str, stock_table: Any) -> Any:
    """``django_session`` whose data and expire_date columns accept NULL."""
    connection = connections[db_alias]
    quoted = connection.ops.quote_name(TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {quoted}")
        cursor.execute(_LAX_DDL[connection.vendor])

    def insert_raw(key: str, session_data: Any, expire: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quoted} (session_key, session_data, expire_date) "
                "VALUES (%s, %s, %s)",
                [key, session_data, expire],
            )

    return insert_raw


def test_rows_without_expire_date_or_data_are_counted_not_a_crash(
    db_alias: str, lax_stock_table: Any
) -> None:
    connection = connections[db_alias]
    soon = connection.ops.adapt_datetimefield_value(timezone.now() + timedelta(days=1))
    good = _new_key()
    lax_stock_table(good, django_encode({"theme": "dark"}), soon)
    lax_stock_table(_new_key(), django_encode({"theme": "no date"}), None)
    lax_stock_table(_new_key(), None, soon)
    lax_stock_table(_new_key(), "", soon)
    bad_dates = 0
    if connection.vendor == "sqlite":
        # SQLite keeps whatever text was written: Django's converter would raise on some.
        for garbage in ("not a date", "2024-13-45 25:61:00", "", "12"):
            lax_stock_table(_new_key(), django_encode({"theme": garbage}), garbage)
            bad_dates += 1

    output = _import()

    assert "imported 1;" in output
    assert f"{1 + bad_dates} without a valid expire_date" in output
    assert "2 undecodable" in output
    assert _loads(good) == {"theme": "dark"}
    assert HardenedSession.objects.using(db_alias).count() == 1


def test_every_row_undecodable_hints_at_the_secret_key_and_fails(
    db_alias: str, stock_table: Any
) -> None:
    soon = timezone.now() + timedelta(days=1)
    with override_settings(SECRET_KEY="the secret key of the site before a rotation, long"):
        for n in range(3):
            stock_table(_new_key(), django_encode({"n": n}), soon)
    out, err = StringIO(), StringIO()

    with (
        override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}),
        pytest.raises(CommandError, match="SECRET_KEY_FALLBACKS"),
    ):
        call_command("importdjangosessions", stdout=out, stderr=err)

    assert "imported 0;" in out.getvalue()
    assert "3 undecodable" in out.getvalue()
    assert HardenedSession.objects.using(db_alias).count() == 0


def test_some_undecodable_rows_give_no_secret_key_hint(
    db_alias: str, stock_rows: dict[str, Any]
) -> None:
    out, err = StringIO(), StringIO()
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}):
        call_command("importdjangosessions", stdout=out, stderr=err)

    assert "SECRET_KEY" not in out.getvalue() + err.getvalue()


# --- the markers: written with the records, never by a dry run, pruned with care --------


def _markers(alias: str) -> dict[str, datetime]:
    return dict(ImportedDjangoSession.objects.using(alias).values_list("pk", "stock_expire_date"))


def test_each_imported_key_is_marked_by_its_hash_only(
    db_alias: str, stock_rows: dict[str, Any]
) -> None:
    _import()

    marked = _markers(db_alias)
    imported = {keys.store_key(stock_rows["keys"][name]) for name in ("auth", "anon")}
    assert set(marked) == imported == set(_stored(db_alias))
    raw_keys = set(stock_rows["keys"].values())
    for row in ImportedDjangoSession.objects.using(db_alias).values():
        assert not raw_keys & {str(value) for value in row.values()}


def test_dry_run_writes_no_markers_and_prunes_nothing(db_alias: str, stock_table: Any) -> None:
    key = _new_key()
    stock_table(key, django_encode({"theme": "dark"}), timezone.now() + timedelta(days=1))
    stale = ImportedDjangoSession.objects.using(db_alias).create(
        key_hash=keys.store_key(_new_key()),
        stock_expire_date=timezone.now() - timedelta(days=1),
        imported_at=timezone.now() - timedelta(days=15),
    )

    output = _import("--dry-run")

    assert "would import 1;" in output
    assert "would prune 1 import markers" in output
    assert set(_markers(db_alias)) == {stale.pk}
    assert _stored(db_alias) == {}


def test_markers_of_expired_or_vanished_stock_rows_are_pruned(
    db_alias: str, stock_table: Any
) -> None:
    soon = timezone.now() + timedelta(days=1)
    keep, vanishing = _new_key(), _new_key()
    stock_table(keep, django_encode({"n": 1}), soon)
    stock_table(vanishing, django_encode({"n": 2}), soon)
    _import()
    assert len(_markers(db_alias)) == 2
    connection = connections[db_alias]
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {connection.ops.quote_name(TABLE)} WHERE session_key = %s", [vanishing]
        )
    past = timezone.now() - timedelta(minutes=1)
    ImportedDjangoSession.objects.using(db_alias).filter(pk=keys.store_key(vanishing)).update(
        stock_expire_date=past
    )

    output = _import()

    assert "pruned 1 import markers" in output
    assert set(_markers(db_alias)) == {keys.store_key(keep)}


def test_a_stock_row_extended_after_the_import_keeps_its_marker(
    db_alias: str, stock_table: Any, alice: Any
) -> None:
    """Old instances of a rolling deploy keep extending django_session rows. The marker's
    date must follow, or it would be pruned while its stock row lives, and the next run
    would bring the session back after a logout."""
    key = _auth_row(stock_table, alice)
    _import()
    key_hash = keys.store_key(key)
    # Time passes: the marker's date is behind us, but an old instance extended the row.
    past = timezone.now() - timedelta(minutes=5)
    later = timezone.now() + timedelta(days=30)
    ImportedDjangoSession.objects.using(db_alias).filter(pk=key_hash).update(stock_expire_date=past)
    connection = connections[db_alias]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(TABLE)} SET expire_date = %s "
            "WHERE session_key = %s",
            [connection.ops.adapt_datetimefield_value(later), key],
        )
    _end_session("logout", key, db_alias, alice)

    output = _import()

    assert "imported 0; skipped: 1 already imported" in output
    assert "pruned 0 import markers" in output
    assert abs(_markers(db_alias)[key_hash] - later) < timedelta(seconds=1)
    assert "imported 0;" in _import()
    assert _loads(key) == {}


def test_a_record_imported_before_markers_existed_is_marked_not_replaced(
    db_alias: str, stock_rows: dict[str, Any], alice: Any
) -> None:
    _import()
    ImportedDjangoSession.objects.using(db_alias).all().delete()
    auth_key = stock_rows["keys"]["auth"]
    session = SessionStore(auth_key)
    session["cart"] = ["changed after the import"]
    session.save()
    before = _stored(db_alias)

    output = _import()

    assert f"imported 0; skipped: 2 already imported, {EXPECTED_SKIPS}" in output
    assert _stored(db_alias) == before
    assert set(_markers(db_alias)) == set(before)
    _end_session("logout", auth_key, db_alias, alice)
    assert "imported 0;" in _import()
    assert _loads(auth_key) == {}


# --- runs at once, runs that stop halfway -------------------------------------------------


class StaleViewCommand(ImportCommand):
    """A run that checked for markers just before a concurrent run wrote them: what it
    sees is nothing, what it inserts collides."""

    def _marked(self, key_hashes: list[str]) -> dict[str, datetime]:
        return {}

    def _existing_rows(self, key_hashes: list[str]) -> set[str]:
        return set()


def test_a_run_racing_another_counts_its_keys_as_already_imported(
    db_alias: str, stock_rows: dict[str, Any]
) -> None:
    _import()
    before = _stored(db_alias)
    out = StringIO()

    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}):
        call_command(StaleViewCommand(), stdout=out, stderr=StringIO())

    assert f"imported 0; skipped: 2 already imported, {EXPECTED_SKIPS}" in out.getvalue()
    assert _stored(db_alias) == before


def test_two_runs_at_once_import_each_session_once(db_alias: str, stock_table: Any) -> None:
    soon = timezone.now() + timedelta(days=1)
    expected = {}
    for n in range(120):
        key = _new_key()
        stock_table(key, django_encode({"n": n}), soon)
        expected[key] = n
    barrier = threading.Barrier(2)
    outputs: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out = StringIO()
            barrier.wait()
            call_command("importdjangosessions", "--batch-size", "10", stdout=out)
            outputs.append(out.getvalue())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    # Settings are overridden once, around both threads: override_settings is global.
    threads = [threading.Thread(target=run) for _ in range(2)]
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    assert errors == []
    assert len(outputs) == 2
    imported = [int(re.search(r"imported (\d+);", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    already = [int(re.search(r"(\d+) already imported", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(imported) == 120
    assert sum(already) == 120
    assert len(_stored(db_alias)) == len(_markers(db_alias)) == 120
    for key, n in expected.items():
        assert SessionStore(key).load() == {"n": n}


_FAULT_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER hs_import_fault BEFORE INSERT ON hardened_sessions_session "
        "WHEN NEW.key_hash = '{key_hash}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION hs_import_fault() RETURNS trigger AS $$ BEGIN "
        "IF NEW.key_hash = '{key_hash}' THEN RAISE EXCEPTION 'injected fault'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER hs_import_fault BEFORE INSERT ON hardened_sessions_session "
        "FOR EACH ROW EXECUTE FUNCTION hs_import_fault()",
    ],
    "mysql": [
        "CREATE TRIGGER hs_import_fault BEFORE INSERT ON hardened_sessions_session "
        "FOR EACH ROW BEGIN IF NEW.key_hash = '{key_hash}' THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected fault'; END IF; END"
    ],
}
_DROP_FAULT = {
    "sqlite": ["DROP TRIGGER IF EXISTS hs_import_fault"],
    "postgresql": [
        "DROP TRIGGER IF EXISTS hs_import_fault ON hardened_sessions_session",
        "DROP FUNCTION IF EXISTS hs_import_fault()",
    ],
    "mysql": ["DROP TRIGGER IF EXISTS hs_import_fault"],
}


def test_a_run_that_fails_halfway_leaves_no_record_unmarked_and_a_rerun_finishes(
    db_alias: str, stock_table: Any
) -> None:
    """The database refuses one record in the middle of the run (a trigger): the run
    reports only what it wrote and exits non-zero; every record written has its marker
    and no marker lacks its record; the next run imports the rest, each once."""
    soon = timezone.now() + timedelta(days=1)
    expected = {}
    for n in range(7):
        key = _new_key()
        stock_table(key, django_encode({"n": n}), soon)
        expected[key] = n
    refused = sorted(expected)[3]
    connection = connections[db_alias]
    vendor = connection.vendor
    out = StringIO()
    try:
        with connection.cursor() as cursor:
            for statement in _FAULT_TRIGGER[vendor]:
                cursor.execute(statement.replace("{key_hash}", keys.store_key(refused)))
        with (
            override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}),
            pytest.raises(CommandError),
        ):
            call_command("importdjangosessions", "--batch-size", "2", stdout=out, stderr=out)
    finally:
        with connection.cursor() as cursor:
            for statement in _DROP_FAULT[vendor]:
                cursor.execute(statement)

    stored, marked = set(_stored(db_alias)), set(_markers(db_alias))
    assert stored == marked
    assert keys.store_key(refused) not in stored
    reported = int(re.search(r"imported (\d+);", out.getvalue()).group(1))  # type: ignore[union-attr]
    assert reported == len(stored) >= 2

    output = _import()

    assert f"imported {7 - reported}; skipped: {reported} already imported" in output
    assert set(_stored(db_alias)) == set(_markers(db_alias))
    for key, n in expected.items():
        assert SessionStore(key).load() == {"n": n}


def test_a_non_hardened_engine_is_refused(db_alias: str, stock_rows: dict[str, Any]) -> None:
    with (
        override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"),
        pytest.raises(CommandError, match="not one of hardened_sessions' engines"),
    ):
        _import()
    assert _stored(db_alias) == {}
    assert _markers(db_alias) == {}


# --- the cache engine: markers first, then the records ------------------------------------


@pytest.mark.parametrize("how", ["logout", "cycle_key"])
def test_cache_engine_imports_once_and_ended_sessions_stay_ended(
    db_alias: str, stock_table: Any, alice: Any, session_cache: str, how: str
) -> None:
    with override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"):
        key = _auth_row(stock_table, alice, cart=["book-1"])
        other = _auth_row(stock_table, alice, cart=["book-2"])
        assert "imported 2;" in _import()
        assert _loads(key)["cart"] == ["book-1"]
        assert _stored(db_alias) == {}  # nothing in the table the engine does not read
        assert set(_markers(db_alias)) == {keys.store_key(key), keys.store_key(other)}
        with override_settings(ROOT_URLCONF=URLCONF):
            assert _whoami(_with_cookie(key)) == "alice"

        _end_session(how, key, db_alias, alice)
        output = _import()

        assert "imported 0; skipped: 2 already imported" in output
        assert _loads(key) == {}
        assert _loads(other)["cart"] == ["book-2"]


def test_cache_engine_store_failure_stops_the_run_and_loses_at_most_the_row_in_flight(
    db_alias: str,
    stock_table: Any,
    redis_server: Any,
    fault_proxy: Any,
) -> None:
    if not redis_server.managed:
        require_server("redis", "cutting a server needs one started by the tests")
    soon = timezone.now() + timedelta(days=1)
    expected = {}
    for n in range(5):
        key = _new_key()
        stock_table(key, django_encode({"n": n}), soon)
        expected[key] = n
    proxy = fault_proxy(redis_server)
    options = {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}
    config = cache_settings("django-redis", redis=proxy.as_server(), options=options)
    flush_variant("django-redis", {"redis": redis_server})
    out, err = StringIO(), StringIO()
    try:
        with sessions_cache(config, SESSION_ENGINE="hardened_sessions.backends.cache"):
            proxy.cut()
            with (
                override_settings(HARDENED_SESSIONS={"MAX_BYTES": MAX_BYTES}),
                pytest.raises(CommandError, match="session store failed"),
            ):
                call_command("importdjangosessions", stdout=out, stderr=err)
            assert "imported 0;" in out.getvalue()
            assert "failed: 1" in err.getvalue()
            # The row in flight (the first one the scan reached) keeps its marker (its
            # write may have landed): lost, not importable again. The rows never sent
            # have none.
            by_hash = {keys.store_key(key): key for key in expected}
            (in_flight,) = _markers(db_alias)
            first = by_hash[in_flight]

            proxy.restore()
            output = _import()

            assert "imported 4; skipped: 1 already imported" in output
            assert _loads(first) == {}
            for key, n in expected.items():
                if key != first:
                    assert _loads(key) == {"n": n}
    finally:
        flush_variant("django-redis", {"redis": redis_server})
