"""Threat: a store whose rows lie, leak or land in the wrong place.

The schema refuses what it can (a key hash that is not 64 characters, an empty
record, version 0); a row is keyed by the SHA-256 hex of the session key and never
holds the key itself; the query columns (user, size, expiry) repeat what the signed
record says; and rows live on the database the routers choose.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model, login
from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from tests.support.clock import clock_at

DB = pytest.mark.django_db(transaction=True, databases="__all__")
PASSWORD = "correct horse battery staple"


def write_view(request: HttpRequest) -> HttpResponse:
    request.session["cart"] = ["apple"]
    return HttpResponse("ok")


def login_view(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, username=request.POST["username"], password=request.POST["password"]
    )
    assert user is not None
    login(request, user)
    return HttpResponse("logged in")


urlpatterns = [path("write/", write_view), path("login/", login_view)]


# --- helpers -------------------------------------------------------------------------


def sha256_hex(session_key: str) -> str:
    return hashlib.sha256(session_key.encode("ascii")).hexdigest()


def moment(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def row_for(alias: str, session_key: str) -> HardenedSession:
    return HardenedSession.objects.using(alias).get(pk=sha256_hex(session_key))


def valid_row(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(tz=UTC).replace(microsecond=0)
    fields: dict[str, Any] = {
        "key_hash": hashlib.sha256(b"a row written by hand").hexdigest(),
        "data": b"hs1:x",
        "expire_date": now,
        "created": now,
        "last_activity": now,
        "user_id": None,
        "size": 5,
        "version": 1,
    }
    fields.update(overrides)
    return fields


def insert(alias: str, **overrides: Any) -> None:
    with transaction.atomic(using=alias):
        HardenedSession.objects.using(alias).create(**valid_row(**overrides))


def other_aliases(alias: str) -> list[str]:
    return [a for a in settings.DATABASES if a != alias]


# --- the schema ---------------------------------------------------------------------------


@DB
def test_a_valid_row_inserts(db_alias: str) -> None:
    # Control for the tests below: only the field each one breaks makes them fail.
    insert(db_alias)
    assert HardenedSession.objects.using(db_alias).count() == 1


@DB
@pytest.mark.parametrize(
    "overrides",
    [
        {"key_hash": "a" * 63},
        {"key_hash": "a" * 32},
        {"key_hash": ""},
        {"size": 0},
        {"version": 0},
    ],
    ids=["key-hash-63", "key-hash-32", "key-hash-empty", "size-0", "version-0"],
)
def test_schema_refuses_a_malformed_row(db_alias: str, overrides: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError):
        insert(db_alias, **overrides)
    assert HardenedSession.objects.using(db_alias).count() == 0


@DB
def test_schema_refuses_a_key_hash_longer_than_64(db_alias: str) -> None:
    # Too long for the column: PostgreSQL and MySQL refuse it as a DataError, SQLite
    # (which does not enforce lengths) through the check constraint.
    with pytest.raises((IntegrityError, DatabaseError)):
        insert(db_alias, key_hash="a" * 65)
    assert HardenedSession.objects.using(db_alias).count() == 0


# --- what a row holds -------------------------------------------------------------------------


@DB
def test_row_is_keyed_by_the_sha256_of_the_key_which_is_stored_nowhere(db_alias: str) -> None:
    session = SessionStore()
    session["cart"] = ["apple"]
    session.save()
    key = session.session_key
    assert key is not None

    rows = list(HardenedSession.objects.using(db_alias).all())
    assert [row.key_hash for row in rows] == [sha256_hex(key)]
    row = rows[0]
    assert key.encode() not in bytes(row.data)
    for field in HardenedSession._meta.concrete_fields:
        value = getattr(row, field.attname)
        assert key not in str(value), f"the session key shows in column {field.name}"


@DB
def test_size_is_the_length_of_the_stored_record(db_alias: str) -> None:
    session = SessionStore()
    session["cart"] = ["apple"]
    session.save()
    assert session.session_key is not None
    row = row_for(db_alias, session.session_key)
    assert row.size == len(bytes(row.data))
    first_size = row.size

    session["cart"] = ["apple", "pear", "x" * 1000]
    session.save()
    row = row_for(db_alias, session.session_key)
    assert row.size == len(bytes(row.data))
    assert row.size > first_size + 1000


@DB
@pytest.mark.urls(__name__)
def test_user_column_is_null_for_anonymous_sessions(db_alias: str) -> None:
    client = Client()
    assert client.get("/write/").status_code == 200
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert row_for(db_alias, key).user_id is None


@DB
@pytest.mark.urls(__name__)
def test_user_column_holds_the_pk_as_a_string_after_client_login(db_alias: str) -> None:
    user_model = get_user_model()
    user_model.objects.create_user("decoy", password=PASSWORD)
    user = user_model.objects.create_user("alice", password=PASSWORD)
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    row = row_for(db_alias, key)
    assert row.user_id == str(user.pk)
    assert isinstance(row.user_id, str)


@DB
@pytest.mark.urls(__name__)
def test_user_column_follows_a_login_through_the_middleware(db_alias: str) -> None:
    user_model = get_user_model()
    user_model.objects.create_user("decoy", password=PASSWORD)
    user = user_model.objects.create_user("bob", password=PASSWORD)
    client = Client()
    assert client.get("/write/").status_code == 200
    anonymous_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert row_for(db_alias, anonymous_key).user_id is None

    response = client.post("/login/", {"username": "bob", "password": PASSWORD})
    assert response.status_code == 200
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert key != anonymous_key
    assert row_for(db_alias, key).user_id == str(user.pk)
    assert not HardenedSession.objects.using(db_alias).filter(pk=sha256_hex(anonymous_key)).exists()


EXPIRE_CASES = {
    "cookie-age": ({"SESSION_COOKIE_AGE": 300}, {}, 300),
    "idle": ({}, {"IDLE_TIMEOUT": 600, "ABSOLUTE_TIMEOUT": 3600}, 600),
    "absolute": ({}, {"IDLE_TIMEOUT": 600, "ABSOLUTE_TIMEOUT": 400}, 400),
    "cookie-age-before-idle": ({"SESSION_COOKIE_AGE": 200}, {"IDLE_TIMEOUT": 600}, 200),
}


@DB
@pytest.mark.parametrize("case", list(EXPIRE_CASES))
def test_expire_date_is_the_earliest_deadline(db_alias: str, case: str) -> None:
    django_settings, hardened, earliest = EXPIRE_CASES[case]
    start = int(time.time())
    with override_settings(**django_settings, HARDENED_SESSIONS=hardened), clock_at(start):
        session = SessionStore()
        session["cart"] = ["apple"]
        session.save()
    assert session.session_key is not None
    assert row_for(db_alias, session.session_key).expire_date == moment(start + earliest)


@DB
def test_expire_date_follows_set_expiry(db_alias: str) -> None:
    start = int(time.time())
    with clock_at(start):
        session = SessionStore()
        session["cart"] = ["apple"]
        session.set_expiry(90)
        session.save()
    assert session.session_key is not None
    assert row_for(db_alias, session.session_key).expire_date == moment(start + 90)


@DB
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600, "ABSOLUTE_TIMEOUT": 1000})
def test_expire_date_moves_with_activity_up_to_the_absolute_deadline(db_alias: str) -> None:
    start = int(time.time())
    with clock_at(start):
        session = SessionStore()
        session["cart"] = ["apple"]
        session.save()
    key = session.session_key
    assert key is not None
    assert row_for(db_alias, key).expire_date == moment(start + 600)

    with clock_at(start + 100):
        touched = SessionStore(key)
        assert touched["cart"] == ["apple"]
        touched.touch()
    assert row_for(db_alias, key).expire_date == moment(start + 700)

    with clock_at(start + 500):
        saved = SessionStore(key)
        saved["cart"] = ["apple", "pear"]
        saved.save()
    # The idle deadline (start + 1100) is now past the absolute one (start + 1000).
    assert row_for(db_alias, key).expire_date == moment(start + 1000)


# --- routing -------------------------------------------------------------------------------


@DB
def test_rows_live_on_the_routed_database_only(db_alias: str) -> None:
    session = SessionStore()
    session["cart"] = ["apple"]
    session.save()
    key = session.session_key
    assert key is not None

    assert HardenedSession.objects.using(db_alias).filter(pk=sha256_hex(key)).exists()
    for alias in other_aliases(db_alias):
        assert not HardenedSession.objects.using(alias).exists(), f"a row landed on {alias!r}"

    # Reads go through the router too: the row exists nowhere else, and it loads.
    assert SessionStore(key).load() == {"cart": ["apple"]}

    # So do deletes.
    SessionStore(key).delete()
    assert not HardenedSession.objects.using(db_alias).exists()


@DB
@pytest.mark.urls(__name__)
def test_middleware_sessions_land_on_the_routed_database(db_alias: str) -> None:
    client = Client()
    assert client.get("/write/").status_code == 200
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert HardenedSession.objects.using(db_alias).filter(pk=sha256_hex(key)).exists()
    for alias in other_aliases(db_alias):
        assert not HardenedSession.objects.using(alias).exists(), f"a row landed on {alias!r}"
