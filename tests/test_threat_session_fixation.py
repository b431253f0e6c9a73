"""Session fixation: a key known before login must be worthless after it.

docs/design.rst, "What the engines do", ``cycle_key()``: Django's ``login()`` and
``update_session_auth_hash()`` rotate the key; the old record is deleted first (and
must have existed), the data moves to a fresh key, and every failure fails closed:
never two live keys, never revoked data under a new key, a 503 that expires the
cookie. ``created`` restarts at rotation, so the absolute timeout counts from login.

Faults: the random source (``random._urandom``, what ``secrets`` reads), a cut
connection to PostgreSQL (``tests.support.faults``), and, for a failure *between* the
delete and the create of one rotation, the store subclass ``tests.support.http_fault_engine``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from hardened_sessions.backends.db import SessionStore
from hardened_sessions.exceptions import SessionRotationFailed
from hardened_sessions.models import HardenedSession
from tests.support import http_fault_engine, views_http
from tests.support.faults import sessions_through_proxy
from tests.support.views_http import (
    URLCONF,
    assert_cookie_expired,
    clock_shifted,
    row_count,
    session_cookie,
    session_row,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "another horse, another staple"
COOKIE = settings.SESSION_COOKIE_NAME
ANONYMOUS: dict[str, Any] = {"authenticated": False, "username": None, "keys": []}


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF):
        yield


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def fault_engine() -> Iterator[type[http_fault_engine.SessionStore]]:
    engine = http_fault_engine.SessionStore
    engine.failing.clear()
    engine.calls.clear()
    try:
        with override_settings(SESSION_ENGINE="tests.support.http_fault_engine"):
            yield engine
    finally:
        engine.failing.clear()
        engine.calls.clear()


def _failing_urandom(n: int) -> bytes:
    raise OSError("the random source failed")


def _credentials() -> dict[str, str]:
    return {"username": "alice", "password": PASSWORD}


def _cookie_value(response: Any) -> str:
    morsel = session_cookie(response)
    assert morsel is not None, "no session cookie was set"
    return morsel.value


def _whoami(key: str) -> dict[str, Any]:
    client = Client()
    client.cookies[COOKIE] = key
    result: dict[str, Any] = json.loads(client.get("/whoami/").content)
    return result


def _stored_session(**data: Any) -> str:
    session = SessionStore()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


def _rows_of(user: Any, alias: str) -> int:
    return HardenedSession.objects.using(alias).filter(user_id=str(user.pk)).count()


# --- login and password change through Django's own views ------------------------------


def test_login_rotates_the_key_and_the_old_cookie_loads_nothing(db_alias: str, alice: Any) -> None:
    client = Client()
    old_key = _cookie_value(client.get("/set/", {"key": "cart", "value": "3 books"}))
    assert session_row(old_key, db_alias) is not None

    login = client.post("/login/", _credentials())

    assert login.status_code == 302
    new_key = _cookie_value(login)
    assert new_key != old_key
    assert session_row(old_key, db_alias) is None
    row = session_row(new_key, db_alias)
    assert row is not None and row.user_id == str(alice.pk)
    assert row_count(db_alias) == 1
    me = json.loads(client.get("/whoami/").content)
    assert me["authenticated"] is True and "cart" in me["keys"]
    # The pre-login cookie, replayed by whoever planted or saw it, is no session at all.
    assert _whoami(old_key) == ANONYMOUS
    assert row_count(db_alias) == 1


def test_a_planted_unknown_key_is_never_adopted(db_alias: str, alice: Any) -> None:
    planted = "fixation" + "0" * 24  # well-formed, never issued
    client = Client()
    client.cookies[COOKIE] = planted

    first = _cookie_value(client.get("/set/", {"value": "1"}))
    login = client.post("/login/", _credentials())

    assert first != planted
    assert _cookie_value(login) not in (planted, first)
    assert session_row(planted, db_alias) is None
    assert _whoami(planted) == ANONYMOUS


def test_password_change_rotates_the_key(db_alias: str, alice: Any) -> None:
    client = Client()
    key = _cookie_value(client.post("/login/", _credentials()))

    response = client.post(
        "/password-change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )

    assert response.status_code == 302 and response["Location"] == "/done/"
    new_key = _cookie_value(response)
    assert new_key != key
    assert session_row(key, db_alias) is None
    row = session_row(new_key, db_alias)
    assert row is not None and row.user_id == str(alice.pk)
    assert json.loads(client.get("/whoami/").content)["username"] == "alice"
    assert _whoami(key) == ANONYMOUS


@override_settings(HARDENED_SESSIONS={"ABSOLUTE_TIMEOUT": 1000})
def test_the_absolute_timeout_counts_from_login(db_alias: str, alice: Any) -> None:
    client = Client()
    with clock_shifted(-500):  # an anonymous session started 500 s ago
        old_key = _cookie_value(client.get("/set/", {"value": "1"}))
    old_row = session_row(old_key, db_alias)
    assert old_row is not None

    login = client.post("/login/", _credentials())

    morsel = session_cookie(login)
    assert morsel is not None
    assert 999 <= int(morsel["max-age"]) <= 1000
    row = session_row(morsel.value, db_alias)
    assert row is not None
    assert abs(row.created.timestamp() - time.time()) <= 2
    assert (row.created - old_row.created).total_seconds() >= 499


# --- cycle_key() on the store -----------------------------------------------------------


def test_cycle_key_moves_the_data_to_a_fresh_key(db_alias: str) -> None:
    key = _stored_session(secret="s3", cart=2)
    session = SessionStore(key)
    assert session["secret"] == "s3"

    session.cycle_key()

    assert session.session_key not in (None, key)
    assert session_row(key, db_alias) is None
    assert SessionStore(session.session_key).load() == {"secret": "s3", "cart": 2}
    assert row_count(db_alias) == 1


def test_cycle_key_after_a_revocation_starts_empty_under_a_fresh_key(db_alias: str) -> None:
    key = _stored_session(secret="revoked data")
    session = SessionStore(key)
    assert session["secret"] == "revoked data"  # loaded...
    SessionStore(key).delete()  # ...then revoked elsewhere, before the rotation

    session.cycle_key()

    assert session.session_key not in (None, key)
    assert dict(session.items()) == {}
    assert session_row(key, db_alias) is None
    assert SessionStore(session.session_key).load() == {}
    stored = HardenedSession.objects.using(db_alias).all()
    assert all(b"revoked data" not in bytes(row.data) for row in stored)
    assert len(stored) <= 1


def test_cycle_key_when_the_delete_fails_changes_nothing(
    db_alias: str, fault_engine: type[http_fault_engine.SessionStore]
) -> None:
    key = _stored_session(secret="s")
    session = fault_engine(key)
    assert session["secret"] == "s"
    fault_engine.failing.add("remove")
    fault_engine.calls.clear()

    with pytest.raises(SessionRotationFailed):
        session.cycle_key()

    assert session.session_key == key
    assert dict(session.items()) == {"secret": "s"}
    assert fault_engine.calls == ["remove"]  # no new key was even tried
    assert SessionStore(key).load() == {"secret": "s"}
    assert row_count(db_alias) == 1


@pytest.mark.parametrize("fault", ["store", "random source"])
def test_cycle_key_when_the_create_fails_leaves_the_session_empty_and_keyless(
    db_alias: str,
    fault_engine: type[http_fault_engine.SessionStore],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    key = _stored_session(secret="s")
    session = fault_engine(key)
    assert session["secret"] == "s"
    fault_engine.calls.clear()

    with monkeypatch.context() as patch:
        if fault == "store":
            fault_engine.failing.add("write_new")
        else:
            patch.setattr(random, "_urandom", _failing_urandom)
        with pytest.raises(SessionRotationFailed):
            session.cycle_key()

    assert fault_engine.calls[0] == "remove"  # the old record went first
    assert session.session_key is None
    assert dict(session.items()) == {}
    assert session.is_empty()
    assert session_row(key, db_alias) is None
    assert row_count(db_alias) == 0


# --- a failed rotation through the middleware ---------------------------------------------


@pytest.mark.parametrize("fault", ["delete", "create", "random source"])
def test_a_failed_rotation_at_login_answers_503_and_expires_the_cookie(
    db_alias: str,
    alice: Any,
    fault_engine: type[http_fault_engine.SessionStore],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    client = Client()
    old_key = _cookie_value(client.get("/set/", {"key": "cart", "value": "1"}))

    with monkeypatch.context() as patch:
        if fault == "delete":
            fault_engine.failing.add("remove")
        elif fault == "create":
            fault_engine.failing.add("write_new")
        else:
            patch.setattr(random, "_urandom", _failing_urandom)
        response = client.post("/login/", _credentials())

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert_cookie_expired(response)
    assert _rows_of(alice, db_alias) == 0
    if fault == "delete":
        # Nothing changed in the store: the old session is still exactly as it was.
        assert SessionStore(old_key).load() == {"cart": "1"}
        assert row_count(db_alias) == 1
    else:
        assert session_row(old_key, db_alias) is None
        assert row_count(db_alias) == 0
    fault_engine.failing.clear()
    assert json.loads(client.get("/whoami/").content)["authenticated"] is False


def test_a_rotation_failure_swallowed_by_the_view_still_answers_503(
    db_alias: str, fault_engine: type[http_fault_engine.SessionStore]
) -> None:
    client = Client()
    client.get("/set/", {"value": "1"})
    assert client.get("/cycle-and-swallow/").status_code == 200  # rotates fine when healthy
    key = _cookie_value(client.get("/set/", {"value": "2"}))
    fault_engine.failing.add("remove")

    response = client.get("/cycle-and-swallow/")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert_cookie_expired(response)
    assert SessionStore(key).load() == {"n": "2"}


@pytest.mark.postgresql
def test_login_when_the_store_drops_before_the_rotation_answers_503(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sessions_through_proxy() as proxy:
        client = Client()
        old_key = _cookie_value(client.get("/set/", {"key": "cart", "value": "1"}))
        # The session is loaded through the proxy, then the server goes away before
        # login() deletes the old record.
        monkeypatch.setattr(views_http, "during_view", proxy.cut)

        response = client.post("/read-then-login/", _credentials())
        proxy.restore()

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert_cookie_expired(response)
    assert session_row(old_key, "postgresql") is not None
    assert _rows_of(alice, "postgresql") == 0
