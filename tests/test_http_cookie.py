"""The session cookie and the caching headers that ``HardenedSessionMiddleware`` sends.

docs/design.rst, "What the engines do": cookie flags, cookie lifetime, ``SameSite=None``, the headers of
responses that touched the session, and the rule that a key is only ever sent once it
is stored. Every assertion is on a real response of Django's test client (the
``Set-Cookie`` header parsed back with ``http.cookies``) and on the stored rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from hardened_sessions.backends.db import SessionStore
from tests.support.views_http import (
    URLCONF,
    assert_cookie_expired,
    cache_control,
    clock_shifted,
    row_count,
    session_cookie,
    session_row,
    set_cookie_headers,
    varies_on_cookie,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

PASSWORD = "correct horse battery staple"
COOKIE = settings.SESSION_COOKIE_NAME


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF):
        yield


@pytest.fixture
def alice() -> object:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


def _new_session(client: Client, value: str = "1") -> str:
    response = client.get("/set/", {"value": value})
    assert response.status_code == 200
    morsel = session_cookie(response)
    assert morsel is not None
    return morsel.value


# --- flags -----------------------------------------------------------------------------


def test_cookie_is_httponly_by_default() -> None:
    response = Client().get("/set/", {"value": "1"})

    morsel = session_cookie(response)
    assert morsel is not None
    assert morsel["httponly"] is True
    assert morsel["path"] == "/"
    assert morsel["samesite"] == "Lax"
    assert not morsel["secure"]
    assert len(morsel.value) == 32


@override_settings(SESSION_COOKIE_HTTPONLY=False)
def test_httponly_is_absent_only_when_disabled() -> None:
    response = Client().get("/set/", {"value": "1"})

    morsel = session_cookie(response)
    assert morsel is not None
    assert not morsel["httponly"]
    assert all("httponly" not in header.lower() for header in set_cookie_headers(response))


@pytest.mark.parametrize(
    ("samesite", "secure_setting", "expect_secure"),
    [
        ("Lax", False, False),
        ("Strict", False, False),
        ("Lax", True, True),
        ("None", False, True),
        ("None", True, True),
    ],
)
def test_samesite_none_always_forces_secure(
    samesite: str, secure_setting: bool, expect_secure: bool
) -> None:
    with override_settings(SESSION_COOKIE_SAMESITE=samesite, SESSION_COOKIE_SECURE=secure_setting):
        client = Client()
        response = client.get("/set/", {"value": "1"})
        deleted = client.get("/flush/")

    morsel = session_cookie(response)
    assert morsel is not None
    assert morsel["samesite"] == samesite
    assert bool(morsel["secure"]) is expect_secure
    # The deletion goes out with the same constraint (a browser ignores a
    # SameSite=None cookie without Secure, deletion included).
    expired = assert_cookie_expired(deleted)
    assert expired["samesite"] == samesite
    if samesite == "None":
        assert expired["secure"] is True


# --- lifetime ----------------------------------------------------------------------------


@override_settings(HARDENED_SESSIONS={"ABSOLUTE_TIMEOUT": 1000})
def test_max_age_is_the_time_left_to_the_absolute_deadline(db_alias: str) -> None:
    client = Client()
    with clock_shifted(-300):  # the session was created 300 s ago
        first = client.get("/set/", {"value": "1"})
    created = session_cookie(first)
    assert created is not None
    assert 999 <= int(created["max-age"]) <= 1000

    response = client.get("/set/", {"value": "2"})

    morsel = session_cookie(response)
    assert morsel is not None
    assert morsel.value == created.value
    max_age = int(morsel["max-age"])
    assert 699 <= max_age <= 700
    expires = parsedate_to_datetime(morsel["expires"]).timestamp()
    assert abs(expires - (time.time() + max_age)) <= 2


@override_settings(SESSION_COOKIE_AGE=500, HARDENED_SESSIONS={"ABSOLUTE_TIMEOUT": 1000})
def test_max_age_is_the_cookie_age_when_that_ends_first() -> None:
    morsel = session_cookie(Client().get("/set/", {"value": "1"}))

    assert morsel is not None
    assert morsel["max-age"] == "500"


@pytest.mark.parametrize(
    "hardened", [{}, {"IDLE_TIMEOUT": 60}], ids=["no-timeouts", "idle-timeout-only"]
)
def test_max_age_is_the_cookie_age_without_an_absolute_timeout(hardened: dict[str, int]) -> None:
    # The idle timeout is enforced on the server only: it never shortens the cookie.
    with override_settings(SESSION_COOKIE_AGE=4321, HARDENED_SESSIONS=hardened):
        morsel = session_cookie(Client().get("/set/", {"value": "1"}))

    assert morsel is not None
    assert morsel["max-age"] == "4321"


@pytest.mark.parametrize(
    "hardened", [{}, {"ABSOLUTE_TIMEOUT": 1000}], ids=["no-timeouts", "absolute-timeout"]
)
def test_no_max_age_when_the_session_ends_with_the_browser(hardened: dict[str, int]) -> None:
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True, HARDENED_SESSIONS=hardened):
        morsel = session_cookie(Client().get("/set/", {"value": "1"}))

    assert morsel is not None
    assert morsel["max-age"] == ""
    assert morsel["expires"] == ""


@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_activity_touch_writes_the_row_but_sets_no_cookie(db_alias: str) -> None:
    client = Client()
    with clock_shifted(-120):  # last activity two minutes ago
        key = _new_session(client, "kept")
    before = session_row(key, db_alias)
    assert before is not None

    response = client.get("/read/")

    assert response.status_code == 200
    assert json.loads(response.content) == "kept"
    assert session_cookie(response) is None
    assert varies_on_cookie(response)
    after = session_row(key, db_alias)
    assert after is not None
    assert after.version > before.version
    assert (after.last_activity - before.last_activity).total_seconds() >= 119
    # The idle deadline moved with the activity.
    assert (after.expire_date - before.expire_date).total_seconds() >= 119
    assert SessionStore(key).load() == {"n": "kept"}


def test_read_only_request_without_idle_timeout_writes_nothing(db_alias: str) -> None:
    client = Client()
    key = _new_session(client, "kept")
    before = session_row(key, db_alias)

    response = client.get("/read/")

    assert json.loads(response.content) == "kept"
    assert session_cookie(response) is None
    after = session_row(key, db_alias)
    assert after is not None and before is not None
    assert after.version == before.version
    assert bytes(after.data) == bytes(before.data)


@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": 60})
def test_touch_interval_spaces_out_the_activity_writes(db_alias: str) -> None:
    client = Client()
    with clock_shifted(-90):
        key = _new_session(client, "kept")
    created = session_row(key, db_alias)
    assert created is not None

    client.get("/read/")  # 90 s since the last activity: recorded
    touched = session_row(key, db_alias)
    response = client.get("/read/")  # just recorded: not again
    untouched = session_row(key, db_alias)

    assert touched is not None and untouched is not None
    assert touched.version > created.version
    assert untouched.version == touched.version
    assert session_cookie(response) is None


# --- headers of responses that touched the session ---------------------------------------


def test_vary_cookie_only_on_responses_that_touched_the_session() -> None:
    client = Client()
    created = client.get("/set/", {"value": "1"})
    read = client.get("/read/")
    untouched = client.get("/untouched/")

    assert varies_on_cookie(created)
    assert varies_on_cookie(read)
    assert session_cookie(read) is None
    assert not varies_on_cookie(untouched)


@pytest.mark.parametrize(
    ("from_view", "expected"),
    [
        (None, {"private": None}),
        ("public, max-age=60", {"private": None, "max-age": "60"}),
        ("no-store", {"no-store": None}),
        ("private, max-age=5", {"private": None, "max-age": "5"}),
    ],
    ids=["none", "public-replaced", "no-store-kept", "private-kept"],
)
def test_cache_control_private_when_the_cookie_is_set(
    from_view: str | None, expected: dict[str, str | None]
) -> None:
    response = Client().get("/cache-control/", {"cc": from_view} if from_view else {})

    assert session_cookie(response) is not None
    assert cache_control(response) == expected


def test_cache_control_private_when_the_cookie_is_deleted() -> None:
    client = Client()
    _new_session(client)

    response = client.get("/flush/")

    assert_cookie_expired(response)
    assert cache_control(response) == {"private": None}
    assert varies_on_cookie(response)


# --- no cookie for a key that was not stored ---------------------------------------------


def test_a_500_from_the_view_saves_nothing_and_sets_no_cookie(db_alias: str) -> None:
    fresh = Client().get("/set-then-500/")

    assert fresh.status_code == 500
    assert session_cookie(fresh) is None
    assert row_count(db_alias) == 0

    client = Client()
    key = _new_session(client, "kept")
    before = session_row(key, db_alias)

    response = client.get("/set-then-500/")

    assert response.status_code == 500
    assert session_cookie(response) is None
    after = session_row(key, db_alias)
    assert after is not None and before is not None
    assert after.version == before.version
    assert SessionStore(key).load() == {"n": "kept"}


def test_a_crashing_view_saves_nothing_and_sets_no_cookie(db_alias: str) -> None:
    response = Client(raise_request_exception=False).get("/set-then-raise/")

    assert response.status_code == 500
    assert session_cookie(response) is None
    assert row_count(db_alias) == 0


@override_settings(HARDENED_SESSIONS={"MAX_BYTES": 1024})
def test_a_failed_save_sets_no_cookie(db_alias: str) -> None:
    response = Client().get("/set/", {"size": 2000})

    assert response.status_code == 400
    assert session_cookie(response) is None
    assert row_count(db_alias) == 0


# --- logout ------------------------------------------------------------------------------


def test_logout_deletes_the_cookie(db_alias: str, alice: object) -> None:
    client = Client()
    login = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert login.status_code == 302
    logged_in = session_cookie(login)
    assert logged_in is not None
    key = logged_in.value
    assert session_row(key, db_alias) is not None

    response = client.post("/logout/")

    assert response.status_code == 302
    expired = assert_cookie_expired(response)
    assert expired["path"] == "/"
    assert expired["samesite"] == "Lax"
    assert "private" in cache_control(response)
    assert session_row(key, db_alias) is None
    replay = Client()
    replay.cookies[COOKIE] = key
    assert json.loads(replay.get("/whoami/").content)["authenticated"] is False
