"""Pages of the demo site. They use the session only through Django's public API."""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import LoginView, LogoutView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_http_methods

from demo.forms import GrowForm

STARTED_KEY = "demo.started"
FILLER_PREFIX = "demo.filler."


def key_prefix(session_key: str | None) -> str:
    """The first 6 characters of a session key: enough to tell two keys apart, never
    enough to use one. The full key is never shown."""
    return f"{session_key[:6]}…" if session_key else "(none)"


def ensure_started(request: HttpRequest) -> None:
    """Put something in the session so that the visit has one to show."""
    if STARTED_KEY not in request.session:
        request.session[STARTED_KEY] = timezone.now().isoformat()


def restart_session_clock(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """At login the key is rotated and the session starts anew (user_logged_in)."""
    request.session[STARTED_KEY] = timezone.now().isoformat()


def session_size(request: HttpRequest) -> int:
    """Size of the session data as JSON: close to what the engine stores (the record
    adds a signature and a few timestamps)."""
    data = dict(request.session.items())
    return len(json.dumps(data, separators=(",", ":")).encode())


def filler_keys(request: HttpRequest) -> list[str]:
    return [key for key, _ in request.session.items() if key.startswith(FILLER_PREFIX)]


def home(request: HttpRequest) -> HttpResponse:
    ensure_started(request)
    started = parse_datetime(request.session[STARTED_KEY])
    context = {
        "key_prefix": key_prefix(request.session.session_key),
        "started": started,
        "engine": settings.SESSION_ENGINE,
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "cache": settings.CACHES.get("sessions", {}).get("BACKEND"),
        "hardened": settings.HARDENED_SESSIONS,
    }
    return render(request, "demo/home.html", context)


@require_http_methods(["GET", "POST"])
def grow(request: HttpRequest) -> HttpResponse:
    ensure_started(request)
    form = GrowForm()
    if request.method == "POST":
        if "clear" in request.POST:
            for key in filler_keys(request):
                del request.session[key]
            messages.info(request, "Filler removed.")
            return redirect("grow")
        form = GrowForm(request.POST)
        if form.is_valid():
            kib = form.cleaned_data["kib"]
            # Random text, so that every addition really changes what is stored.
            request.session[f"{FILLER_PREFIX}{len(filler_keys(request))}"] = secrets.token_hex(
                kib * 512
            )
            # The session is saved after this view returns: if the record is now over
            # MAX_BYTES, the middleware answers 400 and the stored session stays as it was.
            return redirect("grow")
    context = {
        "form": form,
        "size": session_size(request),
        "chunks": len(filler_keys(request)),
        "max_bytes": settings.HARDENED_SESSIONS["MAX_BYTES"],
    }
    return render(request, "demo/grow.html", context)


def cookie(request: HttpRequest) -> HttpResponse:
    ensure_started(request)
    flags = [
        ("SESSION_COOKIE_NAME", settings.SESSION_COOKIE_NAME),
        ("SESSION_COOKIE_HTTPONLY", settings.SESSION_COOKIE_HTTPONLY),
        ("SESSION_COOKIE_SECURE", settings.SESSION_COOKIE_SECURE),
        ("SESSION_COOKIE_SAMESITE", settings.SESSION_COOKIE_SAMESITE),
        ("SESSION_COOKIE_AGE", settings.SESSION_COOKIE_AGE),
        ("SESSION_COOKIE_PATH", settings.SESSION_COOKIE_PATH),
        ("SESSION_COOKIE_DOMAIN", settings.SESSION_COOKIE_DOMAIN),
        ("SESSION_EXPIRE_AT_BROWSER_CLOSE", settings.SESSION_EXPIRE_AT_BROWSER_CLOSE),
        ("CSRF_COOKIE_HTTPONLY", settings.CSRF_COOKIE_HTTPONLY),
    ]
    context = {
        "flags": flags,
        "received": sorted(request.COOKIES),
        "cookie_name": settings.SESSION_COOKIE_NAME,
    }
    return render(request, "demo/cookie.html", context)


class DemoLoginView(LoginView):
    """Django's login view, plus a message that shows the key rotation at login."""

    def form_valid(self, form: Any) -> HttpResponse:
        before = key_prefix(self.request.session.session_key)
        response = super().form_valid(form)
        after = key_prefix(self.request.session.session_key)
        messages.success(
            self.request,
            f"Logged in. The session key changed at login: {before} → {after}",
        )
        return response


class DemoLogoutView(LogoutView):
    """Django's logout view (POST only), plus a message naming the ended session."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        before = key_prefix(request.session.session_key)
        response = super().post(request, *args, **kwargs)
        messages.info(request, f"Logged out. Session {before} was deleted from the store.")
        return response
