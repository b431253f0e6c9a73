"""``HardenedSessionMiddleware``: Django's session middleware, failing closed.

Use it in place of ``django.contrib.sessions.middleware.SessionMiddleware``
(it is a subclass, so the admin's check admin.E410 is satisfied).

What it adds to Django's behaviour:

* a store failure met anywhere in the request (in the view, in another
  middleware, during the save) answers **503** with ``Retry-After``, the cookie
  left as it was; so does a key that cannot be drawn or a failed rotation
  (which also expires the cookie);
* a login refused by ``MAX_SESSIONS_PER_USER`` under ``MAX_SESSIONS_POLICY =
  "refuse"`` (``SessionLimitReached``) answers **409**, sets no session cookie and
  expires the one the browser sent;
* a record over ``MAX_BYTES`` answers **400** and is logged on
  ``django.security.SessionTooLarge``; a save of changed data into a session
  ended meanwhile answers **400** (``SessionInterrupted``), while a mere
  activity touch on such a session only expires the cookie;
* with ``IDLE_TIMEOUT``, activity is recorded at most every ``TOUCH_INTERVAL``
  (server side only: a touch sets no cookie);
* cookie ``max-age`` stops at the absolute deadline; ``SameSite=None`` forces
  ``Secure``; responses that set or delete the cookie become ``private``;
* a ``SESSION_COOKIE_NAME``, ``_PATH``, ``_DOMAIN`` or ``_SAMESITE`` that would inject
  or break a ``Set-Cookie`` attribute is refused with ``ImproperlyConfigured`` when the
  middleware is built (and before any cookie goes out), even with the system checks
  (``hardened_sessions.E101``-``E103``, ``E006``) silenced.

Over a session engine that is not hardened (Django's ``signed_cookies``, ``file``,
``cache``, ``db``, or a project's own engine on ``SessionBase``) the middleware is
Django's ``SessionMiddleware``, response for response; only the cookie settings are
still refused as above. The system check ``hardened_sessions.W201`` says so.

The 400, 409 and 503 bodies are plain text unless ``HARDENED_SESSIONS["FAILURE_VIEW"]``
names a view ``view(request, status, reason)`` that renders them (a view that raises
leaves the plain answer, and is logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeGuard, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.http import http_date
from django.utils.module_loading import import_string

from . import timeutil
from .backends.base import HardenedSessionBase
from .conf import cookie_settings, get_config
from .exceptions import (
    HardenedSessionError,
    SessionKeyUnavailable,
    SessionLimitReached,
    SessionRotationFailed,
    SessionStoreUnavailable,
    SessionTooLarge,
)

__all__ = ["RETRY_AFTER_SECONDS", "HardenedSessionMiddleware"]

logger = logging.getLogger("hardened_sessions")
RETRY_AFTER_SECONDS = 5

_CC_DELIMITER = re.compile(r"\s*,\s*")

REASON_UNAVAILABLE = "The session store is unavailable; please retry shortly."
REASON_KEY = "No secure session key could be issued; please retry shortly."
REASON_ROTATION = "The session could not be renewed; please sign in again shortly."
REASON_TOO_LARGE = "The session grew larger than this site allows."
REASON_SESSION_LIMIT = (
    "You are signed in on as many devices as this site allows. Sign out on another "
    "device, or end one of your other sessions there, then sign in again."
)
REASON_INTERRUPTED = (
    "The request's session was ended before the request completed "
    "(a logout in another tab, for example)."
)


def _cookie_kwargs() -> dict[str, Any]:
    cookie = cookie_settings()
    secure = cookie.secure
    if isinstance(cookie.samesite, str) and cookie.samesite.lower() == "none":
        # Browsers reject SameSite=None without Secure; never send that combination.
        secure = True
    return {
        "domain": cookie.domain,
        "path": cookie.path,
        "secure": secure or None,
        "httponly": cookie.httponly or None,
        "samesite": cookie.samesite,
    }


def _mark_private(response: HttpResponseBase) -> None:
    directives = {
        d.split("=", 1)[0].strip().lower()
        for d in _CC_DELIMITER.split(response.get("Cache-Control", ""))
        if d.strip()
    }
    if not directives & {"private", "no-store"}:
        patch_cache_control(response, private=True)


# The session of the request being handled, for code that has no request at hand
# (the password-change hook keeps the current session alive through it).
current_session: ContextVar[Any] = ContextVar("hardened_sessions_current", default=None)


def _hardened(session: Any) -> TypeGuard[HardenedSessionBase]:
    # Asked of the session object, not of SESSION_ENGINE: code that replaces
    # request.session decides which rules apply to what is saved.
    return isinstance(session, HardenedSessionBase)


class HardenedSessionMiddleware(SessionMiddleware):
    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        # Fail at start-up, not on the first response, when a cookie setting would put
        # another attribute into the header.
        cookie_settings()

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        session = request.session
        if not _hardened(session):
            current_session.set(None)
            return
        if get_config().device_metadata:
            session.device = {
                "ip": request.META.get("REMOTE_ADDR", ""),
                "user_agent": request.META.get("HTTP_USER_AGENT", ""),
            }
        current_session.set(session)

    # -- failure answers -------------------------------------------------------

    def failure_response(
        self, request: HttpRequest, status: int, reason: str, *, expire_cookie: bool = False
    ) -> HttpResponseBase:
        response = self._failure_page(request, status, reason)
        if status == 503:
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        patch_cache_control(response, no_store=True)
        patch_vary_headers(response, ("Cookie",))
        if expire_cookie:
            self._delete_cookie(response)
        response._hardened_session_answer = True  # type: ignore[attr-defined]
        return response

    def _failure_page(self, request: HttpRequest, status: int, reason: str) -> HttpResponseBase:
        """``FAILURE_VIEW``'s page, rendered (an answer made in ``process_response`` is
        not rendered by Django's handler); the plain answer when there is no such view or
        it fails (a broken template, one that reads ``request.user`` while the store is
        down): the status and headers of a failure answer never depend on that view."""
        view_path = get_config().failure_view
        if view_path:
            try:
                response: HttpResponseBase = import_string(view_path)(request, status, reason)
                render = getattr(response, "render", None)
                if callable(render) and not getattr(response, "is_rendered", True):
                    response = render() or response
                response.status_code = status
            except Exception:
                logger.exception(
                    "HARDENED_SESSIONS['FAILURE_VIEW'] (%s) failed; answering %s in plain text.",
                    view_path,
                    status,
                )
            else:
                return response
        return HttpResponse(reason, status=status, content_type="text/plain; charset=utf-8")

    def _answer(self, request: HttpRequest, exc: BaseException) -> HttpResponseBase | None:
        if isinstance(exc, SessionTooLarge):
            logging.getLogger("django.security.SessionTooLarge").warning(
                "Session not saved: %s bytes over the limit of %s.", exc.size, exc.limit
            )
            return self.failure_response(request, 400, REASON_TOO_LARGE)
        if isinstance(exc, SessionLimitReached):
            # MAX_SESSIONS_POLICY = "refuse": nothing was stored for this login, so the
            # browser's cookie (if any) names no session any more.
            return self.failure_response(
                request,
                409,
                REASON_SESSION_LIMIT,
                expire_cookie=cookie_settings().name in request.COOKIES,
            )
        if isinstance(exc, SessionRotationFailed):
            logger.error("Session rotation failed: %s", exc)
            return self.failure_response(request, 503, REASON_ROTATION, expire_cookie=True)
        if isinstance(exc, SessionKeyUnavailable):
            logger.error("No session key could be issued: %s", exc)
            return self.failure_response(request, 503, REASON_KEY)
        if isinstance(exc, SessionStoreUnavailable):
            logger.error("Session store unavailable: %s", exc)
            return self.failure_response(request, 503, REASON_UNAVAILABLE)
        if isinstance(exc, UpdateError):
            logging.getLogger("django.security.SessionInterrupted").info(REASON_INTERRUPTED)
            return self.failure_response(request, 400, REASON_INTERRUPTED)
        return None

    def _delete_cookie(self, response: HttpResponseBase) -> None:
        kwargs = _cookie_kwargs()
        response.delete_cookie(
            cookie_settings().name,
            path=kwargs["path"],
            domain=kwargs["domain"],
            samesite=kwargs["samesite"],
        )
        _mark_private(response)

    # -- middleware hooks ------------------------------------------------------

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        if isinstance(exception, HardenedSessionError | UpdateError) and _hardened(
            getattr(request, "session", None)
        ):
            return self._answer(request, exception)
        return None

    def _before_save(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> tuple[HardenedSessionBase | None, HttpResponseBase | None]:
        """The hardened session to save, or the response to return as it is."""
        current_session.set(None)
        session = getattr(request, "session", None)
        if session is None or not _hardened(session):
            return None, None
        if getattr(response, "_hardened_session_answer", False):
            return None, response
        if session.rotation_failed:
            return None, self._answer(request, SessionRotationFailed("rotation failed")) or response
        failure = session.store_failure
        if failure is not None:
            # Whatever turned the failure into a response (another middleware, a
            # handler), the answer is 503 and the cookie stays as it was.
            return None, self._answer(request, failure) or response
        return session, None

    def process_response(  # type: ignore[override]
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session, answer = self._before_save(request, response)
        if session is None:
            return answer or self._not_hardened(request, response)
        try:
            return self._save(request, response, session)
        except (HardenedSessionError, UpdateError) as exc:
            return self._answer(request, exc) or response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        """Under ASGI: the same hooks, with the session saved through its async API
        (natively, with no thread hop, on engines whose store has an async client)."""
        self.process_request(request)  # no store access: the session loads lazily
        # Django built this middleware async (its own __acall__ is used only then).
        response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
        session, answer = self._before_save(request, response)
        if session is None:
            if answer is not None:
                return answer
            return await sync_to_async(self._not_hardened)(request, response)
        try:
            return await self._asave(request, response, session)
        except (HardenedSessionError, UpdateError) as exc:
            return self._answer(request, exc) or response

    def _not_hardened(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if getattr(request, "session", None) is None:
            return response
        cookie_settings()  # refused settings never reach Django's set_cookie()
        # django-stubs narrow the response to HttpResponse; Django takes any.
        return super().process_response(request, response)  # type: ignore[arg-type]

    def _action(
        self, request: HttpRequest, response: HttpResponseBase, session: HardenedSessionBase
    ) -> tuple[str | None, bool]:
        """What the response needs from the store (``"save"``, ``"touch"`` or nothing),
        and whether it varies on the cookie so far. Read before any store access: a
        save marks the session accessed."""
        accessed = session.accessed
        modified = session.modified
        empty = session.is_empty()
        if cookie_settings().name in request.COOKIES and empty:
            self._delete_cookie(response)
            return None, True
        if (modified or settings.SESSION_SAVE_EVERY_REQUEST) and not empty:
            if response.status_code < 500:
                return "save", True
            return None, accessed
        if response.status_code < 500 and session.needs_touch():
            return "touch", accessed
        return None, accessed

    def _set_session_cookie(self, response: HttpResponseBase, session: HardenedSessionBase) -> None:
        if session.get_expire_at_browser_close():
            max_age = None
            expires = None
        else:
            max_age = session.cookie_max_age()
            expires = http_date(timeutil.now() + max_age)
        response.set_cookie(
            cookie_settings().name,
            cast(str, session.session_key),  # just saved: it has a key
            max_age=max_age,
            expires=expires,
            **_cookie_kwargs(),
        )
        _mark_private(response)

    def _save(
        self, request: HttpRequest, response: HttpResponseBase, session: HardenedSessionBase
    ) -> HttpResponseBase:
        action, vary = self._action(request, response, session)
        if action == "save":
            session.save()
            self._set_session_cookie(response, session)
        elif action == "touch":
            try:
                session.touch()
            except UpdateError:
                # Only activity was being recorded, and the session is gone: let the
                # browser forget the cookie, without failing the request.
                self._delete_cookie(response)
                vary = True
        if vary:
            patch_vary_headers(response, ("Cookie",))
        return response

    async def _asave(
        self, request: HttpRequest, response: HttpResponseBase, session: HardenedSessionBase
    ) -> HttpResponseBase:
        """:meth:`_save` through the session's async API."""
        action, vary = self._action(request, response, session)
        if action == "save":
            await session.asave()
            self._set_session_cookie(response, session)
        elif action == "touch":
            try:
                await session.atouch()
            except UpdateError:
                self._delete_cookie(response)
                vary = True
        if vary:
            patch_vary_headers(response, ("Cookie",))
        return response
