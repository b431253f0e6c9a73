""" "Your sessions" pages (``hardened_sessions.urls``, ``hardened_sessions.views_sessions``).

Through Django's test client and the real middleware: on the db engine on each database,
cached_db, the cache engine on LocMemCache and Redis (lists and ends), and memcached
(a page that says the sessions cannot be listed). A session is addressed by its handle
(the admin's row id); a handle that is not one of the requesting user's live sessions
gets the same 404 whoever it belongs to.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path

from hardened_sessions import keys
from hardened_sessions.admin import row_id
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import session_revoked
from hardened_sessions.views_sessions import (
    AsyncEndOtherSessionsView,
    AsyncEndSessionView,
    AsyncSessionListView,
    handle_of,
)
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

COOKIE = settings.SESSION_COOKIE_NAME
LIST = "/sessions/"
LOGIN = "/accounts/login/"

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("sessions/", include("hardened_sessions.urls")),
    path("async/", AsyncSessionListView.as_view()),
    path("async/end-others/", AsyncEndOtherSessionsView.as_view()),
    path("async/<str:handle>/end/", AsyncEndSessionView.as_view()),
]


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__, LOGIN_URL=LOGIN):
        yield


ENGINES = ["db", "cached_db", "cache-locmem", "cache-django-redis"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    if name == "db":
        yield "hardened_sessions.backends.db"
        return
    module = "cached_db" if name == "cached_db" else "cache"
    variant = "locmem" if name == "cached_db" else name.removeprefix("cache-")
    with (
        variant_cache(variant, request),
        override_settings(SESSION_ENGINE=f"hardened_sessions.backends.{module}"),
    ):
        yield settings.SESSION_ENGINE


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice")


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", "bob@example.com", "pw-bob")


def signed_in(user: Any, **client_kwargs: Any) -> Client:
    client = Client(**client_kwargs)
    client.force_login(user)
    return client


def handle(client: Client | AsyncClient) -> str:
    return handle_of(keys.store_key(client.cookies[COOKIE].value))


def handles_listed(response: Any) -> list[str]:
    assert response.status_code == 200
    return [entry.handle for entry in response.context["sessions"]]


def is_signed_in(client: Client) -> bool:
    return client.get(LIST).status_code == 200


# --- the list -------------------------------------------------------------------------------


def test_list_shows_only_own_sessions_and_marks_the_current(
    engine: str, alice: Any, bob: Any
) -> None:
    laptop, phone, other = signed_in(alice), signed_in(alice), signed_in(bob)
    response = laptop.get(LIST)
    assert sorted(handles_listed(response)) == sorted([handle(laptop), handle(phone)])
    assert handle(other) not in response.content.decode()
    current = [entry.handle for entry in response.context["sessions"] if entry.current]
    assert current == [handle(laptop)]
    # Never the key, only the handle.
    assert laptop.cookies[COOKIE].value not in response.content.decode()
    assert phone.cookies[COOKIE].value not in response.content.decode()
    assert b"this browser" in response.content
    assert b"unknown device" in response.content  # DEVICE_METADATA is off
    assert response.templates[0].name == "hardened_sessions/sessions_list.html"
    assert "hardened_sessions/base.html" in [t.name for t in response.templates]


def test_anonymous_is_sent_to_login(engine: str) -> None:
    client = Client()
    for url in (LIST, "/sessions/end-others/", f"/sessions/{'0' * 16}/end/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"{LOGIN}?next={url}"
        if url != LIST:
            assert client.post(url).status_code == 302


def test_handle_is_the_admin_row_id(alice: Any) -> None:
    client = signed_in(alice)
    row = HardenedSession.objects.get(pk=keys.store_key(client.cookies[COOKIE].value))
    assert handle(client) == row_id(row)


@override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True})
def test_device_metadata_is_shown(alice: Any) -> None:
    phone = Client(HTTP_USER_AGENT="PhoneBrowser/1.0", REMOTE_ADDR="192.0.2.7")
    response = phone.post(LOGIN, {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 302
    page = signed_in(alice).get(LIST).content.decode()
    assert "PhoneBrowser/1.0" in page
    assert "192.0.2.0" in page and "192.0.2.7" not in page  # True keeps the /24
    assert "unknown device" in page  # the force_login session: no request recorded it


# --- ending one session ---------------------------------------------------------------------


def test_get_of_the_end_url_only_asks(engine: str, alice: Any) -> None:
    laptop, phone = signed_in(alice), signed_in(alice)
    response = laptop.get(f"/sessions/{handle(phone)}/end/")
    assert response.status_code == 200
    assert response.templates[0].name == "hardened_sessions/session_confirm_end.html"
    assert b'method="post"' in response.content
    # A confirmation button that cannot be framed (clickjacking) nor cached.
    assert response["X-Frame-Options"] == "DENY"
    assert "no-store" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    assert is_signed_in(phone)
    response = laptop.get("/sessions/end-others/")
    assert response.status_code == 200
    assert is_signed_in(phone)


def test_end_one_session(engine: str, alice: Any) -> None:
    laptop, phone, tablet = signed_in(alice), signed_in(alice), signed_in(alice)
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    phone_handle = handle(phone)
    session_revoked.connect(receiver, weak=False, dispatch_uid=__name__)
    try:
        response = laptop.post(f"/sessions/{phone_handle}/end/")
    finally:
        session_revoked.disconnect(dispatch_uid=__name__)
    assert response.status_code == 302
    assert response["Location"] == LIST
    assert not is_signed_in(phone)
    assert is_signed_in(tablet)
    assert sorted(handles_listed(laptop.get(LIST))) == sorted([handle(laptop), handle(tablet)])
    # The signal names the session by the first 8 digits of the same handle.
    assert [r["key_hash_prefix"] for r in received] == [phone_handle]
    assert received[0]["user_id"] == str(alice.pk)
    # Ended: its handle is now unknown.
    assert laptop.post(f"/sessions/{phone_handle}/end/").status_code == 404


def test_ending_the_current_session_logs_out(engine: str, alice: Any) -> None:
    laptop, phone = signed_in(alice), signed_in(alice)
    old_key = laptop.cookies[COOKIE].value
    response = laptop.post(f"/sessions/{handle(laptop)}/end/")
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert not is_signed_in(laptop)
    assert not is_signed_in(Client(HTTP_COOKIE=f"{COOKIE}={old_key}"))
    assert is_signed_in(phone)


def test_another_users_handle_is_a_404_like_a_random_one(engine: str, alice: Any, bob: Any) -> None:
    """No oracle: bob's handle, a random one and a malformed one answer alike."""
    attacker, victim = signed_in(alice), signed_in(bob)
    answers = []
    for candidate in (handle(victim), secrets.token_hex(8), "nothex-nothex-00", "A" * 16):
        for method in (attacker.get, attacker.post):
            response = method(f"/sessions/{candidate}/end/")
            answers.append((response.status_code, response.content))
    assert {status for status, _ in answers} == {404}
    assert len({content for _, content in answers}) == 1
    assert is_signed_in(victim)


def test_post_without_csrf_token_is_refused(engine: str, alice: Any) -> None:
    laptop = signed_in(alice, enforce_csrf_checks=True)
    phone = signed_in(alice)
    assert laptop.post(f"/sessions/{handle(phone)}/end/").status_code == 403
    assert laptop.post("/sessions/end-others/").status_code == 403
    assert is_signed_in(phone)
    # With the token from the confirmation page, it goes through.
    page = laptop.get(f"/sessions/{handle(phone)}/end/")
    token = page.context["csrf_token"]
    response = laptop.post(f"/sessions/{handle(phone)}/end/", {"csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
    assert not is_signed_in(phone)


# --- ending the others ----------------------------------------------------------------------


def test_end_others_keeps_only_the_current(engine: str, alice: Any, bob: Any) -> None:
    laptop, phone, tablet, other = (
        signed_in(alice),
        signed_in(alice),
        signed_in(alice),
        signed_in(bob),
    )
    response = laptop.post("/sessions/end-others/")
    assert response.status_code == 302
    assert response["Location"] == LIST
    assert handles_listed(laptop.get(LIST)) == [handle(laptop)]
    assert not is_signed_in(phone)
    assert not is_signed_in(tablet)
    assert is_signed_in(other)


# --- async views ----------------------------------------------------------------------------


def test_async_views(engine: str, alice: Any, bob: Any) -> None:
    laptop, phone, tablet, other = (
        AsyncClient(),
        signed_in(alice),
        signed_in(alice),
        signed_in(bob),
    )
    assert async_to_sync(laptop.get)("/async/").status_code == 302
    async_to_sync(laptop.aforce_login)(alice)

    response = async_to_sync(laptop.get)("/async/")
    assert sorted(handles_listed(response)) == sorted(
        [handle(laptop), handle(phone), handle(tablet)]
    )
    phone_handle = handle(phone)
    assert async_to_sync(laptop.get)(f"/async/{handle(other)}/end/").status_code == 404
    assert async_to_sync(laptop.get)(f"/async/{phone_handle}/end/").status_code == 200
    assert is_signed_in(phone)
    assert async_to_sync(laptop.post)(f"/async/{phone_handle}/end/").status_code == 302
    assert not is_signed_in(phone)
    assert async_to_sync(laptop.post)("/async/end-others/").status_code == 302
    assert not is_signed_in(tablet)
    assert is_signed_in(other)
    assert handles_listed(async_to_sync(laptop.get)("/async/")) == [handle(laptop)]


# --- every database, and where sessions cannot be listed ------------------------------------


def test_db_engine_on_every_database(db_alias: str, alice: Any) -> None:
    laptop, phone = signed_in(alice), signed_in(alice)
    assert sorted(handles_listed(laptop.get(LIST))) == sorted([handle(laptop), handle(phone)])
    assert laptop.post(f"/sessions/{handle(phone)}/end/").status_code == 302
    assert not is_signed_in(phone)
    assert handles_listed(laptop.get(LIST)) == [handle(laptop)]


def test_memcached_says_the_sessions_cannot_be_listed(
    request: pytest.FixtureRequest, alice: Any
) -> None:
    with (
        variant_cache("pymemcache", request),
        override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"),
    ):
        laptop, phone = signed_in(alice), signed_in(alice)
        for method, url in (
            (laptop.get, LIST),
            (laptop.get, "/sessions/end-others/"),
            (laptop.post, "/sessions/end-others/"),
            (laptop.get, f"/sessions/{handle(phone)}/end/"),
            (laptop.post, f"/sessions/{handle(phone)}/end/"),
        ):
            response = method(url)
            assert response.status_code == 200, url
            assert response.templates[0].name == "hardened_sessions/sessions_unavailable.html"
            assert b"cannot list the sessions" in response.content
        assert is_signed_in(phone)
        assert is_signed_in(laptop)
