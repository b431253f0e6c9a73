"""System checks on Django's ``SESSION_COOKIE_*`` settings.

* ``hardened_sessions.E101``–``E104`` and ``E006``: a cookie name, path, domain, age or
  ``SameSite`` value that would inject or break a ``Set-Cookie`` attribute, crash the
  response or make every session dead on arrival (:mod:`hardened_sessions.conf_cookie`
  finds them; the middleware refuses E101–E103 and E006 at run time too);
* ``hardened_sessions.E004``, ``E005``: a ``__Host-`` or ``__Secure-`` cookie name
  without the attributes browsers require of it;
* ``hardened_sessions.W010``, ``W013`` (``check --deploy``): the cookie without
  ``Secure`` or ``HttpOnly``.

:mod:`hardened_sessions.checks` registers the checks.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .conf import cookie_problems

__all__ = ["cookie_checks", "cookie_deploy_checks"]


def cookie_checks() -> list[CheckMessage]:
    """E101–E104, E006, and E004/E005 once the name is a cookie name."""
    problems = cookie_problems()
    messages: list[CheckMessage] = [Error(p.msg, hint=p.hint, id=p.id) for p in problems]
    if not any(p.id == "hardened_sessions.E101" for p in problems):
        messages.extend(_cookie_name_checks())
    return messages


def _cookie_name_checks() -> list[CheckMessage]:
    name = settings.SESSION_COOKIE_NAME
    # Browsers match the prefixes case-insensitively (RFC 6265bis).
    lowered = name.lower()
    secure = bool(settings.SESSION_COOKIE_SECURE)
    messages: list[CheckMessage] = []
    if lowered.startswith("__host-"):
        if not secure or settings.SESSION_COOKIE_DOMAIN or settings.SESSION_COOKIE_PATH != "/":
            messages.append(
                Error(
                    f"SESSION_COOKIE_NAME {name!r} uses the __Host- prefix, which browsers "
                    "only accept with Secure, no Domain and Path=/.",
                    hint="Set SESSION_COOKIE_SECURE = True, SESSION_COOKIE_DOMAIN = None and "
                    "SESSION_COOKIE_PATH = '/'.",
                    id="hardened_sessions.E004",
                )
            )
    elif lowered.startswith("__secure-") and not secure:
        messages.append(
            Error(
                f"SESSION_COOKIE_NAME {name!r} uses the __Secure- prefix, which browsers only "
                "accept with Secure.",
                hint="Set SESSION_COOKIE_SECURE = True.",
                id="hardened_sessions.E005",
            )
        )
    return messages


def cookie_deploy_checks() -> list[CheckMessage]:
    """W010 and W013: the cookie's ``Secure`` and ``HttpOnly``."""
    messages: list[CheckMessage] = []
    if settings.SESSION_COOKIE_SECURE is not True:
        messages.append(
            Warning(
                "SESSION_COOKIE_SECURE is not True: the session cookie can travel over plain "
                "HTTP, where anyone on the path can steal the session.",
                hint="Set SESSION_COOKIE_SECURE = True (and serve the site over HTTPS).",
                id="hardened_sessions.W010",
            )
        )
    if settings.SESSION_COOKIE_HTTPONLY is not True:
        messages.append(
            Warning(
                "SESSION_COOKIE_HTTPONLY is not True: scripts on the page (an XSS) can read "
                "the session cookie.",
                hint="Set SESSION_COOKIE_HTTPONLY = True.",
                id="hardened_sessions.W013",
            )
        )
    return messages
