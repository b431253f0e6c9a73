"""Per-user sessions: list them, end them, and end them when the password changes.

docs/operations.rst: ``hardened_sessions.user_sessions(user)`` returns the user's live
sessions; ``hardened_sessions.revoke_user_sessions(user, *, keep=None)`` ends every
other one and says how many; on the cache engine they work where a per-user index can
be kept consistent (Redis, and LocMemCache) and raise ``NotImplementedError`` saying
why elsewhere (memcached; the cache-engine tests run on each ``session_cache``
variant of ``tests.support.servers``). Settings (``conf.DEFAULTS``): ``REVOKE_ON_PASSWORD_CHANGE`` (on by
default) ends a user's other sessions server-side when the password changes,
``DEVICE_METADATA`` records the client's address and user agent,
``MAX_SESSIONS_PER_USER`` ends the oldest sessions beyond the cap at login.

Logins and password changes go through Django's own views (``django.contrib.auth.urls``
in ``tests.support.urls_admin``) and the session middleware, on every database alias.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.test import Client, override_settings
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import session_revoked
from hardened_sessions.stores import store_for_cache
from tests.support.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

COOKIE = settings.SESSION_COOKIE_NAME
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "another horse, another staple"

LOCMEM = "django.core.cache.backends.locmem.LocMemCache"


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF, STATIC_URL="/static/"):
        yield


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def revocations() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    session_revoked.connect(receiver, weak=False, dispatch_uid="tests.test_per_user_sessions")
    try:
        yield received
    finally:
        session_revoked.disconnect(dispatch_uid="tests.test_per_user_sessions")


@pytest.fixture(params=["db", "cached_db"])
def engine(request: pytest.FixtureRequest, db_alias: str) -> Iterator[str]:
    """The model-backed engines; cached_db over its own LocMemCache."""
    name: str = request.param
    if name == "db":
        yield "hardened_sessions.backends.db"
        return
    caches = {
        "default": settings.CACHES["default"],
        "sessions": {"BACKEND": LOCMEM, "LOCATION": f"per-user-{db_alias}"},
    }
    with override_settings(
        CACHES=caches,
        SESSION_CACHE_ALIAS="sessions",
        SESSION_ENGINE="hardened_sessions.backends.cached_db",
    ):
        yield settings.SESSION_ENGINE


# --- helpers ---------------------------------------------------------------------------


def _store(key: str | None = None) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def _session(user: Any = None, **data: Any) -> str:
    session = _store()
    if user is not None:
        session["_auth_user_id"] = str(user.pk)
    session.update(data)
    session.save()
    key: str = session.session_key
    assert key is not None
    return key


def _rows(alias: str, user: Any) -> Any:
    return HardenedSession.objects.using(alias).filter(user_id=str(user.pk))


def _set_columns(alias: str, key: str, **columns: Any) -> None:
    updated = HardenedSession.objects.using(alias).filter(pk=keys.store_key(key)).update(**columns)
    assert updated == 1


def _login(client: Client, username: str = "alice", password: str = PASSWORD) -> str:
    """Log in through Django's LoginView; the new session key."""
    response = client.post("/accounts/login/", {"username": username, "password": password})
    assert response.status_code == 302, response.status_code
    return client.cookies[COOKIE].value


def _whoami(client: Client) -> str | None:
    username: str | None = json.loads(client.get("/whoami/").content)["username"]
    return username


def _stranger(key: str) -> Client:
    client = Client()
    client.cookies[COOKIE] = key
    return client


# --- user_sessions -------------------------------------------------------------------


def test_user_sessions_lists_live_sessions_newest_activity_first(
    db_alias: str, alice: Any, bob: Any
) -> None:
    now = timezone.now()
    oldest, newest, middle = _session(alice, n=1), _session(alice, n=2), _session(alice, n=3)
    _set_columns(db_alias, oldest, last_activity=now - timedelta(minutes=30))
    _set_columns(db_alias, middle, last_activity=now - timedelta(minutes=20))
    _set_columns(db_alias, newest, last_activity=now - timedelta(minutes=10))
    expired = _session(alice, n=4)
    _set_columns(db_alias, expired, expire_date=now - timedelta(seconds=1))
    _session(bob)
    _session(theme="dark")

    expected = [keys.store_key(k) for k in (newest, middle, oldest)]
    for who in (alice, alice.pk, str(alice.pk)):
        listed = hardened_sessions.user_sessions(who)
        assert [row.pk for row in listed] == expected
        assert all(isinstance(row, HardenedSession) for row in listed)
        assert all(row.user_id == str(alice.pk) for row in listed)
    assert len(hardened_sessions.user_sessions(bob)) == 1


def test_user_sessions_of_a_user_without_sessions_is_empty(db_alias: str, alice: Any) -> None:
    _session(theme="dark")

    assert hardened_sessions.user_sessions(alice) == []


# --- revoke_user_sessions ------------------------------------------------------------


def test_revoke_user_sessions_keeps_one_and_ends_the_others(
    engine: str, db_alias: str, alice: Any, bob: Any, revocations: list[Any]
) -> None:
    kept = _session(alice, device="laptop")
    others = [_session(alice, device="phone"), _session(alice, device="tablet")]
    bobs = _session(bob, device="desk")
    anonymous = _session(theme="dark")
    for key in others:
        assert _store(key).load()["_auth_user_id"] == str(alice.pk)  # fills cached_db's cache

    ended = hardened_sessions.revoke_user_sessions(alice, keep=kept)

    assert ended == 2
    assert _store(kept).load() == {"_auth_user_id": str(alice.pk), "device": "laptop"}
    for key in others:
        assert _store(key).load() == {}
        assert not HardenedSession.objects.using(db_alias).filter(pk=keys.store_key(key)).exists()
    if engine.endswith("cached_db"):
        cache = store_for_cache("sessions")
        assert all(cache.get(keys.store_key(key)) is None for key in others)
    assert [row.pk for row in _rows(db_alias, alice)] == [keys.store_key(kept)]
    assert _store(bobs).load() == {"_auth_user_id": str(bob.pk), "device": "desk"}
    assert _store(anonymous).load() == {"theme": "dark"}
    assert sorted(s["key_hash_prefix"] for s in revocations) == sorted(
        keys.store_key(k)[:16] for k in others
    )
    assert {s["user_id"] for s in revocations} == {str(alice.pk)}


def test_revoke_user_sessions_by_pk_without_keep_ends_them_all(
    db_alias: str, alice: Any, bob: Any
) -> None:
    mine = [_session(alice) for _ in range(3)]
    bobs = _session(bob)

    assert hardened_sessions.revoke_user_sessions(alice.pk) == 3

    assert all(SessionStore(key).load() == {} for key in mine)
    assert not _rows(db_alias, alice).exists()
    assert SessionStore(bobs).load() == {"_auth_user_id": str(bob.pk)}
    assert hardened_sessions.revoke_user_sessions(alice.pk) == 0


def test_revoke_user_sessions_counts_only_sessions_that_were_live(
    engine: str, db_alias: str, alice: Any, revocations: list[Any]
) -> None:
    """The count (and the signals) say how many sessions ended, as ``user_sessions``
    listed them: an expired row not yet swept goes too, but was not a live session."""
    live = [_session(alice, n=n) for n in range(2)]
    expired = _session(alice, n=9)
    _set_columns(db_alias, expired, expire_date=timezone.now() - timedelta(seconds=1))
    assert len(hardened_sessions.user_sessions(alice)) == 2

    assert hardened_sessions.revoke_user_sessions(alice) == 2

    assert not _rows(db_alias, alice).exists()  # the expired row is gone as well
    assert sorted(s["key_hash_prefix"] for s in revocations) == sorted(
        keys.store_key(k)[:16] for k in live
    )


def test_revoke_user_sessions_keep_of_another_user_protects_nothing(
    db_alias: str, alice: Any, bob: Any
) -> None:
    mine = _session(alice)
    bobs = _session(bob)

    assert hardened_sessions.revoke_user_sessions(alice, keep=bobs) == 1

    assert SessionStore(mine).load() == {}
    assert SessionStore(bobs).load() == {"_auth_user_id": str(bob.pk)}


def _cache_variant(request: pytest.FixtureRequest) -> str:
    variant: str = request.node.callspec.params["session_cache"]
    return variant


def test_cache_engine_lists_and_revokes_where_it_keeps_an_index(
    session_cache: str, request: pytest.FixtureRequest, alice: Any, bob: Any
) -> None:
    """Redis and LocMemCache keep a per-user index; memcached cannot, and says why."""
    variant = _cache_variant(request)
    with override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"):
        mine = [_session(alice, n=n) for n in range(3)]
        bobs = _session(bob, n=9)
        anonymous = _session(theme="dark")

        if variant == "pymemcache":
            with pytest.raises(NotImplementedError) as listing:
                hardened_sessions.user_sessions(alice)
            with pytest.raises(NotImplementedError) as revoking:
                hardened_sessions.revoke_user_sessions(alice, keep=mine[0])
            for raised in (listing, revoking):
                message = str(raised.value)
                assert "per-user index" in message
                assert "memcached" in message
                assert "cached_db" in message
            assert all(_store(key).load()["n"] == n for n, key in enumerate(mine))
            return

        short = _store()
        short["_auth_user_id"] = str(alice.pk)
        short.set_expiry(1)
        short.save()
        listed = hardened_sessions.user_sessions(alice.pk)
        assert {row.key_hash for row in listed} == {keys.store_key(k) for k in mine} | {
            keys.store_key(short.session_key)
        }
        assert all(isinstance(row, HardenedSession) for row in listed)
        assert all(row.user_id == str(alice.pk) for row in listed)
        time.sleep(1.1)  # the short session ends: no longer listed
        listed = hardened_sessions.user_sessions(alice)
        assert {row.key_hash for row in listed} == {keys.store_key(k) for k in mine}

        assert hardened_sessions.revoke_user_sessions(alice, keep=mine[0]) == 2

        assert _store(mine[0]).load() == {"_auth_user_id": str(alice.pk), "n": 0}
        assert all(_store(key).load() == {} for key in mine[1:])
        assert [row.key_hash for row in hardened_sessions.user_sessions(alice)] == [
            keys.store_key(mine[0])
        ]
        assert _store(bobs).load() == {"_auth_user_id": str(bob.pk), "n": 9}
        assert _store(anonymous).load() == {"theme": "dark"}


# --- password changes ----------------------------------------------------------------


def test_password_change_view_ends_the_other_sessions_at_once(
    db_alias: str, alice: Any, bob: Any
) -> None:
    here, phone, tablet = Client(), Client(), Client()
    old_key = _login(here)
    phone_key, tablet_key = _login(phone), _login(tablet)
    bobs = Client()
    _login(bobs, "bob")
    assert _rows(db_alias, alice).count() == 3

    response = here.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )

    assert response.status_code == 302
    assert response["Location"].endswith("/accounts/password_change/done/")
    new_key = here.cookies[COOKIE].value
    assert new_key != old_key
    # Server-side, before the other devices come back: only the current session is left.
    assert [row.pk for row in _rows(db_alias, alice)] == [keys.store_key(new_key)]
    assert SessionStore(phone_key).load() == {}
    assert SessionStore(tablet_key).load() == {}
    assert SessionStore(old_key).load() == {}
    assert _whoami(here) == "alice"
    assert _whoami(phone) is None
    assert _whoami(tablet) is None
    assert _whoami(bobs) == "bob"


def test_password_change_on_the_cache_engine(
    session_cache: str, request: pytest.FixtureRequest, alice: Any
) -> None:
    """Where the cache keeps a per-user index the other sessions end at once; on
    memcached they end lazily (Django's session hash), and the change still works."""
    variant = _cache_variant(request)
    with override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"):
        here, phone = Client(), Client()
        old_key = _login(here)
        phone_key = _login(phone)

        response = here.post(
            "/accounts/password_change/",
            {
                "old_password": PASSWORD,
                "new_password1": NEW_PASSWORD,
                "new_password2": NEW_PASSWORD,
            },
        )

        assert response.status_code == 302
        assert here.cookies[COOKIE].value != old_key
        if variant == "pymemcache":
            assert _store(phone_key).load()["_auth_user_id"] == str(alice.pk)
        else:
            assert _store(phone_key).load() == {}
        assert _store(old_key).load() == {}
        assert _whoami(here) == "alice"
        assert _whoami(phone) is None


def test_password_reset_ends_every_session(db_alias: str, alice: Any) -> None:
    phone, laptop = Client(), Client()
    _login(phone)
    _login(laptop)
    alice.refresh_from_db()  # the reset token covers last_login
    uid = urlsafe_base64_encode(force_bytes(alice.pk))
    token = default_token_generator.make_token(alice)
    browser = Client()

    first = browser.get(f"/accounts/reset/{uid}/{token}/")
    assert first.status_code == 302
    done = browser.post(
        first["Location"], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )

    assert done.status_code == 302
    assert done["Location"].endswith("/accounts/reset/done/")
    assert not _rows(db_alias, alice).exists()
    assert _whoami(phone) is None
    assert _whoami(laptop) is None


def test_set_password_outside_a_request_ends_every_session(
    db_alias: str, alice: Any, bob: Any
) -> None:
    # The last of these logins ran through the middleware just before: its session is
    # no longer "the current request's" once the response is out.
    clients = [Client() for _ in range(3)]
    for client in clients:
        _login(client)
    bobs = _session(bob)

    user = get_user_model().objects.get(pk=alice.pk)
    user.set_password(NEW_PASSWORD)
    user.save()

    assert not _rows(db_alias, alice).exists()
    assert all(_whoami(client) is None for client in clients)
    assert SessionStore(bobs).load() == {"_auth_user_id": str(bob.pk)}


def test_saving_a_user_without_a_new_password_ends_nothing(db_alias: str, alice: Any) -> None:
    clients = [Client() for _ in range(2)]
    for client in clients:
        _login(client)

    user = get_user_model().objects.get(pk=alice.pk)
    user.email = "alice@example.org"
    user.save()

    assert _rows(db_alias, alice).count() == 2
    assert all(_whoami(client) == "alice" for client in clients)


def test_revoke_on_password_change_off_leaves_the_sessions(db_alias: str, alice: Any) -> None:
    with override_settings(HARDENED_SESSIONS={"REVOKE_ON_PASSWORD_CHANGE": False}):
        here, phone = Client(), Client()
        _login(here)
        phone_key = _login(phone)

        response = here.post(
            "/accounts/password_change/",
            {
                "old_password": PASSWORD,
                "new_password1": NEW_PASSWORD,
                "new_password2": NEW_PASSWORD,
            },
        )

        assert response.status_code == 302
        assert response["Location"].endswith("/accounts/password_change/done/")
        assert _rows(db_alias, alice).count() == 2
        assert HardenedSession.objects.using(db_alias).filter(pk=keys.store_key(phone_key)).exists()

        user = get_user_model().objects.get(pk=alice.pk)
        user.set_password(PASSWORD)
        user.save()

        assert _rows(db_alias, alice).count() == 2


# --- device metadata -----------------------------------------------------------------


def test_device_metadata_fills_ip_and_user_agent(db_alias: str, alice: Any) -> None:
    agent = "ExampleBrowser/2.0 (tests; like Gecko)"
    # True keeps networks (test_device_metadata_privacy); here the whole address.
    full = {"DEVICE_METADATA": {"IP": "full", "USER_AGENT": "raw"}}
    with override_settings(HARDENED_SESSIONS=full):
        v4 = Client(REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT=agent)
        v4_key = _login(v4)
        v6 = Client(REMOTE_ADDR="2001:db8::7", HTTP_USER_AGENT="x" * 500)
        v6_key = _login(v6)

    row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(v4_key))
    assert (row.ip_address, row.user_agent) == ("203.0.113.9", agent)
    row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(v6_key))
    assert (row.ip_address, row.user_agent) == ("2001:db8::7", "x" * 300)


@pytest.mark.parametrize("remote_addr", ["203.0.113.9:4321", "unix:/run/app.sock"])
def test_device_metadata_ignores_a_remote_addr_that_is_not_an_ip(
    db_alias: str, alice: Any, remote_addr: str
) -> None:
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True}):
        client = Client(REMOTE_ADDR=remote_addr, HTTP_USER_AGENT="ExampleBrowser/2.0")
        key = _login(client)

        assert _whoami(client) == "alice"

    row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key))
    assert row.ip_address is None
    assert row.user_agent == "ExampleBrowser/2.0"


def test_device_metadata_is_off_by_default(db_alias: str, alice: Any) -> None:
    client = Client(REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="ExampleBrowser/2.0")
    key = _login(client)
    client.get("/whoami/")

    row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key))
    assert row.ip_address is None
    assert row.user_agent == ""
    assert "ExampleBrowser" not in bytes(row.data).decode()
    assert not re.search(r"203\.0\.113\.9", bytes(row.data).decode())


# --- MAX_SESSIONS_PER_USER -----------------------------------------------------------


def test_max_sessions_per_user_ends_the_oldest_at_the_next_login(
    db_alias: str, alice: Any, bob: Any, revocations: list[Any]
) -> None:
    now = timezone.now()
    with override_settings(HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 2}):
        first, second, third = Client(), Client(), Client()
        first_key = _login(first)
        second_key = _login(second)
        # Created an hour apart; the oldest by creation is the most recently active one,
        # so "oldest" can only mean "by created".
        _set_columns(
            db_alias,
            first_key,
            created=now - timedelta(hours=2),
            last_activity=now - timedelta(minutes=1),
        )
        _set_columns(
            db_alias,
            second_key,
            created=now - timedelta(hours=1),
            last_activity=now - timedelta(minutes=50),
        )
        bobs = Client()
        _login(bobs, "bob")
        revocations.clear()

        third_key = _login(third)

        assert sorted(row.pk for row in _rows(db_alias, alice)) == sorted(
            keys.store_key(k) for k in (second_key, third_key)
        )
        assert SessionStore(first_key).load() == {}
        assert [(s["key_hash_prefix"], s["user_id"]) for s in revocations] == [
            (keys.store_key(first_key)[:16], str(alice.pk))
        ]
        assert _whoami(first) is None
        assert _whoami(second) == "alice"
        assert _whoami(third) == "alice"
        assert _whoami(bobs) == "bob"


def test_max_sessions_per_user_counts_live_sessions_only(db_alias: str, alice: Any) -> None:
    now = timezone.now()
    with override_settings(HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 2}):
        laptop, stale, phone = Client(), Client(), Client()
        laptop_key = _login(laptop)
        _set_columns(db_alias, laptop_key, created=now - timedelta(hours=2))
        stale_key = _login(stale)
        _set_columns(
            db_alias,
            stale_key,
            created=now - timedelta(hours=1),
            expire_date=now - timedelta(seconds=5),
        )
        assert [row.pk for row in hardened_sessions.user_sessions(alice)] == [
            keys.store_key(laptop_key)
        ]

        _login(phone)

        # One live session plus the new one: within the cap of two.
        assert _whoami(laptop) == "alice"
        assert _whoami(phone) == "alice"
