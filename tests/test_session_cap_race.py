"""``MAX_SESSIONS_PER_USER`` holds under concurrent logins of one user.

docs/settings.rst: with a cap of N, a login ends the user's oldest sessions beyond N
(``MAX_SESSIONS_POLICY = "end_oldest"``, the default) or is refused while N are live
(``"refuse"``). Enforcing it is a read of the user's sessions followed by deletes, so
two logins racing through it unserialised can each end the other (with N = 1, both
end, and the user is logged out everywhere while each login answered success).

Here N + 8 logins of one user race, each on its own thread (and its own database
connection), released together by a barrier right before the save that gives the
session its user. Half of them log in the way ``django.contrib.auth.login`` does (an
anonymous session stored first, then saved with the user: the engine's update path),
the other half store the session with its user at once (the create path). Then:

* ``end_oldest``: every login succeeded; at most N and at least min(N, logins) of them
  are live; every login that is not live was ended by another login
  (``session_revoked`` with ``Reason.CAP``), and the "ended by" relation has no cycle
  (a login can only end sessions stored before it: in a serial order, the later one);
* ``refuse``: exactly min(N, logins) logins succeed and all of them are live; the
  others raised ``SessionLimitReached``, left no record behind and sent
  ``session_rejected`` with ``Reason.SESSION_LIMIT``.

On the db engine (SQLite on a file, PostgreSQL, MariaDB), cached_db (django-redis over
SQLite), and the cache engine on django-redis, Django's ``RedisCache`` and
``LocMemCache``. Through the middleware, a refused login answers 409 and sets no
session cookie.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client, override_settings

from hardened_sessions import keys
from hardened_sessions.backends.base import hash_prefix
from hardened_sessions.backends.cache import SessionStore as CacheStore
from hardened_sessions.backends.cached_db import SessionStore as CachedDBStore
from hardened_sessions.backends.db import SessionStore as DBStore
from hardened_sessions.exceptions import SessionLimitReached
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import Reason, session_rejected, session_revoked
from tests.support.servers import variant_cache
from tests.support.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

THREAD_TIMEOUT = 120.0
EXTRA_LOGINS = 8
USER = "4242"
CAPS = [1, 3]
POLICIES = ["end_oldest", "refuse"]
CACHE_VARIANTS = ["django-redis", "django-rediscache", "locmem"]


@dataclass
class Race:
    """What the racing logins did, and what the signals said."""

    keys: dict[int, str | None] = field(default_factory=dict)  # login -> its session key
    succeeded: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)
    # (login that ended it, store key prefix of the session ended)
    ended_by_cap: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def capture() -> Iterator[tuple[dict[int, int], Race]]:
    """Signal receivers recording which login (by thread) sent what."""
    logins: dict[int, int] = {}  # thread ident -> login number
    race = Race()
    lock = threading.Lock()

    def revoked(sender: Any, **kwargs: Any) -> None:
        if kwargs.get("reason") == Reason.CAP:
            with lock:
                race.ended_by_cap.append(
                    (logins.get(threading.get_ident(), -1), kwargs["key_hash_prefix"])
                )

    def rejected(sender: Any, **kwargs: Any) -> None:
        with lock:
            race.rejected.append((logins.get(threading.get_ident(), -1), kwargs))

    session_revoked.connect(revoked, weak=False)
    session_rejected.connect(rejected, weak=False)
    try:
        yield logins, race
    finally:
        session_revoked.disconnect(revoked)
        session_rejected.disconnect(rejected)


def race_logins(store_cls: type[Any], n_logins: int, logins: dict[int, int], race: Race) -> Race:
    """``n_logins`` logins of USER at once; each thread is one login."""
    barrier = threading.Barrier(n_logins, timeout=THREAD_TIMEOUT)
    lock = threading.Lock()

    def login(i: int) -> None:
        logins[threading.get_ident()] = i
        try:
            session = store_cls()
            if i % 2:
                # As django.contrib.auth.login: the (rotated) anonymous session is stored
                # first, and the user lands in it at the response's save.
                session["visit"] = i
                session.save()
            barrier.wait()
            session["_auth_user_id"] = USER
            session["login"] = i
            try:
                session.save()
            except SessionLimitReached:
                with lock:
                    race.refused.add(i)
            else:
                with lock:
                    race.succeeded.add(i)
            with lock:
                race.keys[i] = session.session_key
        except BaseException as exc:  # reported by the test
            with lock:
                race.errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=login, args=(i,), daemon=True) for i in range(n_logins)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a login hung"
    return race


def prefix_of(key: str | None) -> str:
    assert key is not None
    return hash_prefix(keys.store_key(key))


def check_outcome(
    store_cls: type[Any],
    cap: int,
    policy: str,
    n_logins: int,
    race: Race,
    *,
    stored: Callable[[str], bool] | None = None,
) -> list[int]:
    """The assertions of the module docstring; the live logins."""
    assert race.errors == [], race.errors
    live = [i for i in sorted(race.succeeded) if store_cls().exists(race.keys[i])]
    assert len(live) <= cap, (live, race)
    assert len(live) >= min(cap, n_logins), (live, race)
    if policy == "end_oldest":
        assert race.succeeded == set(range(n_logins))
        assert race.refused == set()
        by_prefix = {prefix_of(race.keys[i]): i for i in race.succeeded}
        ended_by: dict[int, int] = {}
        for ender, ended_prefix in race.ended_by_cap:
            ended = by_prefix[ended_prefix]
            assert ender in race.succeeded and ender != ended, (ender, ended)
            assert ended not in ended_by, f"login {ended} ended twice"
            ended_by[ended] = ender
        # Every successful login is live, or was ended by another login ...
        assert set(live) | set(ended_by) == race.succeeded, (live, ended_by)
        assert not set(live) & set(ended_by)
        # ... that came after it: following "ended by" never comes back to a login.
        for start in ended_by:
            seen = {start}
            at = start
            while at in ended_by:
                at = ended_by[at]
                assert at not in seen, f"logins ended each other: {ended_by}"
                seen.add(at)
        assert race.rejected == []
    else:
        assert len(race.succeeded) == min(cap, n_logins), race
        assert live == sorted(race.succeeded)
        assert race.refused == set(range(n_logins)) - race.succeeded
        assert race.ended_by_cap == []
        refusals = [(i, kw) for i, kw in race.rejected if kw["reason"] == Reason.SESSION_LIMIT]
        assert sorted(i for i, _ in refusals) == sorted(race.refused)
        for i in race.refused:
            key = race.keys[i]
            if key is not None:
                # The refused login's record (the anonymous one it saved first) is gone.
                assert not store_cls().exists(key)
                if stored is not None:
                    assert not stored(keys.store_key(key))
    return live


def cap_settings(cap: int, policy: str) -> dict[str, Any]:
    return {"MAX_SESSIONS_PER_USER": cap, "MAX_SESSIONS_POLICY": policy}


# --------------------------------------------------------------------------- db


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cap", CAPS)
def test_racing_logins_keep_the_cap_on_each_database(
    db_alias: str, cap: int, policy: str, capture: tuple[dict[int, int], Race]
) -> None:
    logins, race = capture
    n_logins = cap + EXTRA_LOGINS
    with override_settings(
        SESSION_ENGINE="hardened_sessions.backends.db",
        HARDENED_SESSIONS=cap_settings(cap, policy),
    ):
        race_logins(DBStore, n_logins, logins, race)

        def stored(store_key: str) -> bool:
            return HardenedSession.objects.using(db_alias).filter(pk=store_key).exists()

        live = check_outcome(DBStore, cap, policy, n_logins, race, stored=stored)
        rows = HardenedSession.objects.using(db_alias).filter(user_id=USER)
        assert sorted(rows.values_list("pk", flat=True)) == sorted(
            keys.store_key(str(race.keys[i])) for i in live
        )


# --------------------------------------------------------------------------- cached_db


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cap", CAPS)
def test_racing_logins_keep_the_cap_on_cached_db(
    request: pytest.FixtureRequest, cap: int, policy: str, capture: tuple[dict[int, int], Race]
) -> None:
    logins, race = capture
    n_logins = cap + EXTRA_LOGINS
    with (
        variant_cache("django-redis", request),
        override_settings(
            SESSION_ENGINE="hardened_sessions.backends.cached_db",
            HARDENED_SESSIONS=cap_settings(cap, policy),
        ),
    ):
        # Each save puts the record's copy in the cache (write-through), so a session
        # ended without its copy would still load from there.
        race_logins(CachedDBStore, n_logins, logins, race)
        live = check_outcome(CachedDBStore, cap, policy, n_logins, race)
        for i in race.succeeded - set(live):
            loaded = CachedDBStore(race.keys[i])
            assert loaded.load() == {}
        for i in live:
            assert CachedDBStore(race.keys[i]).load()["login"] == i


def test_an_ended_session_does_not_keep_loading_from_the_cache(
    request: pytest.FixtureRequest,
) -> None:
    with (
        variant_cache("django-redis", request),
        override_settings(
            SESSION_ENGINE="hardened_sessions.backends.cached_db",
            HARDENED_SESSIONS=cap_settings(1, "end_oldest"),
        ),
    ):
        first = CachedDBStore()
        first["_auth_user_id"] = USER
        first.save()
        # A load that fills the cache with the first session's copy.
        assert CachedDBStore(first.session_key).load()["_auth_user_id"] == USER
        assert CachedDBStore(first.session_key).load()["_auth_user_id"] == USER
        second = CachedDBStore()
        second["_auth_user_id"] = USER
        second.save()
        assert CachedDBStore(first.session_key).load() == {}
        assert not HardenedSession.objects.filter(pk=keys.store_key(first.session_key)).exists()


# --------------------------------------------------------------------------- cache


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("variant", CACHE_VARIANTS)
def test_racing_logins_keep_the_cap_on_the_cache_engine(
    request: pytest.FixtureRequest,
    variant: str,
    cap: int,
    policy: str,
    capture: tuple[dict[int, int], Race],
) -> None:
    logins, race = capture
    n_logins = cap + EXTRA_LOGINS
    with (
        variant_cache(variant, request),
        override_settings(
            SESSION_ENGINE="hardened_sessions.backends.cache",
            HARDENED_SESSIONS=cap_settings(cap, policy),
        ),
    ):
        race_logins(CacheStore, n_logins, logins, race)
        live = check_outcome(CacheStore, cap, policy, n_logins, race)
        import hardened_sessions

        listed = sorted(s.pk for s in hardened_sessions.user_sessions(USER))
        assert listed == sorted(keys.store_key(str(race.keys[i])) for i in live)


# --------------------------------------------------------------------------- middleware


PASSWORD = "correct horse battery staple"


@pytest.mark.parametrize("engine", ["db", "cache"])
def test_a_refused_login_answers_409_without_a_session_cookie(
    request: pytest.FixtureRequest, engine: str
) -> None:
    user = get_user_model().objects.create_user("carol", password=PASSWORD)
    with (
        variant_cache("django-redis", request),
        override_settings(
            ROOT_URLCONF=URLCONF,
            STATIC_URL="/static/",
            SESSION_ENGINE=f"hardened_sessions.backends.{engine}",
            HARDENED_SESSIONS=cap_settings(1, "refuse"),
        ),
    ):
        first = Client()
        response = first.post("/accounts/login/", {"username": "carol", "password": PASSWORD})
        assert response.status_code == 302
        second = Client()
        second.get("/whoami/")
        response = second.post("/accounts/login/", {"username": "carol", "password": PASSWORD})
        assert response.status_code == 409
        assert "sessions" in response.content.decode().lower()
        cookie = response.cookies.get(settings.SESSION_COOKIE_NAME)
        assert cookie is None or cookie.value == ""
        assert response["Cache-Control"] and "no-store" in response["Cache-Control"]
        import hardened_sessions

        # Only the first login's session: the refused one left nothing behind.
        assert [s.pk for s in hardened_sessions.user_sessions(user)] == [
            keys.store_key(first.cookies[settings.SESSION_COOKIE_NAME].value)
        ]


# --------------------------------------------------------------------------- lock bound


@pytest.mark.parametrize("alias", ["postgresql", "mysql"])
def test_a_login_lock_held_past_its_bound_fails_closed(
    alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another login of the user holding the per-user lock longer than the bound: this
    login is a store failure (503), never a login that skipped the cap."""
    from django.db import transaction

    from hardened_sessions.backends import db_locks
    from hardened_sessions.cap import mysql_user_lock_name, user_lock_id
    from hardened_sessions.exceptions import SessionStoreUnavailable
    from tests.conftest import require_server
    from tests.support.routers import SessionsAliasRouter

    if alias not in settings.DATABASES:
        require_server(alias, f"database alias {alias!r} is not configured")
    monkeypatch.setattr(db_locks, "_USER_LOCK_TIMEOUT", 1)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with connections[alias].cursor() as cursor:
                if alias == "postgresql":
                    with transaction.atomic(using=alias):
                        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [user_lock_id(USER)])
                        held.set()
                        release.wait(THREAD_TIMEOUT)
                else:
                    database = str(connections[alias].settings_dict["NAME"])
                    name = mysql_user_lock_name(database, USER)
                    cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
                    held.set()
                    release.wait(THREAD_TIMEOUT)
                    cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
        finally:
            held.set()
            connections.close_all()

    thread = threading.Thread(target=holder, daemon=True)
    with override_settings(
        DATABASE_ROUTERS=[SessionsAliasRouter(alias)],
        HARDENED_SESSIONS=cap_settings(1, "end_oldest"),
    ):
        first = DBStore()
        first["_auth_user_id"] = USER
        first.save()
        thread.start()
        try:
            assert held.wait(THREAD_TIMEOUT)
            login = DBStore()
            login["_auth_user_id"] = USER
            with pytest.raises(SessionStoreUnavailable):
                login.save()
            # Nothing of the failed login was stored, and the first session lives on.
            assert login.session_key is None
            assert DBStore().exists(first.session_key)
            assert HardenedSession.objects.using(alias).filter(user_id=USER).count() == 1
        finally:
            release.set()
            thread.join(THREAD_TIMEOUT)
        # Once the lock is free, the same login goes through and ends the first one.
        login = DBStore()
        login["_auth_user_id"] = USER
        login.save()
        assert not DBStore().exists(first.session_key)
        assert DBStore().exists(login.session_key)


# --------------------------------------------------------------------------- setting, check


def test_the_policy_setting_is_validated() -> None:
    from hardened_sessions.conf import validate

    assert validate({"MAX_SESSIONS_POLICY": "refuse"}) == []
    assert validate({"MAX_SESSIONS_POLICY": "end_oldest"}) == []
    (problem,) = validate({"MAX_SESSIONS_POLICY": "oldest"})
    assert "'end_oldest', 'refuse'" in problem and "'oldest'" in problem


def _w402() -> list[Any]:
    from django.core.checks import run_checks

    return [m for m in run_checks(tags=["sessions"]) if m.id == "hardened_sessions.W402"]


@pytest.mark.parametrize(
    ("variant", "key_function", "warned"),
    [
        ("pymemcache", None, True),
        ("django-redis", "tests.test_session_cap_race.hashing_key", True),
        ("django-redis", None, False),
        ("locmem", None, False),
    ],
)
def test_w402_says_where_the_cap_is_not_enforced(
    request: pytest.FixtureRequest, variant: str, key_function: str | None, warned: bool
) -> None:
    from tests.support.servers import cache_settings, servers_for, sessions_cache

    config = cache_settings(variant, **servers_for(variant, request))
    if key_function:
        config["KEY_FUNCTION"] = key_function
    with (
        sessions_cache(config),
        override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"),
    ):
        with override_settings(HARDENED_SESSIONS={}):
            assert _w402() == []
        with override_settings(HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 2}):
            found = _w402()
            assert bool(found) is warned
            if warned:
                assert "not enforced" in found[0].msg
    with override_settings(
        SESSION_ENGINE="hardened_sessions.backends.db",
        HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 2},
    ):
        assert _w402() == []


def hashing_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION that hashes keys (the store cannot name a member's record)."""
    import hashlib

    return hashlib.sha256(f"{key_prefix}:{version}:{key}".encode()).hexdigest()
