"""Views, URLconf and helpers for the HTTP tests of ``HardenedSessionMiddleware``.

Used with ``override_settings(ROOT_URLCONF="tests.support.views_http")`` by
``test_http_cookie``, ``test_threat_session_fixation`` and ``test_threat_store_outage``.
Every view is tiny and says what it does to the session, so that a test reads as
"this request did X to the session; the response must look like Y".
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.cookies import Morsel, SimpleCookie
from typing import Any

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.views import LoginView, LogoutView, PasswordChangeView
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import path

from hardened_sessions.exceptions import SessionRotationFailed, SessionStoreUnavailable
from hardened_sessions.models import HardenedSession

URLCONF = __name__

# Called by the views that act "in the middle of the request" (between reading and
# writing the session): tests replace it with monkeypatch, e.g. to revoke the session
# from another SessionStore or to cut the connection to the store.
during_view: Callable[[], None] = lambda: None  # noqa: E731

# What the last request's views observed (store failures they caught, ...).
observed: dict[str, Any] = {}


# --- views --------------------------------------------------------------------------


def _text(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


def set_value(request: HttpRequest) -> HttpResponse:
    """Write ``key`` = ``value`` (or ``size`` characters) into the session."""
    key = request.GET.get("key", "n")
    value = "x" * int(request.GET["size"]) if "size" in request.GET else request.GET.get("value")
    request.session[key] = value
    return _text("set")


def read_value(request: HttpRequest) -> HttpResponse:
    """Only read the session."""
    return _text(json.dumps(request.session.get(request.GET.get("key", "n"))))


def untouched(request: HttpRequest) -> HttpResponse:
    """Never look at the session."""
    return _text("untouched")


def whoami(request: HttpRequest) -> HttpResponse:
    """What the session says about the user (reads the session through ``request.user``)."""
    user = request.user
    return _text(
        json.dumps(
            {
                "authenticated": user.is_authenticated,
                "username": user.get_username() if user.is_authenticated else None,
                "keys": sorted(request.session.keys()),
            }
        )
    )


def set_with_cache_control(request: HttpRequest) -> HttpResponse:
    """Write into the session and answer with the ``Cache-Control`` given in ``cc``."""
    request.session["n"] = "cached?"
    response = _text("set")
    if request.GET.get("cc"):
        response["Cache-Control"] = request.GET["cc"]
    return response


def flush(request: HttpRequest) -> HttpResponse:
    """End the session the way Django's ``logout()`` does, answering 200."""
    logout(request)
    return _text("flushed")


def set_then_500(request: HttpRequest) -> HttpResponse:
    """Change the session, then answer 500 (a view's own error page)."""
    request.session["n"] = "from a failed request"
    return _text("broken", status=500)


def set_then_raise(request: HttpRequest) -> HttpResponse:
    """Change the session, then crash."""
    request.session["n"] = "from a crashed request"
    raise RuntimeError("view crashed after writing to the session")


def save_explicitly(request: HttpRequest) -> HttpResponse:
    """Write ``size`` characters and save right away, inside the view."""
    request.session["blob"] = "x" * int(request.GET["size"])
    request.session.save()
    return _text("saved")


def read_act_write(request: HttpRequest) -> HttpResponse:
    """Read the session, run ``during_view()``, then write to it if ``write`` is set."""
    value = request.session.get("n")
    during_view()
    if request.GET.get("write"):
        request.session["n"] = "changed by this request"
    return _text(json.dumps(value))


def read_user_five_times(request: HttpRequest) -> HttpResponse:
    """Look at ``request.user`` five times, swallowing every store failure."""
    failures = 0
    for _ in range(5):
        try:
            request.user.is_authenticated  # noqa: B018 -- the access is the point
        except SessionStoreUnavailable:
            failures += 1
    observed["failures"] = failures
    return _text(f"{failures} failures swallowed")


def read_and_swallow(request: HttpRequest) -> HttpResponse:
    """Read the session and pretend nothing happened when the store fails."""
    try:
        request.session.get("n")
    except SessionStoreUnavailable:
        return _text("swallowed by the view")
    return _text("read")


def cycle_and_swallow(request: HttpRequest) -> HttpResponse:
    """Rotate the key and pretend nothing happened when the rotation fails."""
    try:
        request.session.cycle_key()
    except SessionRotationFailed:
        return _text("rotation failure swallowed by the view")
    return _text("rotated")


def read_then_login(request: HttpRequest) -> HttpResponseBase:
    """Read the session, run ``during_view()``, then hand over to Django's LoginView."""
    request.session.get("n")
    during_view()
    return login_view(request)


def failure_view(request: HttpRequest, status: int, reason: str) -> HttpResponse:
    """A ``FAILURE_VIEW``: answers 200 on purpose, the middleware must force the status."""
    return _text(f"custom failure page: {status}: {reason}", status=200)


login_view = LoginView.as_view()

urlpatterns = [
    path("set/", set_value),
    path("read/", read_value),
    path("untouched/", untouched),
    path("whoami/", whoami),
    path("cache-control/", set_with_cache_control),
    path("flush/", flush),
    path("set-then-500/", set_then_500),
    path("set-then-raise/", set_then_raise),
    path("save-explicitly/", save_explicitly),
    path("read-act-write/", read_act_write),
    path("read-user-five-times/", read_user_five_times),
    path("read-and-swallow/", read_and_swallow),
    path("cycle-and-swallow/", cycle_and_swallow),
    path("read-then-login/", read_then_login),
    path("login/", login_view),
    path("logout/", LogoutView.as_view(next_page="/done/")),
    path("password-change/", PasswordChangeView.as_view(success_url="/done/")),
]


# --- middleware that turns failures into responses of its own -------------------------


class SwallowingReaderMiddleware:
    """Reads the session before the view and answers 200 itself when the store fails."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            request.session.get("n")
        except SessionStoreUnavailable:
            return _text("swallowed by a middleware")
        return self.get_response(request)


class SessionReadingMiddleware:
    """Reads the session before the view, catching nothing (Django's handler answers 500)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.session.get("n")
        return self.get_response(request)


class SwallowingExceptionMiddleware:
    """Turns any exception of the view into a 200 (sits inside the session middleware)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse:
        return _text(f"swallowed {type(exception).__name__} in process_exception")


SESSION_MIDDLEWARE = "hardened_sessions.middleware.HardenedSessionMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


# --- helpers for assertions ------------------------------------------------------------


def set_cookie_headers(response: HttpResponseBase) -> list[str]:
    """The ``Set-Cookie`` header values exactly as the WSGI handler emits them."""
    return [morsel.output(header="").strip() for morsel in response.cookies.values()]


def session_cookie(response: HttpResponseBase) -> Morsel[str] | None:
    """The session cookie set by ``response``, parsed back with ``http.cookies``."""
    name = settings.SESSION_COOKIE_NAME
    found = None
    for header in set_cookie_headers(response):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if name in jar:
            assert found is None, f"two Set-Cookie headers for {name}"
            found = jar[name]
    return found


def assert_cookie_expired(response: HttpResponseBase) -> Morsel[str]:
    morsel = session_cookie(response)
    assert morsel is not None, "the session cookie was not expired"
    assert morsel.value == ""
    assert morsel["max-age"] == "0"
    assert morsel["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    return morsel


def cache_control(response: HttpResponseBase) -> dict[str, str | None]:
    """The ``Cache-Control`` directives of ``response`` (lower-cased names)."""
    directives: dict[str, str | None] = {}
    for part in response.get("Cache-Control", "").split(","):
        if part.strip():
            name, _, value = part.strip().partition("=")
            directives[name.lower()] = value or None
    return directives


def varies_on_cookie(response: HttpResponseBase) -> bool:
    return "cookie" in {v.strip().lower() for v in response.get("Vary", "").split(",")}


def store_key(session_key: str) -> str:
    """What a session is stored under (docs/design.rst: the SHA-256 hex digest of its key)."""
    return hashlib.sha256(session_key.encode("ascii")).hexdigest()


def session_row(session_key: str, alias: str) -> HardenedSession | None:
    return HardenedSession.objects.using(alias).filter(pk=store_key(session_key)).first()


def row_count(alias: str) -> int:
    return HardenedSession.objects.using(alias).count()


@contextmanager
def clock_shifted(seconds: float) -> Iterator[None]:
    """Make ``time.time()`` run ``seconds`` ahead (negative: behind) of the real clock."""
    real = time.time
    time.time = lambda: real() + seconds
    try:
        yield
    finally:
        time.time = real
