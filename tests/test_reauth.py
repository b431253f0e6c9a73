"""Re-authentication before sensitive actions ("sudo mode"): the behaviour.

The session records when its user last proved who they are (``_hs_authenticated_at``
in the session data, set at login and by :class:`hardened_sessions.views.ReauthView`);
``@reauth_required`` and ``ReauthRequiredMixin`` send a user whose proof is older than
``REAUTH_MAX_AGE`` to the re-authentication view. The whole flow runs through Django's
test client and the real middleware on every engine; time moves by patching the
package's ``time``. The attacks on it are in ``test_threat_reauth_bypass``; the site
under test is ``tests.support.reauth_site``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest
from django.test import AsyncClient, Client, override_settings

from hardened_sessions import reauth
from hardened_sessions.conf import validate
from hardened_sessions.decorators import reauth_required
from tests.support.clock import Clock
from tests.support.reauth_site import (
    BOB_PASSWORD,
    COOKIE,
    HOME,
    LOGIN,
    MAX_AGE,
    PASSWORD,
    REAUTH,
    T0,
    URLCONF,
    AsyncSensitiveView,
    async_sensitive,
    clock_at,
    expect_reauth_redirect,
    login,
    make_user,
    post_reauth,
    sensitive,
    store,
    stored_data,
    stranger,
)
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF, LOGIN_REDIRECT_URL=HOME):
        yield


@pytest.fixture
def clock() -> Iterator[Clock]:
    with clock_at(T0) as c:
        yield c


@pytest.fixture
def alice() -> Any:
    return make_user("alice", PASSWORD)


@pytest.fixture
def bob() -> Any:
    return make_user("bob", BOB_PASSWORD)


ENGINES = [
    "db",
    "cached_db",
    "cache-locmem",
    "cache-django-redis",
    "cache-django-rediscache",
    "cache-pymemcache",
]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each engine: db (SQLite), cached_db over LocMemCache, cache over each variant."""
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
def failed_logins() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    user_login_failed.connect(receiver, weak=False, dispatch_uid="tests.test_reauth")
    try:
        yield received
    finally:
        user_login_failed.disconnect(dispatch_uid="tests.test_reauth")


# --- the full flow on every engine ----------------------------------------------------------


def test_flow_on_every_engine(engine: str, clock: Clock, alice: Any) -> None:
    client = Client()
    key = login(client)
    assert stored_data(key)[reauth.SESSION_KEY] == int(T0)

    response = client.get("/sensitive/?a=1&b=2")
    assert response.status_code == 200
    assert json.loads(response.content)["user"] == "alice"

    clock.now += MAX_AGE
    response = client.get("/sensitive/?a=1&b=2")
    expect_reauth_redirect(response, "/sensitive/?a=1&b=2")

    page = client.get(response["Location"])
    assert page.status_code == 200
    assert b'name="password"' in page.content
    assert b"csrfmiddlewaretoken" in page.content
    assert b'name="next"' in page.content

    response = post_reauth(client, next_url="/sensitive/%3Fa%3D1%26b%3D2")
    assert response.status_code == 302
    assert response["Location"] == "/sensitive/?a=1&b=2"
    new_key = client.cookies[COOKIE].value
    assert new_key != key
    assert stored_data(key) == {}  # the old key is dead
    assert stranger(key).get("/sensitive/").status_code == 302
    assert stored_data(new_key)[reauth.SESSION_KEY] == int(clock.now)
    assert client.get("/sensitive/?a=1&b=2").status_code == 200


# --- the check ---------------------------------------------------------------------------------


def test_login_records_authenticated_at(clock: Clock, alice: Any) -> None:
    client = Client()
    key = login(client)
    request = HttpRequest()
    request.session = store(key)
    assert reauth.authenticated_at(request) == datetime.fromtimestamp(int(T0), tz=UTC)
    assert async_to_sync(reauth.aauthenticated_at)(request) == reauth.authenticated_at(request)


def test_force_login_records_authenticated_at_too(clock: Clock, alice: Any) -> None:
    client = Client()
    client.force_login(alice)
    assert client.get("/sensitive/").status_code == 200


def test_authenticated_at_is_none_without_a_session_or_value() -> None:
    request = HttpRequest()
    assert reauth.authenticated_at(request) is None
    request.session = store()
    assert reauth.authenticated_at(request) is None
    request.session[reauth.SESSION_KEY] = "1900000000"  # not ours: only ints are written
    assert reauth.authenticated_at(request) is None
    request.session[reauth.SESSION_KEY] = True
    assert reauth.authenticated_at(request) is None


def test_mark_authenticated_sync_and_async(clock: Clock) -> None:
    request = HttpRequest()
    request.session = store()
    reauth.mark_authenticated(request)
    assert request.session[reauth.SESSION_KEY] == int(T0)
    clock.now += 10
    async_to_sync(reauth.amark_authenticated)(request)
    assert request.session[reauth.SESSION_KEY] == int(T0) + 10


def test_decorator_max_age_argument(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    clock.now += 59
    assert client.get("/sensitive-60/").status_code == 200
    assert client.get("/sensitive/").status_code == 200
    clock.now += 1
    expect_reauth_redirect(client.get("/sensitive-60/"), "/sensitive-60/")
    assert client.get("/sensitive/").status_code == 200


def test_setting_sets_the_default_max_age(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    clock.now += 30
    with override_settings(HARDENED_SESSIONS={"REAUTH_MAX_AGE": 30}):
        expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")
    assert client.get("/sensitive/").status_code == 200


def test_reauth_url_setting(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    clock.now += MAX_AGE
    with override_settings(HARDENED_SESSIONS={"REAUTH_URL": "/elsewhere/confirm/"}):
        response = client.get("/sensitive/")
    assert response["Location"] == "/elsewhere/confirm/?next=/sensitive/"
    with override_settings(HARDENED_SESSIONS={"REAUTH_URL": "hardened_sessions:reauth"}):
        expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")


def test_anonymous_user_goes_to_login(alice: Any) -> None:
    client = Client()
    for url in ("/sensitive/?x=1", "/cbv/", "/sensitive-60/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"{LOGIN}?next={url.replace('?', '%3F').replace('=', '%3D')}"
    response = async_to_sync(AsyncClient().get)("/async-sensitive/")
    assert response["Location"] == f"{LOGIN}?next=/async-sensitive/"


def test_mixin_sync_and_async(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    assert client.get("/cbv/").status_code == 200
    clock.now += 120
    expect_reauth_redirect(client.get("/cbv/"), "/cbv/")
    assert client.get("/sensitive/").status_code == 200
    assert client.get("/async-cbv/").status_code == 200
    clock.now += MAX_AGE
    expect_reauth_redirect(client.get("/async-cbv/"), "/async-cbv/")


def test_decorator_keeps_views_async_and_sync() -> None:
    assert iscoroutinefunction(async_sensitive)
    assert not iscoroutinefunction(sensitive)
    assert iscoroutinefunction(reauth_required(AsyncSensitiveView.as_view()))
    assert sensitive.__name__ == "sensitive"
    with pytest.raises(TypeError):
        reauth_required(max_age=0)
    with pytest.raises(TypeError):
        reauth_required(max_age=True)  # type: ignore[arg-type]


def test_async_view_under_async_client(clock: Clock, alice: Any) -> None:
    @async_to_sync
    async def scenario() -> None:
        client = AsyncClient()
        response = await client.post(LOGIN, {"username": "alice", "password": PASSWORD})
        assert response.status_code == 302
        key = client.cookies[COOKIE].value
        response = await client.get("/async-sensitive/")
        assert response.status_code == 200
        assert json.loads(response.content) == {"view": "async", "user": "alice"}
        clock.now += MAX_AGE
        response = await client.get("/async-sensitive/")
        expect_reauth_redirect(response, "/async-sensitive/")
        response = await client.post(f"{REAUTH}?next=/async-sensitive/", {"password": PASSWORD})
        assert response.status_code == 302
        assert response["Location"] == "/async-sensitive/"
        assert client.cookies[COOKIE].value != key
        response = await client.get("/async-sensitive/")
        assert response.status_code == 200

    scenario()


# --- the re-authentication view ------------------------------------------------------------


def test_wrong_password_is_a_form_error_without_rotation(
    clock: Clock, alice: Any, failed_logins: list[dict[str, Any]]
) -> None:
    client = Client()
    key = login(client)
    clock.now += MAX_AGE
    response = post_reauth(client, password="not the password")
    assert response.status_code == 200
    assert response.context["form"].errors
    assert b"That password is not correct." in response.content
    assert b"not the password" not in response.content  # never echoed back
    assert client.cookies[COOKIE].value == key
    assert stored_data(key)[reauth.SESSION_KEY] == int(T0)
    assert len(failed_logins) == 1
    assert failed_logins[0]["credentials"]["username"] == "alice"
    assert failed_logins[0]["credentials"]["password"] != "not the password"  # cleansed
    assert failed_logins[0]["request"] is not None
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")


def test_reauth_page_is_not_cached_and_hides_the_password(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    page = client.get(REAUTH)
    assert "no-cache" in page["Cache-Control"] or "no-store" in page["Cache-Control"]
    response = post_reauth(client, password="wrong")
    assert "no-store" in response["Cache-Control"] or "no-cache" in response["Cache-Control"]
    assert tuple(response.wsgi_request.sensitive_post_parameters) == ("password",)


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"REAUTH_MAX_AGE": 300}, True),
        ({"REAUTH_MAX_AGE": 0}, False),
        ({"REAUTH_MAX_AGE": -1}, False),
        ({"REAUTH_MAX_AGE": True}, False),
        ({"REAUTH_MAX_AGE": "300"}, False),
        ({"REAUTH_MAX_AGE": None}, False),
        ({"REAUTH_URL": None}, True),
        ({"REAUTH_URL": "/confirm/"}, True),
        ({"REAUTH_URL": "accounts:confirm"}, True),
        ({"REAUTH_URL": ""}, False),
        ({"REAUTH_URL": 3}, False),
    ],
)
def test_settings_are_validated(value: dict[str, Any], ok: bool) -> None:
    assert (validate(value) == []) is ok


def test_async_login_records_authenticated_at(clock: Clock, alice: Any) -> None:
    """``alogin()`` sends ``user_logged_in`` through ``asend``: the proof is recorded too."""

    @async_to_sync
    async def scenario() -> None:
        client = AsyncClient()
        response = await client.post("/async-login/", {"username": "alice", "password": PASSWORD})
        assert response.status_code == 200
        key = client.cookies[COOKIE].value
        assert (await store(key).aload())[reauth.SESSION_KEY] == int(T0)
        assert (await client.get("/async-sensitive/")).status_code == 200

    scenario()
