""" "Your sessions": the signed-in user's live sessions, and ending them.

``path("sessions/", include("hardened_sessions.urls"))`` serves:

- ``""`` (``hardened_sessions:sessions``): the list (device, created, last activity,
  expiry; this browser's session marked);
- ``<handle>/end/`` (``hardened_sessions:end-session``): GET asks for confirmation,
  POST ends that session;
- ``end-others/`` (``hardened_sessions:end-other-sessions``): GET asks, POST ends every
  session of the user but this browser's.

A session is named by its *handle*: the first 16 hex digits of the SHA-256 of its key,
the row id the admin shows (``hardened_sessions.admin.row_id``); the signals carry the
same digits (``key_hash_prefix``, ``session_handle``). A handle is never the key and cannot be turned into one. It is
looked up among the requesting user's own live sessions only: another user's handle,
an ended session's and one that never existed all get the same 404.

Ending this browser's own session from the list is logging out (``auth.logout``: the
session is flushed and ``user_logged_out`` is sent). Ending the others keeps this one
(``revoke_user_sessions(user, keep=...)``) and does not ask for a fresh proof of
identity: it only takes access away. A project that wants one wraps the view in
``hardened_sessions.decorators.reauth_required``.

Where the engine cannot list a user's sessions (the cache engine on memcached or Redis
Cluster, an engine of another package) every page answers 200 with a page that says so
(``hardened_sessions/sessions_unavailable.html``) and ends nothing.

The ``Async...`` views are the same pages for ASGI projects: their handlers are
coroutines that run the sync code in a thread (``sync_to_async``), because the
per-user helpers have no async versions yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import auth, messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render, resolve_url
from django.utils.decorators import method_decorator
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_deny
from django.views.decorators.csrf import csrf_protect

from . import keys
from .revoke import revoke_sessions, revoke_user_sessions, user_sessions
from .signals import Reason

__all__ = [
    "HANDLE_LENGTH",
    "AsyncEndOtherSessionsView",
    "AsyncEndSessionView",
    "AsyncSessionListView",
    "EndOtherSessionsView",
    "EndSessionView",
    "SessionEntry",
    "SessionListView",
    "handle_of",
]

# The admin's ROW_ID_LENGTH (hardened_sessions.admin), repeated here: importing the
# admin module needs django.contrib.admin installed, these pages do not.
# tests/test_sessions_pages.py checks that both name a session alike.
HANDLE_LENGTH = 16
_HEX = frozenset("0123456789abcdef")

# CSRF even where the middleware is not installed; never cached; never framed (a framed
# confirmation button is what clickjacking needs).
_DECORATORS = [csrf_protect, never_cache, xframe_options_deny]

LIST_TEMPLATE = "hardened_sessions/sessions_list.html"
CONFIRM_TEMPLATE = "hardened_sessions/session_confirm_end.html"
UNAVAILABLE_TEMPLATE = "hardened_sessions/sessions_unavailable.html"


def handle_of(store_key: str) -> str:
    """The handle of the session stored under ``key_hash``: the admin's row id."""
    return store_key[:HANDLE_LENGTH]


def _is_handle(value: object) -> bool:
    return isinstance(value, str) and len(value) == HANDLE_LENGTH and _HEX.issuperset(value)


@dataclass(frozen=True)
class SessionEntry:
    """One row of the list, as the templates see it. ``session`` is the
    ``HardenedSession`` instance (unsaved on the cache engine)."""

    handle: str
    current: bool
    created: datetime
    last_activity: datetime
    expires: datetime
    ip_address: str | None
    user_agent: str
    session: Any

    @property
    def known_device(self) -> bool:
        return bool(self.ip_address or self.user_agent)


def _current_hash(request: HttpRequest) -> str | None:
    key = request.session.session_key
    return keys.store_key(key) if key and keys.is_well_formed(key) else None


def _entries(request: HttpRequest) -> list[SessionEntry]:
    """The user's live sessions; ``NotImplementedError`` where they cannot be listed."""
    current = _current_hash(request)
    return [
        SessionEntry(
            handle=handle_of(row.key_hash),
            current=row.key_hash == current,
            created=row.created,
            last_activity=row.last_activity,
            expires=row.expire_date,
            ip_address=getattr(row, "ip_address", None) or None,
            user_agent=getattr(row, "user_agent", "") or "",
            session=row,
        )
        for row in user_sessions(request.user)
    ]


def _unavailable(request: HttpRequest, exc: NotImplementedError) -> HttpResponse:
    context = {"reason": str(exc), "engine": settings.SESSION_ENGINE}
    return render(request, UNAVAILABLE_TEMPLATE, context)


def _message(request: HttpRequest, level: int, text: str) -> None:
    # fail_silently: a project without django.contrib.messages still gets the pages.
    messages.add_message(request, level, text, fail_silently=True)


def _find(entries: list[SessionEntry], handle: str) -> SessionEntry:
    """The entry named ``handle``; the same 404 for a malformed handle, another user's
    session, an ended one and one that never existed."""
    if _is_handle(handle):
        for entry in entries:
            if entry.handle == handle:
                return entry
    raise Http404("No such session.")


# --- the pages, sync ---------------------------------------------------------------------


def session_list(request: HttpRequest) -> HttpResponse:
    try:
        entries = _entries(request)
    except NotImplementedError as exc:
        return _unavailable(request, exc)
    context = {
        "sessions": entries,
        "others": sum(not entry.current for entry in entries),
    }
    return render(request, LIST_TEMPLATE, context)


def end_session(request: HttpRequest, handle: str) -> HttpResponse:
    try:
        entries = _entries(request)
    except NotImplementedError as exc:
        return _unavailable(request, exc)
    entry = _find(entries, handle)
    if request.method != "POST":
        return render(request, CONFIRM_TEMPLATE, {"session": entry, "others": False})
    if entry.current:
        # This browser's own session: ending it is logging out.
        auth.logout(request)
        _message(request, messages.INFO, _("You ended this browser's session: signed out."))
        return redirect(resolve_url(settings.LOGIN_URL))
    store_key = entry.session.key_hash
    ended = revoke_sessions(
        [store_key], reason=Reason.USER, user_ids={store_key: str(request.user.pk)}
    )
    if ended:
        _message(request, messages.SUCCESS, _("Session %(handle)s ended.") % {"handle": handle})
    else:
        _message(request, messages.INFO, _("That session had already ended."))
    return redirect("hardened_sessions:sessions")


def end_other_sessions(request: HttpRequest) -> HttpResponse:
    try:
        entries = _entries(request)
    except NotImplementedError as exc:
        return _unavailable(request, exc)
    if request.method != "POST":
        context = {"others": sum(not entry.current for entry in entries), "session": None}
        return render(request, CONFIRM_TEMPLATE, context)
    try:
        ended = revoke_user_sessions(
            request.user, keep=request.session.session_key, reason=Reason.USER
        )
    except NotImplementedError as exc:
        return _unavailable(request, exc)
    _message(
        request,
        messages.SUCCESS,
        ngettext("Ended %(count)d other session.", "Ended %(count)d other sessions.", ended)
        % {"count": ended},
    )
    return redirect("hardened_sessions:sessions")


def _signed_in(page: Callable[..., HttpResponse]) -> Callable[..., HttpResponseBase]:
    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return page(request, *args, **kwargs)

    return view


# --- class-based views ---------------------------------------------------------------------


@method_decorator(_DECORATORS, "dispatch")
class SessionListView(View):
    http_method_names = ["get", "head", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return _signed_in(session_list)(request)


@method_decorator(_DECORATORS, "dispatch")
class EndSessionView(View):
    """GET: the confirmation page; POST: end the session named by ``handle``."""

    http_method_names = ["get", "post", "head", "options"]

    def get(self, request: HttpRequest, handle: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return _signed_in(end_session)(request, handle)

    def post(
        self, request: HttpRequest, handle: str, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        return _signed_in(end_session)(request, handle)


@method_decorator(_DECORATORS, "dispatch")
class EndOtherSessionsView(View):
    """GET: the confirmation page; POST: end every session of the user but this one."""

    http_method_names = ["get", "post", "head", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return _signed_in(end_other_sessions)(request)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return _signed_in(end_other_sessions)(request)


# Decorated per handler: the handlers are coroutines, ``dispatch`` is not.
@method_decorator(_DECORATORS, "get")
class AsyncSessionListView(View):
    http_method_names = ["get", "head", "options"]

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return await sync_to_async(_signed_in(session_list))(request)


@method_decorator(_DECORATORS, "get")
@method_decorator(_DECORATORS, "post")
class AsyncEndSessionView(View):
    http_method_names = ["get", "post", "head", "options"]

    async def get(
        self, request: HttpRequest, handle: str, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        return await sync_to_async(_signed_in(end_session))(request, handle)

    async def post(
        self, request: HttpRequest, handle: str, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        return await sync_to_async(_signed_in(end_session))(request, handle)


@method_decorator(_DECORATORS, "get")
@method_decorator(_DECORATORS, "post")
class AsyncEndOtherSessionsView(View):
    http_method_names = ["get", "post", "head", "options"]

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return await sync_to_async(_signed_in(end_other_sessions))(request)

    async def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return await sync_to_async(_signed_in(end_other_sessions))(request)
