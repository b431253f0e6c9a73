"""When did the session's user last prove who they are? ("sudo mode")

The time lives in the session data under :data:`SESSION_KEY`, as whole seconds since
the epoch (an ``int``): a plain data key, so records written by this release stay
readable by the one before it during a rolling deploy, and it travels with the data
through ``cycle_key()`` on every engine. It is written by server code only: at login
(Django's ``user_logged_in`` signal, connected in the app's ``ready()``; ``login()``
rotates the key before it sends the signal, so the time lands in the new session) and
by :class:`hardened_sessions.views.ReauthView` after a successful re-authentication.

:func:`needs_reauth` decides; :func:`reauth_redirect` / :func:`areauth_redirect` are
what ``@reauth_required`` and ``ReauthRequiredMixin`` answer with. Time is read
through ``hardened_sessions.timeutil.now()``, once per decision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import resolve_url

from . import timeutil
from .conf import get_config

__all__ = [
    "CLOCK_SKEW_TOLERANCE",
    "DEFAULT_REAUTH_URL",
    "SESSION_KEY",
    "aauthenticated_at",
    "amark_authenticated",
    "areauth_redirect",
    "authenticated_at",
    "check_max_age",
    "mark_authenticated",
    "needs_reauth",
    "reauth_redirect",
    "record_login",
    "redirect_with_next",
]

#: The reserved session data key: epoch seconds (``int``) of the last proof.
SESSION_KEY = "_hs_authenticated_at"

#: Seconds a proof may be dated ahead of this server's clock and still count (the
#: clocks of several servers differ a little). Beyond that the proof is stale: a proof
#: written by a clock that ran ahead would otherwise stay "fresh" until this clock
#: caught up with it, and a clock that jumped back would stretch every proof.
CLOCK_SKEW_TOLERANCE = 5

DEFAULT_REAUTH_URL = "hardened_sessions:reauth"


def _seconds(value: Any) -> int | None:
    # Only what mark_authenticated() writes counts; anything else is no proof.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _as_datetime(seconds: int | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def authenticated_at(request: HttpRequest) -> datetime | None:
    """When the session's user last proved who they are (aware, UTC); ``None`` when the
    session records no proof (no session, or one from before this feature)."""
    session = getattr(request, "session", None)
    if session is None:
        return None
    return _as_datetime(_seconds(session.get(SESSION_KEY)))


async def aauthenticated_at(request: HttpRequest) -> datetime | None:
    """The async twin of :func:`authenticated_at` (through the session's ``aget``)."""
    session = getattr(request, "session", None)
    if session is None:
        return None
    return _as_datetime(_seconds(await session.aget(SESSION_KEY)))


def mark_authenticated(request: HttpRequest) -> None:
    """Record that the user proved who they are now.

    Call it only after the proof, and after the session key was rotated (a proof must not
    be attached to a key that existed before it: see ``ReauthView``)."""
    request.session[SESSION_KEY] = int(timeutil.now())


async def amark_authenticated(request: HttpRequest) -> None:
    """The async twin of :func:`mark_authenticated` (through the session's ``aset``)."""
    await request.session.aset(SESSION_KEY, int(timeutil.now()))


def record_login(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """``user_logged_in`` receiver: a login is a proof. Code that sends the signal without
    a request, or with a request that has no session, records nothing."""
    if request is not None and getattr(request, "session", None) is not None:
        mark_authenticated(request)


def check_max_age(max_age: Any) -> int | None:
    """``max_age`` if it is ``None`` or a positive whole number of seconds; else ``TypeError``."""
    if max_age is None:
        return None
    if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 1:
        raise TypeError(f"max_age must be None or a positive number of seconds, not {max_age!r}")
    return max_age


def needs_reauth(seconds: Any, max_age: int | None = None, now: float | None = None) -> bool:
    """True unless ``seconds`` (a stored proof time) is younger than ``max_age``.

    Stale when ``now - seconds >= max_age`` (the proof time is whole seconds, rounded
    down, so a proof may count up to one second older than it is, never younger); when
    no proof is recorded; and when the proof is dated more than
    :data:`CLOCK_SKEW_TOLERANCE` seconds in the future."""
    proof = _seconds(seconds)
    if proof is None:
        return True
    limit = get_config().reauth_max_age if max_age is None else max_age
    age = (timeutil.now() if now is None else now) - proof
    return age >= limit or age < -CLOCK_SKEW_TOLERANCE


def redirect_with_next(
    request: HttpRequest, url: Any, next_url: str | None = None
) -> HttpResponseRedirect:
    """Redirect to ``url`` (anything ``resolve_url`` takes) with ``?next=`` the current
    URL (or ``next_url``, a URL of this site), as ``login_required`` does: a path when
    ``url`` is on this scheme and host, else the absolute URL."""
    resolved = resolve_url(url)
    target = next_url or request.get_full_path()
    absolute = request.build_absolute_uri(target)
    scheme, netloc = urlsplit(resolved)[:2]
    current_scheme, current_netloc = urlsplit(absolute)[:2]
    if not ((not scheme or scheme == current_scheme) and (not netloc or netloc == current_netloc)):
        target = absolute
    from django.contrib.auth.views import redirect_to_login

    return redirect_to_login(target, resolved)


def _reauth_url() -> str:
    return get_config().reauth_url or DEFAULT_REAUTH_URL


def _answer(request: HttpRequest, user: Any, proof: Any, max_age: int | None) -> Any:
    if not user.is_authenticated:
        return redirect_with_next(request, settings.LOGIN_URL)
    if needs_reauth(proof, max_age):
        return redirect_with_next(request, _reauth_url())
    return None


def reauth_redirect(
    request: HttpRequest, max_age: int | None = None
) -> HttpResponseRedirect | None:
    """The redirect a sensitive view must answer with, or ``None`` to let it run.

    Anonymous users go to ``settings.LOGIN_URL``; users whose proof is missing or older
    than ``max_age`` (default: ``HARDENED_SESSIONS["REAUTH_MAX_AGE"]``) go to the
    re-authentication view (``HARDENED_SESSIONS["REAUTH_URL"]``), both with ``?next=``."""
    user = request.user
    proof = request.session.get(SESSION_KEY) if user.is_authenticated else None
    response: HttpResponseRedirect | None = _answer(request, user, proof, max_age)
    return response


async def areauth_redirect(
    request: HttpRequest, max_age: int | None = None
) -> HttpResponseRedirect | None:
    """The async twin of :func:`reauth_redirect`."""
    user = await request.auser()
    proof = await request.session.aget(SESSION_KEY) if user.is_authenticated else None
    response: HttpResponseRedirect | None = _answer(request, user, proof, max_age)
    return response
