"""Django's ``SESSION_COOKIE_*`` settings, checked before they reach a ``Set-Cookie`` header.

They end up verbatim in the header, so :func:`cookie_problems` checks that each can
only mean what it says (RFC 6265): the name (``hardened_sessions.E101``), the path
(E102), the domain (E103), ``SameSite`` (E006) and the age (E104). The system checks
report every problem; :func:`cookie_settings` refuses those that would inject or break
an attribute at run time too, even when the checks were silenced, and caches the
settings until a ``setting_changed`` signal says otherwise.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf_validate import MAX_TIMEOUT, is_int

__all__ = [
    "MAX_ATTRIBUTE_LENGTH",
    "RUNTIME_COOKIE_CHECKS",
    "CookieProblem",
    "CookieSettings",
    "cookie_problems",
    "cookie_settings",
]


# RFC 6265 section 4.1.1: cookie-name is an RFC 2616 token, i.e. visible US-ASCII except
# the separators. (Python's http.cookies also takes ":", which is a separator.)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# path-value is any CHAR except CTLs and ";" (RFC 6265 section 4.1.1). Narrower here, on
# purpose: a space, '"' and '\' make Python's own cookie parser drop the attribute or
# the whole cookie, and "," is where parsers that split a folded Set-Cookie header cut
# it. A browser ignores a Path that does not start with "/" (section 5.2.4).
_PATH = re.compile(r"/[!#$%&'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]*")
# A host name: dot-separated labels of letters, digits and "-" (not at either end of a
# label), optionally after a leading "." (ignored by browsers, section 5.2.3).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"\.?{_LABEL}(?:\.{_LABEL})*")
_SAMESITE = ("lax", "strict", "none")
# Cookie attribute names: Python's cookie library refuses them as a cookie's name
# (``http.cookies.Morsel``; "partitioned" since Python 3.14), so every response that sets
# the cookie would raise.
_ATTRIBUTE_NAMES = frozenset(
    {
        "comment",
        "domain",
        "expires",
        "httponly",
        "max-age",
        "partitioned",
        "path",
        "samesite",
        "secure",
        "version",
    }
)
# RFC 6265bis: user agents ignore a cookie whose attribute value is longer than this.
MAX_ATTRIBUTE_LENGTH = 1024


@dataclass(frozen=True)
class CookieProblem:
    """One bad ``SESSION_COOKIE_*`` setting: the check id it is reported under."""

    id: str
    msg: str
    hint: str


def cookie_problems() -> list[CookieProblem]:
    """Problems of ``SESSION_COOKIE_NAME``, ``_PATH``, ``_DOMAIN``, ``_SAMESITE`` and
    ``_AGE``: values that would inject or break a ``Set-Cookie`` attribute, crash the
    response, or make every session dead on arrival."""
    problems = []
    name = settings.SESSION_COOKIE_NAME
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or name.lower() in _ATTRIBUTE_NAMES:
        problems.append(
            CookieProblem(
                "hardened_sessions.E101",
                f"SESSION_COOKIE_NAME is {name!r}, which is not a cookie name: it must be "
                "letters, digits and !#$%&'*+-.^_`|~ only (an RFC 2616 token), and not "
                "the name of a cookie attribute.",
                'Spaces, control characters, non-ASCII and ()<>@,;:\\"/[]?={} would '
                "break or extend the Set-Cookie header; an attribute's name (Path, "
                "Expires, Secure, ...) makes Python's cookie library refuse the cookie.",
            )
        )
    path = settings.SESSION_COOKIE_PATH
    if not isinstance(path, str) or not _PATH.fullmatch(path) or len(path) > MAX_ATTRIBUTE_LENGTH:
        problems.append(
            CookieProblem(
                "hardened_sessions.E102",
                f"SESSION_COOKIE_PATH is {path!r}, which cannot be a cookie's Path: it must "
                "start with '/' and hold no ';', ',', space, quote, backslash, control or "
                f"non-ASCII character, in at most {MAX_ATTRIBUTE_LENGTH} characters.",
                "Percent-encode such characters as the URLs do (e.g. %20), or set '/'.",
            )
        )
    domain = settings.SESSION_COOKIE_DOMAIN
    if (
        domain is not None
        and domain != ""
        and (not isinstance(domain, str) or not _DOMAIN.fullmatch(domain) or len(domain) > 253)
    ):
        problems.append(
            CookieProblem(
                "hardened_sessions.E103",
                f"SESSION_COOKIE_DOMAIN is {domain!r}, which is not a host name: it must be "
                "labels of letters, digits and '-' separated by dots (a leading dot is "
                "allowed).",
                "Use None (the cookie then goes to the exact host only), or a name such as "
                "'example.com'; write international names in their xn-- (punycode) form.",
            )
        )
    samesite = settings.SESSION_COOKIE_SAMESITE
    # False, or None as Django took it before False: no SameSite attribute.
    if (
        samesite is not False
        and samesite is not None
        and (not isinstance(samesite, str) or samesite.lower() not in _SAMESITE)
    ):
        problems.append(
            CookieProblem(
                "hardened_sessions.E006",
                f"SESSION_COOKIE_SAMESITE is {samesite!r}; use 'Lax', 'Strict', 'None' or False.",
                "Django refuses any other value when it sets the cookie.",
            )
        )
    age = settings.SESSION_COOKIE_AGE
    if not is_int(age) or not 0 < age <= MAX_TIMEOUT:
        problems.append(
            CookieProblem(
                "hardened_sessions.E104",
                f"SESSION_COOKIE_AGE is {age!r}; it must be a whole number of seconds from 1 "
                f"to {MAX_TIMEOUT} (ten years).",
                "Zero or less makes every session expire as it is created; beyond the bound "
                "the stores' expiry dates overflow (browsers keep a cookie 400 days at most).",
            )
        )
    return problems


# Problems that would put another attribute into the header or make Django raise while
# emitting it: refused at run time as well (the others are check errors only).
RUNTIME_COOKIE_CHECKS = frozenset(
    {
        "hardened_sessions.E101",
        "hardened_sessions.E102",
        "hardened_sessions.E103",
        "hardened_sessions.E006",
    }
)


@dataclass(frozen=True)
class CookieSettings:
    name: str
    path: str
    domain: str | None
    samesite: str | bool
    secure: bool
    httponly: bool


_lock = threading.Lock()
_cookie_cached: CookieSettings | None = None


def cookie_settings() -> CookieSettings:
    """Django's ``SESSION_COOKIE_*`` settings, validated; ``ImproperlyConfigured`` when
    one of them would inject or break a ``Set-Cookie`` attribute (see
    :func:`cookie_problems`), whether or not the system checks ran."""
    global _cookie_cached
    cached = _cookie_cached
    if cached is not None:
        return cached
    refused = [p for p in cookie_problems() if p.id in RUNTIME_COOKIE_CHECKS]
    if refused:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(" ".join(f"{p.msg} ({p.id})" for p in refused))
    cached = CookieSettings(
        name=settings.SESSION_COOKIE_NAME,
        path=settings.SESSION_COOKIE_PATH,
        domain=settings.SESSION_COOKIE_DOMAIN or None,
        samesite=settings.SESSION_COOKIE_SAMESITE,
        secure=bool(settings.SESSION_COOKIE_SECURE),
        httponly=bool(settings.SESSION_COOKIE_HTTPONLY),
    )
    with _lock:
        _cookie_cached = cached
    return cached


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cookie_cached
    if setting.startswith("SESSION_COOKIE_"):
        with _lock:
            _cookie_cached = None
