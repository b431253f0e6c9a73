"""Sessions follow the account (OWASP ASVS 5.0 7.4.2).

Deactivating a user (a ``save()`` that turns ``is_active`` from True to False) or
deleting one ends every session of that user server-side, once the transaction
commits, on every engine that can list a user's sessions (db and cached_db on SQLite
and PostgreSQL, the cache engine on LocMemCache and Redis): the records are gone from
the store, not merely refused by Django's authentication. Where the engine cannot list
them (memcached), ``check`` says so (``hardened_sessions.W401``) and Django's per-request
``is_active`` check is what remains. Bulk updates send no signal:
``hardened_sessions.end_sessions_of_inactive_users()`` and ``manage.py
endinactivesessions`` end those. The User admin offers "End all sessions" as an action
and as a button on the change page (``hardened_sessions.admin.EndSessionsAdminMixin``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model, logout
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext, isolate_apps
from django.urls import path

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.capabilities import Capability
from hardened_sessions.conf import validate
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import session_revoked
from hardened_sessions.stores import store_for_cache
from tests.conftest import configured_databases, require_server
from tests.support import urls_admin
from tests.support.routers import SessionsAliasRouter
from tests.support.servers import sessions_cache, variant_cache

DATABASES = configured_databases("default", "postgresql")
pytestmark = pytest.mark.django_db(transaction=True, databases=DATABASES)

COOKIE = settings.SESSION_COOKIE_NAME
PASSWORD = "correct horse battery staple"
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
USERS = "/admin/auth/user/"


def _delete_me(request: HttpRequest) -> HttpResponse:
    """A self-service "delete my account" view, as a project would write it."""
    request.user.delete()
    logout(request)
    return HttpResponse("deleted")


def _deactivate_me(request: HttpRequest) -> HttpResponse:
    """A self-service "deactivate my account" view that does not log out."""
    user = request.user
    user.is_active = False
    user.save()
    return HttpResponse("deactivated")


urlpatterns: list[Any] = [
    path("delete-me/", _delete_me),
    path("deactivate-me/", _deactivate_me),
    *urls_admin.urlpatterns,
]


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__, STATIC_URL="/static/"):
        yield


@dataclass
class Store:
    """The configured engine, and where its records can be looked at directly."""

    name: str
    alias: str | None  # the database holding the rows (db, cached_db)
    cache: str | None  # the cache alias holding the records (cache, cached_db)

    def holds(self, key: str) -> bool:
        """Whether any part of the store still holds the record of session ``key``."""
        key_hash = keys.store_key(key)
        in_db = (
            self.alias is not None
            and HardenedSession.objects.using(self.alias).filter(pk=key_hash).exists()
        )
        in_cache = self.cache is not None and store_for_cache(self.cache).get(key_hash) is not None
        return in_db or in_cache


def _database(alias: str) -> Iterator[None]:
    if alias not in settings.DATABASES:
        require_server(alias, f"database alias {alias!r} needs HS_TEST_POSTGRES_URL")
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        yield


STORES = ["db-sqlite", "db-postgresql", "cached_db-sqlite", "cache-locmem", "cache-redis"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Every engine that can list a user's sessions."""
    name: str = request.param
    if name.startswith("db-"):
        alias = "default" if name == "db-sqlite" else "postgresql"
        for _ in _database(alias):
            yield Store(name, alias, None)
        return
    if name == "cached_db-sqlite":
        caches = {
            "default": settings.CACHES["default"],
            "sessions": {"BACKEND": LOCMEM, "LOCATION": "account-lifecycle"},
        }
        with override_settings(
            CACHES=caches,
            SESSION_CACHE_ALIAS="sessions",
            SESSION_ENGINE="hardened_sessions.backends.cached_db",
        ):
            yield Store(name, "default", "sessions")
        return
    variant = {"cache-locmem": "locmem", "cache-redis": "django-redis"}[name]
    with (
        variant_cache(variant, request) as alias,
        override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"),
    ):
        yield Store(name, None, alias)


@pytest.fixture
def memcached(request: pytest.FixtureRequest) -> Iterator[str]:
    """The cache engine on memcached, which keeps no per-user index."""
    with (
        variant_cache("pymemcache", request) as alias,
        override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"),
    ):
        yield alias


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
        received.append(kwargs)

    session_revoked.connect(receiver, weak=False, dispatch_uid="tests.test_account_lifecycle")
    try:
        yield received
    finally:
        session_revoked.disconnect(dispatch_uid="tests.test_account_lifecycle")


# --- helpers ---------------------------------------------------------------------------


def _login(client: Client, username: str = "alice") -> str:
    """Log in through Django's LoginView; the new session key."""
    response = client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    return client.cookies[COOKIE].value


def _whoami(client: Client) -> str | None:
    username: str | None = json.loads(client.get("/whoami/").content)["username"]
    return username


def _logged_in(count: int, username: str = "alice") -> list[tuple[Client, str]]:
    clients = []
    for _ in range(count):
        client = Client()
        clients.append((client, _login(client, username)))
    return clients


def _why(revocation: dict[str, Any]) -> str:
    """The human text of a ``session_revoked`` signal's reason: its ``description``
    where the signal carries one (the reason is then a ``Reason`` member), else the
    ``reason`` itself."""
    text: str = revocation.get("description") or revocation["reason"]
    return text


def _reload(user: Any) -> Any:
    return get_user_model().objects.get(pk=user.pk)


# --- deactivation and deletion ------------------------------------------------------------


def test_deactivation_ends_every_session_at_once(
    store: Store, alice: Any, bob: Any, revocations: list[dict[str, Any]]
) -> None:
    mine = _logged_in(2)
    ((bobs, bobs_key),) = _logged_in(1, "bob")
    assert all(store.holds(key) for _, key in mine)
    revocations.clear()

    user = _reload(alice)
    user.is_active = False
    user.save()

    # Gone from the store, before any of those clients comes back.
    assert not any(store.holds(key) for _, key in mine)
    assert sorted(r["key_hash_prefix"] for r in revocations) == sorted(
        keys.store_key(key)[:16] for _, key in mine
    )
    assert {(r["user_id"], _why(r)) for r in revocations} == {(str(alice.pk), "account disabled")}
    assert all(_whoami(client) is None for client, _ in mine)
    assert store.holds(bobs_key)
    assert _whoami(bobs) == "bob"


def test_deletion_ends_every_session(
    store: Store, alice: Any, bob: Any, revocations: list[dict[str, Any]]
) -> None:
    mine = _logged_in(2)
    ((bobs, bobs_key),) = _logged_in(1, "bob")
    revocations.clear()

    _reload(alice).delete()

    assert not any(store.holds(key) for _, key in mine)
    assert len(revocations) == 2
    assert {(r["user_id"], _why(r)) for r in revocations} == {(str(alice.pk), "account deleted")}
    assert store.holds(bobs_key)
    assert _whoami(bobs) == "bob"


def test_queryset_delete_ends_every_session(store: Store, alice: Any, bob: Any) -> None:
    mine = _logged_in(1) + _logged_in(1, "bob")

    get_user_model().objects.filter(pk__in=[alice.pk, bob.pk]).delete()

    assert not any(store.holds(key) for _, key in mine)


def test_self_service_deletion_in_a_request(store: Store, alice: Any) -> None:
    (here, here_key), (phone, phone_key) = _logged_in(2)

    response = here.post("/delete-me/")

    assert response.status_code == 200
    assert not store.holds(here_key)
    assert not store.holds(phone_key)
    assert _whoami(here) is None
    assert _whoami(phone) is None


def test_self_service_deactivation_in_a_request(store: Store, alice: Any) -> None:
    (here, here_key), (phone, phone_key) = _logged_in(2)

    response = here.post("/deactivate-me/")

    # The request's own session ended under it: no error, and no resurrection.
    assert response.status_code == 200
    assert not store.holds(here_key)
    assert not store.holds(phone_key)
    assert _whoami(here) is None
    assert _whoami(phone) is None


def test_deactivation_through_the_user_admin(admin_client: Client, alice: Any) -> None:
    mine = _logged_in(2)
    alice.refresh_from_db()
    data = {
        "username": "alice",
        "email": alice.email,
        "is_active": "",
        "date_joined_0": alice.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": alice.date_joined.strftime("%H:%M:%S"),
        "last_login_0": alice.last_login.strftime("%Y-%m-%d"),
        "last_login_1": alice.last_login.strftime("%H:%M:%S"),
    }
    data = {key: value for key, value in data.items() if value != ""}

    response = admin_client.post(f"{USERS}{alice.pk}/change/", data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert not _reload(alice).is_active
    assert not HardenedSession.objects.filter(user_id=str(alice.pk)).exists()
    assert all(_whoami(client) is None for client, _ in mine)


def test_async_save_ends_the_sessions(alice: Any) -> None:
    mine = _logged_in(1)

    @async_to_sync
    async def deactivate() -> None:
        user = await get_user_model().objects.aget(pk=alice.pk)
        user.is_active = False
        await user.asave()

    deactivate()

    assert not HardenedSession.objects.filter(user_id=str(alice.pk)).exists()
    assert _whoami(mine[0][0]) is None


def test_saves_and_deletes_through_a_proxy_of_the_user_model(alice: Any, bob: Any) -> None:
    """Django sends the signals of a proxy's save and delete with the proxy as sender."""
    from hardened_sessions import account

    with isolate_apps("django.contrib.auth") as registry:

        class StaffUser(get_user_model()):  # type: ignore[misc]
            class Meta:
                proxy = True
                app_label = "auth"

        account.connect(registry)
        try:
            mine, bobs = _logged_in(1), _logged_in(1, "bob")
            user = StaffUser.objects.get(pk=alice.pk)
            user.is_active = False
            user.save()
            StaffUser.objects.get(pk=bob.pk).delete()
        finally:
            assert account.disconnect(registry)

    assert not HardenedSession.objects.filter(user_id=str(alice.pk)).exists()
    assert not HardenedSession.objects.filter(user_id=str(bob.pk)).exists()
    assert _whoami(mine[0][0]) is None
    assert _whoami(bobs[0][0]) is None


def test_rolled_back_deactivation_leaves_the_sessions(
    store: Store, alice: Any, revocations: list[dict[str, Any]]
) -> None:
    mine = _logged_in(2)
    revocations.clear()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        user = _reload(alice)
        user.is_active = False
        user.save()
        raise Abort

    assert _reload(alice).is_active
    assert all(store.holds(key) for _, key in mine)
    assert all(_whoami(client) == "alice" for client, _ in mine)
    assert revocations == []


def test_rolled_back_deletion_leaves_the_sessions(store: Store, alice: Any) -> None:
    mine = _logged_in(1)

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        _reload(alice).delete()
        raise Abort

    assert all(store.holds(key) for _, key in mine)
    assert all(_whoami(client) == "alice" for client, _ in mine)


def test_deactivation_in_a_transaction_ends_the_sessions_at_commit(
    alice: Any,
) -> None:
    store = Store("db", "default", None)
    mine = _logged_in(1)

    with transaction.atomic():
        user = _reload(alice)
        user.is_active = False
        user.save()
        # Not yet committed: another transaction could still roll it back.
        assert all(store.holds(key) for _, key in mine)

    assert not any(store.holds(key) for _, key in mine)


def test_resaving_an_inactive_user_ends_nothing_again(
    alice: Any, revocations: list[dict[str, Any]]
) -> None:
    user = _reload(alice)
    user.is_active = False
    user.save()
    revocations.clear()
    # A session made directly, as if it had slipped in (e.g. a bulk import).
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session["_auth_user_id"] = str(alice.pk)
    session.save()

    user = _reload(alice)
    user.first_name = "Alice"
    with CaptureQueriesContext(connections["default"]) as queries:
        user.save()

    assert revocations == []
    assert HardenedSession.objects.filter(user_id=str(alice.pk)).count() == 1
    # The read of the stored is_active, and the UPDATE; no query of the sessions.
    assert len(queries) == 2, [q["sql"] for q in queries]
    assert not any("hardened_sessions" in q["sql"] for q in queries)


def _save_queries(user: Any) -> int:
    with CaptureQueriesContext(connections["default"]) as queries:
        user.save()
    return len(queries)


def test_saving_an_active_user_costs_no_extra_query(alice: Any) -> None:
    """The stored ``is_active`` is read only when the instance says False."""
    from hardened_sessions import account

    user = _reload(alice)
    user.first_name = "Alice"
    with_receivers = _save_queries(user)
    assert account.disconnect()
    try:
        assert not account.disconnect()
        baseline = _save_queries(user)
    finally:
        account.connect()
    assert with_receivers == baseline
    # A new user (no pk yet) costs nothing either.
    with CaptureQueriesContext(connections["default"]) as queries:
        get_user_model().objects.create_user("carol", password=PASSWORD, is_active=False)
    assert len(queries) == 1, [q["sql"] for q in queries]


def test_update_fields_without_is_active_reads_and_ends_nothing(
    alice: Any, revocations: list[dict[str, Any]]
) -> None:
    mine = _logged_in(1)
    user = _reload(alice)
    user.is_active = False  # not saved: update_fields leaves it out
    user.first_name = "Alice"

    with CaptureQueriesContext(connections["default"]) as queries:
        user.save(update_fields=["first_name"])

    assert len(queries) == 1
    assert revocations == []
    assert _reload(alice).is_active
    assert all(_whoami(client) == "alice" for client, _ in mine)


def test_update_fields_with_is_active_ends_the_sessions(alice: Any) -> None:
    mine = _logged_in(1)
    user = _reload(alice)
    user.is_active = False

    user.save(update_fields=["is_active"])

    assert all(_whoami(client) is None for client, _ in mine)
    assert not HardenedSession.objects.filter(user_id=str(alice.pk)).exists()


def test_the_setting_turns_it_off(alice: Any, revocations: list[dict[str, Any]]) -> None:
    with override_settings(HARDENED_SESSIONS={"END_SESSIONS_ON_DEACTIVATION": False}):
        mine = _logged_in(2)
        revocations.clear()
        user = _reload(alice)
        user.is_active = False
        user.save()

        assert revocations == []
        assert HardenedSession.objects.filter(user_id=str(alice.pk)).count() == 2
        # Django's own check still refuses the inactive user on each request.
        assert all(_whoami(client) is None for client, _ in mine)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_setting_must_be_a_bool(value: Any) -> None:
    problems = validate({"END_SESSIONS_ON_DEACTIVATION": value})
    assert len(problems) == 1
    assert "END_SESSIONS_ON_DEACTIVATION" in problems[0]
    assert "must be True or False" in problems[0]
    assert validate({"END_SESSIONS_ON_DEACTIVATION": False}) == []


def test_a_store_failure_after_commit_is_logged_and_auth_still_refuses(
    alice: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The deactivation stands when the revoke fails; the sessions live on in the store,
    but Django's ModelBackend refuses an inactive user on every request."""
    mine = _logged_in(1)
    table = HardenedSession._meta.db_table
    with connections["default"].cursor() as cursor:
        cursor.execute(
            f"CREATE TRIGGER hs_block_delete BEFORE DELETE ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'deletes blocked by the test'); END"
        )
    try:
        user = _reload(alice)
        user.is_active = False
        with caplog.at_level(logging.ERROR, logger="hardened_sessions"):
            user.save()  # does not raise: the deactivation has committed
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("DROP TRIGGER hs_block_delete")

    assert not _reload(alice).is_active
    errors = [
        r for r in caplog.records if r.name == "hardened_sessions" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1, caplog.records
    message = errors[0].getMessage()
    assert str(alice.pk) in message
    assert "account disabled" in message
    assert HardenedSession.objects.filter(user_id=str(alice.pk)).count() == 1
    assert all(_whoami(client) is None for client, _ in mine)


def test_memcached_cannot_end_them_and_django_refuses_the_user(
    memcached: str, alice: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mine = _logged_in(1)
    user = _reload(alice)
    user.is_active = False

    with caplog.at_level(logging.INFO, logger="hardened_sessions"):
        user.save()

    assert any(
        "cannot list" in r.getMessage() for r in caplog.records if r.name == "hardened_sessions"
    )
    assert all(_whoami(client) is None for client, _ in mine)


# --- system check ------------------------------------------------------------------------


def _w401() -> list[Any]:
    return [m for m in run_checks(tags=["sessions"]) if m.id == "hardened_sessions.W401"]


def test_check_warns_where_the_engine_cannot_list_sessions(memcached: str) -> None:
    assert Capability.USER_INDEX not in store_for_cache(memcached).capabilities
    (warning,) = _w401()
    assert "memcached" in warning.msg or "cannot list" in warning.msg
    assert "is_active" in warning.msg
    with override_settings(HARDENED_SESSIONS={"END_SESSIONS_ON_DEACTIVATION": False}):
        assert _w401() == []


def test_check_warns_on_redis_cluster_and_deactivation_still_works(
    redis_cluster: Any, alice: Any
) -> None:
    cache = {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": redis_cluster.urls,
        "KEY_PREFIX": "hs-account-cluster",
        "OPTIONS": {"socket_timeout": 5, "socket_connect_timeout": 5},
    }
    redis_cluster.flush()
    with sessions_cache(cache, SESSION_ENGINE="hardened_sessions.backends.cache"):
        assert len(_w401()) == 1
        assert Capability.USER_INDEX not in store_for_cache("sessions").capabilities
        mine = _logged_in(1)
        user = _reload(alice)
        user.is_active = False
        user.save()  # nothing to end it with, and no error either
        assert _whoami(mine[0][0]) is None
        with pytest.raises(NotImplementedError, match="per-user index"):
            hardened_sessions.end_sessions_of_inactive_users()
    redis_cluster.flush()


def test_check_is_quiet_where_the_engine_lists_sessions(store: Store) -> None:
    assert _w401() == []
    if store.cache is not None:
        # The check decides from the configuration; the store agrees.
        assert Capability.USER_INDEX in store_for_cache(store.cache).capabilities


def test_check_warns_on_redis_cluster_even_when_it_is_down() -> None:
    from tests.support.servers import free_port

    cache = {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": [f"redis://127.0.0.1:{free_port()}"],
        "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
    }
    with sessions_cache(cache, SESSION_ENGINE="hardened_sessions.backends.cache"):
        assert len(_w401()) == 1


# --- bulk updates ------------------------------------------------------------------------


def test_bulk_updates_are_not_covered_and_the_helper_ends_them(
    store: Store, alice: Any, bob: Any, revocations: list[dict[str, Any]]
) -> None:
    carol = get_user_model().objects.create_user("carol", password=PASSWORD)
    alices, bobs, carols = _logged_in(2), _logged_in(1, "bob"), _logged_in(1, "carol")
    revocations.clear()

    get_user_model().objects.filter(pk__in=[alice.pk, bob.pk]).update(is_active=False)

    # No signal: the sessions are still stored (Django refuses the users all the same).
    assert all(store.holds(key) for _, key in alices + bobs)
    assert revocations == []

    only_alice = get_user_model().objects.filter(username="alice")
    assert hardened_sessions.end_sessions_of_inactive_users(only_alice, batch_size=1) == 2
    assert not any(store.holds(key) for _, key in alices)
    assert all(store.holds(key) for _, key in bobs)

    assert hardened_sessions.end_sessions_of_inactive_users(batch_size=1) == 1
    assert not any(store.holds(key) for _, key in bobs)
    assert all(store.holds(key) for _, key in carols)
    assert _whoami(carols[0][0]) == "carol"
    assert {_why(r) for r in revocations} == {"account disabled"}
    assert hardened_sessions.end_sessions_of_inactive_users() == 0
    del carol


def test_management_command(store: Store, alice: Any, bob: Any) -> None:
    alices = _logged_in(2)
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)

    out = StringIO()
    call_command("endinactivesessions", "--batch-size", "1", stdout=out)

    assert "Ended 2 sessions" in out.getvalue()
    assert not any(store.holds(key) for _, key in alices)
    out = StringIO()
    call_command("endinactivesessions", stdout=out)
    assert "Ended 0 sessions" in out.getvalue()


def test_helper_and_command_on_memcached_say_why(memcached: str, alice: Any) -> None:
    _logged_in(1)
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)

    with pytest.raises(NotImplementedError, match="per-user index"):
        hardened_sessions.end_sessions_of_inactive_users()
    with pytest.raises(CommandError, match="per-user index"):
        call_command("endinactivesessions", stdout=StringIO())


# --- the User admin ----------------------------------------------------------------------


@pytest.fixture
def root() -> Any:
    return get_user_model().objects.create_superuser("root", password=PASSWORD)


@pytest.fixture
def admin_client(root: Any) -> Client:
    client = Client()
    client.force_login(root)
    return client


def _staff(*perms: str) -> Client:
    """A staff user with the given permissions ("app_label.codename"), logged in."""
    user = get_user_model().objects.create_user("staff", password=PASSWORD, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def _messages(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


def _user_log(user: Any) -> list[str]:
    content_type = ContentType.objects.get_for_model(get_user_model())
    return [
        entry.get_change_message()
        for entry in LogEntry.objects.filter(
            content_type=content_type, object_id=str(user.pk), action_flag=CHANGE
        )
    ]


def test_default_user_admin_gets_the_mixin() -> None:
    from hardened_sessions.admin import EndSessionsAdminMixin

    model_admin = admin.site.get_model_admin(get_user_model())
    assert isinstance(model_admin, EndSessionsAdminMixin)
    assert isinstance(model_admin, UserAdmin)
    assert callable(model_admin.end_all_sessions)


_SETUP_PROBE = """
import django
django.setup()
from django.contrib import admin
from django.contrib.auth import get_user_model
from hardened_sessions.admin import EndSessionsAdminMixin
User = get_user_model()
print(
    admin.site.is_registered(User)
    and isinstance(admin.site.get_model_admin(User), EndSessionsAdminMixin)
)
"""


@pytest.mark.parametrize(
    ("apps_order", "expected"),
    [
        # The app before the admin: its ready() runs before autodiscovery.
        ('"hardened_sessions", "django.contrib.admin", "django.contrib.auth"', "True"),
        ('"django.contrib.auth", "django.contrib.admin", "hardened_sessions"', "True"),
        # No autodiscovery: nothing is registered, nothing is replaced.
        (
            '"django.contrib.admin.apps.SimpleAdminConfig", "django.contrib.auth", '
            '"hardened_sessions"',
            "False",
        ),
    ],
)
def test_default_user_admin_is_replaced_whatever_the_app_order(
    apps_order: str, expected: str, tmp_path: Any
) -> None:
    (tmp_path / "probe_settings.py").write_text(
        f"""
SECRET_KEY = "probe-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz-0123456789"
INSTALLED_APPS = [{apps_order}, "django.contrib.contenttypes", "django.contrib.messages"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
SESSION_ENGINE = "hardened_sessions.backends.db"
USE_TZ = True
""",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "probe_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]),
    }
    result = subprocess.run(
        [sys.executable, "-c", _SETUP_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_only_djangos_own_user_admin_is_replaced() -> None:
    from hardened_sessions.admin import EndSessionsAdminMixin
    from hardened_sessions.admin_user import apply_to_default_user_admin

    User = get_user_model()

    class ProjectUserAdmin(UserAdmin):
        pass

    site = admin.AdminSite(name="probe")
    assert not apply_to_default_user_admin(site)  # nothing registered
    site.register(User, ProjectUserAdmin)
    assert not apply_to_default_user_admin(site)
    assert type(site.get_model_admin(User)) is ProjectUserAdmin
    site.unregister(User)
    site.register(User, UserAdmin)
    assert apply_to_default_user_admin(site)
    replaced = site.get_model_admin(User)
    assert isinstance(replaced, EndSessionsAdminMixin) and isinstance(replaced, UserAdmin)
    assert not apply_to_default_user_admin(site)  # already replaced: left alone


def test_admin_action_confirms_then_ends_and_logs(
    admin_client: Client, alice: Any, bob: Any, revocations: list[dict[str, Any]]
) -> None:
    carol = get_user_model().objects.create_user("carol", password=PASSWORD)
    alices, bobs = _logged_in(2), _logged_in(1, "bob")
    revocations.clear()
    selected = {"action": "end_all_sessions", "_selected_action": [alice.pk, bob.pk, carol.pk]}

    confirm = admin_client.post(USERS, selected)

    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "alice" in page and "bob" in page and "carol" in page
    assert 'name="post" value="yes"' in page
    assert all(_whoami(client) == "alice" for client, _ in alices)  # nothing ended yet

    done = admin_client.post(USERS, {**selected, "post": "yes"}, follow=True)

    assert done.status_code == 200
    assert ("success", "Ended 3 sessions of 3 users.") in _messages(done)
    assert all(_whoami(client) is None for client, _ in alices + bobs)
    assert not HardenedSession.objects.filter(user_id__in=[str(alice.pk), str(bob.pk)]).exists()
    assert _user_log(alice) == ["Ended 2 sessions."]
    assert _user_log(bob) == ["Ended 1 session."]
    assert _user_log(carol) == ["Ended 0 sessions."]
    assert {_why(r) for r in revocations} == {"ended by an administrator"}


def test_admin_action_warns_when_nothing_ended(admin_client: Client, alice: Any) -> None:
    selected = {"action": "end_all_sessions", "_selected_action": [alice.pk], "post": "yes"}

    done = admin_client.post(USERS, selected, follow=True)

    assert ("warning", "No session was ended: none of these users had a live session.") in (
        _messages(done)
    )


def test_admin_action_needs_the_permission(alice: Any) -> None:
    client = _staff("auth.view_user", "auth.change_user")
    mine = _logged_in(1)

    listing = client.get(USERS)
    assert listing.status_code == 200
    assert "end_all_sessions" not in listing.content.decode()
    client.post(
        USERS, {"action": "end_all_sessions", "_selected_action": [alice.pk], "post": "yes"}
    )

    assert all(_whoami(c) == "alice" for c, _ in mine)
    assert _user_log(alice) == []


def _button(user: Any) -> str:
    return f"{USERS}{user.pk}/end-sessions/"


def test_change_page_button_confirms_then_ends(
    admin_client: Client, alice: Any, revocations: list[dict[str, Any]]
) -> None:
    mine = _logged_in(2)
    revocations.clear()

    change = admin_client.get(f"{USERS}{alice.pk}/change/")
    assert change.status_code == 200
    assert f'href="{_button(alice)}"' in change.content.decode()
    assert "End all sessions" in change.content.decode()

    confirm = admin_client.get(_button(alice))
    assert confirm.status_code == 200
    assert "csrfmiddlewaretoken" in confirm.content.decode()
    assert all(_whoami(client) == "alice" for client, _ in mine)

    done = admin_client.post(_button(alice), follow=True)

    assert done.redirect_chain[-1][0] == f"{USERS}{alice.pk}/change/"
    assert ("success", "Ended 2 sessions of alice.") in _messages(done)
    assert all(_whoami(client) is None for client, _ in mine)
    assert _user_log(alice) == ["Ended 2 sessions."]
    assert {_why(r) for r in revocations} == {"ended by an administrator"}

    again = admin_client.post(_button(alice), follow=True)
    assert ("warning", "No session was ended: alice had no live session.") in _messages(again)


def test_change_page_button_needs_csrf(root: Any, alice: Any) -> None:
    mine = _logged_in(1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(root)

    assert client.post(_button(alice)).status_code == 403

    assert all(_whoami(c) == "alice" for c, _ in mine)
    page = client.get(_button(alice)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    assert client.post(_button(alice), {"csrfmiddlewaretoken": token.group(1)}).status_code == 302
    assert all(_whoami(c) is None for c, _ in mine)


def test_change_page_button_needs_the_permission(alice: Any) -> None:
    client = _staff("auth.view_user", "auth.change_user")
    mine = _logged_in(1)

    change = client.get(f"{USERS}{alice.pk}/change/")
    assert change.status_code == 200
    assert _button(alice) not in change.content.decode()
    assert client.get(_button(alice)).status_code == 403
    assert client.post(_button(alice)).status_code == 403

    assert all(_whoami(c) == "alice" for c, _ in mine)


def test_change_page_button_with_the_permission_only(alice: Any) -> None:
    client = _staff("auth.view_user", "hardened_sessions.delete_hardenedsession")
    mine = _logged_in(1)

    assert client.post(_button(alice)).status_code == 302

    assert all(_whoami(c) is None for c, _ in mine)


def test_change_page_button_of_an_unknown_user(admin_client: Client) -> None:
    assert admin_client.get(f"{USERS}999999/end-sessions/").status_code == 404
    assert admin_client.post(f"{USERS}999999/end-sessions/").status_code == 404


def test_change_page_button_hides_which_users_exist(alice: Any) -> None:
    client = _staff("auth.view_user")
    assert client.get(_button(alice)).status_code == 403
    assert client.get(f"{USERS}999999/end-sessions/").status_code == 403


def test_admin_on_memcached_says_why(memcached: str, admin_client: Client, alice: Any) -> None:
    mine = _logged_in(1)

    done = admin_client.post(_button(alice), follow=True)
    ((level, text),) = [m for m in _messages(done) if m[0] == "error"]
    assert "per-user index" in text
    action = admin_client.post(
        USERS,
        {"action": "end_all_sessions", "_selected_action": [alice.pk], "post": "yes"},
        follow=True,
    )
    assert any(level == "error" and "per-user index" in text for level, text in _messages(action))
    assert _user_log(alice) == []
    assert all(_whoami(c) == "alice" for c, _ in mine)


def test_connecting_twice_connects_once(alice: Any) -> None:
    from hardened_sessions import account

    account.connect()
    account.connect()
    mine = _logged_in(1)
    user = _reload(alice)
    user.is_active = False
    with CaptureQueriesContext(connections["default"]) as queries:
        user.save()

    # One read of the stored is_active, one UPDATE, one revoke (a SELECT and a DELETE).
    reads = [q for q in queries if q["sql"].startswith("SELECT") and "auth_user" in q["sql"]]
    assert len(reads) == 1, [q["sql"] for q in queries]
    assert all(_whoami(c) is None for c, _ in mine)
