"""Pages of the demo site. They use the session only through Django's public API."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
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
from hardened_sessions import keys
from hardened_sessions.conf import get_config
from hardened_sessions.decorators import reauth_required
from hardened_sessions.reauth import authenticated_at
from hardened_sessions.views_sessions import handle_of

STARTED_KEY = "demo.started"
FILLER_PREFIX = "demo.filler."


def session_id(session_key: str | None) -> str:
    """How every page names a session: the first 16 hex digits of the SHA-256 of its
    key, the row id of the admin and the handle of "Your sessions". The key itself, or
    any part of it, is never shown."""
    if not session_key or not keys.is_well_formed(session_key):
        return "(none)"
    return handle_of(keys.store_key(session_key))


def ensure_started(request: HttpRequest) -> None:
    """Put something in the session so that the visit has one to show."""
    if STARTED_KEY not in request.session:
        request.session[STARTED_KEY] = timezone.now().isoformat()


def restart_session_clock(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """At login the key is rotated and the session starts anew (user_logged_in)."""
    request.session[STARTED_KEY] = timezone.now().isoformat()


def notice_new_device(
    sender: Any, user: Any, request: HttpRequest, session_handle: str, **kwargs: Any
) -> None:
    """``session_new_device``: a notice on the next page. A real site would e-mail the
    account's owner too, since the one reading this page may be who signed in."""
    messages.warning(
        request,
        f"New sign-in to {user.get_username()} from a device none of its other sessions "
        f"has (session {session_handle}). Not you? End it under Your sessions.",
        extra_tags="new-device",
    )


def session_size(request: HttpRequest) -> int:
    """Size of the session data as JSON: close to what the engine stores (the record
    adds a signature and a few timestamps)."""
    data = dict(request.session.items())
    return len(json.dumps(data, separators=(",", ":")).encode())


def filler_keys(request: HttpRequest) -> list[str]:
    return [key for key, _ in request.session.items() if key.startswith(FILLER_PREFIX)]


def record_created(request: HttpRequest) -> datetime | None:
    """When the stored record says this session was created (restarted at login), or
    ``None`` while nothing is stored yet."""
    record = getattr(request.session, "record", None)
    created = getattr(record, "created", None)
    return datetime.fromtimestamp(created, tz=UTC) if created is not None else None


def home(request: HttpRequest) -> HttpResponse:
    ensure_started(request)
    started = parse_datetime(request.session[STARTED_KEY])
    context = {
        "session_id": session_id(request.session.session_key),
        "started": started,
        "record_created": record_created(request),
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
    # What this response's Set-Cookie carries: the expiry age cut at the absolute
    # timeout (not SESSION_COOKIE_AGE). Until a record is stored (a new visit) the
    # absolute deadline is not known yet: reload.
    session: Any = request.session
    stored = getattr(session, "record", None) is not None
    max_age = session.cookie_max_age() if stored else None
    context = {
        "flags": flags,
        "received": sorted(request.COOKIES),
        "cookie_name": settings.SESSION_COOKIE_NAME,
        "max_age": max_age,
        "cookie_expires": timezone.now() + timedelta(seconds=max_age) if stored else None,
        "browser_close": session.get_expire_at_browser_close(),
    }
    return render(request, "demo/cookie.html", context)


def session_failure(request: HttpRequest, status: int, reason: str) -> HttpResponse:
    """``HARDENED_SESSIONS["FAILURE_VIEW"]``: the middleware's 400 and 503 answers as a
    page of the site, with a way back. The status is the middleware's."""
    context = {"status": status, "reason": reason, "too_large": status == 400}
    return render(request, "demo/failure.html", context, status=status)


@reauth_required
def sensitive(request: HttpRequest) -> HttpResponse:
    """A page that stands for a sensitive action (change e-mail, delete the account):
    it needs a proof of identity younger than ``REAUTH_MAX_AGE``."""
    proved = authenticated_at(request)
    max_age = get_config().reauth_max_age
    left = None
    if proved is not None:
        left = max(0, int(max_age - (timezone.now() - proved).total_seconds()))
    context = {
        "proved": proved,
        "max_age": max_age,
        "left": left,
        "session_id": session_id(request.session.session_key),
    }
    return render(request, "demo/sensitive.html", context)


class DemoLoginView(LoginView):
    """Django's login view, plus a message that shows the key rotation at login."""

    def form_valid(self, form: Any) -> HttpResponse:
        before = session_id(self.request.session.session_key)
        response = super().form_valid(form)
        after = session_id(self.request.session.session_key)
        messages.success(
            self.request,
            f"Logged in. A new session replaced the old one at login: {before} → {after}",
        )
        return response


class DemoLogoutView(LogoutView):
    """Django's logout view (POST only), plus a message naming the ended session."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        before = session_id(request.session.session_key)
        response = super().post(request, *args, **kwargs)
        messages.info(request, f"Logged out. Session {before} was deleted from the store.")
        return response
