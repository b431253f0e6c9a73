"""A small site for the re-authentication tests: views behind ``@reauth_required`` and
``ReauthRequiredMixin``, Django's auth views, ``hardened_sessions.urls``, and helpers.

Used with ``override_settings(ROOT_URLCONF=URLCONF, LOGIN_REDIRECT_URL=HOME)`` by
``test_reauth`` and ``test_threat_reauth_bypass``. Time moves with :func:`clock_at`,
which patches the package's ``time`` both where records are written and where proofs
are judged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any
from unittest import mock
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, include, path
from django.views import View

from hardened_sessions import timeutil
from hardened_sessions.decorators import reauth_required
from hardened_sessions.forms import PasswordReauthForm
from hardened_sessions.mixins import ReauthRequiredMixin
from hardened_sessions.views import ReauthView
from tests.support.clock import Clock

URLCONF = __name__

COOKIE = settings.SESSION_COOKIE_NAME
PASSWORD = "correct horse battery staple"
BOB_PASSWORD = "bob's own, different password"
REAUTH = "/hs/reauth/"
HOME = "/home/"
LOGIN = "/accounts/login/"
T0 = 1_900_000_000.25
MAX_AGE = 900  # the default REAUTH_MAX_AGE


# --- views ---------------------------------------------------------------------------------


def _ok(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"view": "sensitive", "user": request.user.get_username()})


@reauth_required
def sensitive(request: HttpRequest) -> JsonResponse:
    return _ok(request)


@reauth_required(max_age=60)
def sensitive_60(request: HttpRequest) -> JsonResponse:
    return _ok(request)


@reauth_required
async def async_sensitive(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse({"view": "async", "user": user.get_username()})


class SensitiveView(ReauthRequiredMixin, View):
    reauth_max_age = 120

    def get(self, request: HttpRequest) -> JsonResponse:
        return _ok(request)


class AsyncSensitiveView(ReauthRequiredMixin, View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        user = await request.auser()
        return JsonResponse({"view": "async-cbv", "user": user.get_username()})


async def async_login(request: HttpRequest) -> JsonResponse:
    """Logs in through ``aauthenticate``/``alogin`` (``user_logged_in.asend``)."""
    from django.contrib.auth import aauthenticate, alogin

    user = await aauthenticate(
        request, username=request.POST["username"], password=request.POST["password"]
    )
    assert user is not None
    await alogin(request, user)
    return JsonResponse({"logged_in": user.get_username()})


class RevokedMeanwhileForm(PasswordReauthForm):
    """A right password, while another device ends all of the user's sessions ("log out
    other devices") between this request's load and its key rotation."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        import hardened_sessions

        hardened_sessions.revoke_user_sessions(self.user)
        return cleaned


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("home")


urlpatterns: list[URLPattern | URLResolver] = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("hs/", include("hardened_sessions.urls")),
    path("sensitive/", sensitive),
    path("sensitive-60/", sensitive_60),
    path("async-sensitive/", async_sensitive),
    path("cbv/", SensitiveView.as_view()),
    path("async-cbv/", AsyncSensitiveView.as_view()),
    path("async-login/", async_login),
    path("home/", home),
    path("revoked-meanwhile/reauth/", ReauthView.as_view(form_class=RevokedMeanwhileForm)),
]


# --- helpers -------------------------------------------------------------------------------


@contextmanager
def clock_at(now: float) -> Iterator[Clock]:
    """Moves the records' time and the re-authentication clock together."""
    clock = Clock(now)
    with mock.patch.object(timeutil, "time", clock):
        yield clock


def make_user(username: str, password: str) -> Any:
    return get_user_model().objects.create_user(username, f"{username}@example.com", password)


def login(client: Client, username: str = "alice", password: str = PASSWORD) -> str:
    """Log in through Django's ``LoginView``; the new session key."""
    response = client.post(LOGIN, {"username": username, "password": password})
    assert response.status_code == 302, response.status_code
    return client.cookies[COOKIE].value


def store(key: str | None = None) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def stored_data(key: str) -> dict[str, Any]:
    return dict(store(key).load())


def post_reauth(
    client: Client, password: str = PASSWORD, next_url: str | None = "/sensitive/"
) -> Any:
    url = REAUTH if next_url is None else f"{REAUTH}?next={next_url}"
    return client.post(url, {"password": password})


def stranger(key: str) -> Client:
    """A client that presents ``key`` as its session cookie."""
    client = Client()
    client.cookies[COOKIE] = key
    return client


def expect_reauth_redirect(response: Any, next_url: str) -> None:
    assert response.status_code == 302, response.status_code
    expected = f"{REAUTH}?next={quote(next_url, safe='/')}"
    assert response["Location"] == expected, response["Location"]
