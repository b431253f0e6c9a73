"""Attacks on re-authentication ("sudo mode"): getting past ``@reauth_required``
without a fresh proof, or turning the re-authentication view against its user.

* a stale, missing (pre-upgrade), future-dated or merely "used" proof;
* someone else's password, a backend that answers with another user, an inactive user;
* an open redirect through ``next`` (other hosts, scheme-relative, ``javascript:``,
  backslashes, http from https), ``next`` echoed into the page;
* a cross-site POST (CSRF);
* a rotation that fails: no proof may be recorded, in the store or in memory.

The site under test is ``tests.support.reauth_site``; time moves by patching.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.http import HttpRequest
from django.test import Client, override_settings

from hardened_sessions import reauth
from hardened_sessions.forms import PasswordReauthForm
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
    clock_at,
    expect_reauth_redirect,
    login,
    make_user,
    post_reauth,
    store,
    stored_data,
    stranger,
)

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


def test_boundary_is_max_age_exactly(clock: Clock, alice: Any) -> None:
    """Proof recorded at second S is good while now - S < max_age; at max_age it is stale."""
    client = Client()
    login(client)
    clock.now = int(T0) + MAX_AGE - 0.001
    assert client.get("/sensitive/").status_code == 200
    clock.now = int(T0) + MAX_AGE
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")


def test_session_from_before_the_feature_needs_reauth(clock: Clock, alice: Any) -> None:
    client = Client()
    key = login(client)
    session = store(key)
    del session[reauth.SESSION_KEY]
    session.save()
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")
    expect_reauth_redirect(client.get("/cbv/"), "/cbv/")


def test_future_timestamp_beyond_the_skew_tolerance_needs_reauth(clock: Clock, alice: Any) -> None:
    """A proof dated ahead of now (a clock that went backwards, or a server whose clock ran
    ahead) would otherwise stay fresh until the clock catches up: only a few seconds of
    skew between servers are accepted."""
    client = Client()
    login(client)
    clock.now -= reauth.CLOCK_SKEW_TOLERANCE
    assert client.get("/sensitive/").status_code == 200
    clock.now -= 1
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")


def test_a_stale_proof_is_never_refreshed_by_use(clock: Clock, alice: Any) -> None:
    """Visiting protected pages does not extend the proof (it is not an idle timer)."""
    client = Client()
    login(client)
    for _ in range(3):
        clock.now += MAX_AGE // 3 - 1
        assert client.get("/sensitive/").status_code == 200
    clock.now += 3
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")


def test_reauth_view_for_anonymous_user_goes_to_login(alice: Any) -> None:
    client = Client()
    response = client.get(f"{REAUTH}?next=/sensitive/")
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/sensitive/"
    response = client.post(f"{REAUTH}?next=/sensitive/", {"password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    # An unsafe target is not forwarded to the login page.
    response = client.get(f"{REAUTH}?next=https://evil.example/")
    assert response["Location"] == f"{LOGIN}?next={REAUTH}"


def test_another_users_password_does_not_pass(clock: Clock, alice: Any, bob: Any) -> None:
    client = Client()
    key = login(client)
    clock.now += MAX_AGE
    response = client.post(
        f"{REAUTH}?next=/sensitive/", {"password": BOB_PASSWORD, "username": "bob"}
    )
    assert response.status_code == 200
    assert response.context["form"].errors
    assert client.cookies[COOKIE].value == key
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")


def test_form_refuses_a_user_the_backend_returns_for_someone_else(alice: Any, bob: Any) -> None:
    """A backend that answers with another user (or matches on another field) is refused."""
    request = HttpRequest()
    with mock.patch("hardened_sessions.forms.authenticate", return_value=bob):
        form = PasswordReauthForm(request=request, user=alice, data={"password": PASSWORD})
        assert not form.is_valid()
    with mock.patch("hardened_sessions.forms.authenticate", return_value=alice):
        form = PasswordReauthForm(request=request, user=alice, data={"password": PASSWORD})
        assert form.is_valid()


def test_inactive_user_cannot_reauthenticate(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    clock.now += MAX_AGE
    alice.is_active = False
    alice.save()
    response = post_reauth(client)
    # Django's AuthenticationMiddleware now sees no user: sent to log in.
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "http://evil.example/sensitive/",
        "javascript:alert(1)",
        "///evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        "https:/evil.example",
        "",
    ],
)
def test_unsafe_next_goes_to_login_redirect_url(clock: Clock, alice: Any, target: str) -> None:
    client = Client()
    login(client)
    clock.now += MAX_AGE
    response = client.post(REAUTH, {"password": PASSWORD, "next": target})
    assert response.status_code == 302
    assert response["Location"] == HOME
    client = Client()
    login(client)
    response = client.post(REAUTH + "?" + f"next={target}", {"password": PASSWORD})
    assert response["Location"] == HOME


def test_http_next_refused_on_https(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    response = client.post(
        REAUTH, {"password": PASSWORD, "next": "http://testserver/sensitive/"}, secure=True
    )
    assert response["Location"] == HOME
    response = client.post(
        REAUTH, {"password": PASSWORD, "next": "https://testserver/sensitive/"}, secure=True
    )
    assert response["Location"] == "https://testserver/sensitive/"


def test_next_is_not_echoed_into_the_page_when_unsafe(clock: Clock, alice: Any) -> None:
    client = Client()
    login(client)
    page = client.get(REAUTH + "?next=https://evil.example/")
    assert page.status_code == 200
    assert b"evil.example" not in page.content
    page = client.get(REAUTH + '?next=/x/"><script>')
    assert b"<script>" not in page.content


def test_reauth_view_needs_a_csrf_token(clock: Clock, alice: Any) -> None:
    key = login(Client())
    client = Client(enforce_csrf_checks=True)
    client.cookies[COOKIE] = key
    clock.now += MAX_AGE
    response = client.post(f"{REAUTH}?next=/sensitive/", {"password": PASSWORD})
    assert response.status_code == 403
    assert client.cookies[COOKIE].value == key
    expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")

    page = client.get(f"{REAUTH}?next=/sensitive/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    assert token
    response = client.post(
        f"{REAUTH}?next=/sensitive/",
        {"password": PASSWORD, "csrfmiddlewaretoken": page.context["csrf_token"]},
    )
    assert response.status_code == 302
    assert response["Location"] == "/sensitive/"
    assert client.cookies[COOKIE].value != key


def test_rotation_failure_propagates_and_marks_nothing(clock: Clock, alice: Any) -> None:
    from tests.support import http_fault_engine

    with override_settings(SESSION_ENGINE="tests.support.http_fault_engine"):
        client = Client()
        key = login(client)
        clock.now += MAX_AGE
        http_fault_engine.SessionStore.failing = {"remove"}
        try:
            response = post_reauth(client)
        finally:
            http_fault_engine.SessionStore.failing = set()
        assert response.status_code == 503
        # No proof was recorded, not even in memory where a later save could pick it up.
        assert response.wsgi_request.session.get(reauth.SESSION_KEY) == int(T0)
        # Nothing changed: the old session is intact and still needs re-authentication.
        assert stored_data(key)[reauth.SESSION_KEY] == int(T0)
        expect_reauth_redirect(stranger(key).get("/sensitive/"), "/sensitive/")

        http_fault_engine.SessionStore.failing = {"write_new"}
        try:
            response = post_reauth(stranger(key))
        finally:
            http_fault_engine.SessionStore.failing = set()
        assert response.status_code == 503
        assert stored_data(key) == {}  # the old record went; the new one was never made


def test_session_ended_during_reauth_gets_no_proof(clock: Clock, alice: Any) -> None:
    """The session is revoked (another device logs it out) while the right password is
    being checked: the rotation finds the old record gone and starts an empty session.
    No proof may be written into it, and the user is sent to log in, not to ``next``."""
    client = Client()
    key = login(client)
    clock.now += MAX_AGE
    response = client.post("/revoked-meanwhile/reauth/?next=/sensitive/", {"password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/sensitive/"
    assert stored_data(key) == {}
    assert reauth.SESSION_KEY not in response.wsgi_request.session
    new_key = client.cookies[COOKIE].value
    if new_key:
        assert reauth.SESSION_KEY not in stored_data(new_key)


def test_reauth_view_is_csrf_protected_without_the_csrf_middleware(
    clock: Clock, alice: Any
) -> None:
    """The view carries ``csrf_protect`` itself, as Django's ``LoginView`` does."""
    key = login(Client())
    middleware = [m for m in settings.MIDDLEWARE if not m.endswith("CsrfViewMiddleware")]
    with override_settings(MIDDLEWARE=middleware):
        client = Client(enforce_csrf_checks=True)
        client.cookies[COOKIE] = key
        clock.now += MAX_AGE
        response = client.post(f"{REAUTH}?next=/sensitive/", {"password": PASSWORD})
        assert response.status_code == 403
        assert client.cookies[COOKIE].value == key
        expect_reauth_redirect(client.get("/sensitive/"), "/sensitive/")
