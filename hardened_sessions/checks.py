"""System checks for hardened_sessions.

Errors (``manage.py check``):

* ``hardened_sessions.E001`` — ``HARDENED_SESSIONS`` has an unknown key or a bad value.
* ``hardened_sessions.E002`` — ``SESSION_SERIALIZER`` is not JSON (records are JSON only).
* ``hardened_sessions.E003`` — ``SESSION_SAVE_EVERY_REQUEST`` together with ``TOUCH_INTERVAL``.
* ``hardened_sessions.E004`` — a ``__Host-`` cookie name without ``Secure``, with a
  domain, or with a path other than ``/``.
* ``hardened_sessions.E005`` — a ``__Secure-`` cookie name without ``Secure``.
* ``hardened_sessions.E006`` — ``SESSION_COOKIE_SAMESITE`` is not Lax, Strict, None or False.
* ``hardened_sessions.E010`` — a cache engine over a cache it cannot serve without the
  cache's (pickling) serializer, or over an alias that ``CACHES`` does not define.

Warnings:

* ``hardened_sessions.W001`` — a hardened engine without ``HardenedSessionMiddleware``.
* ``hardened_sessions.W030`` — the sessions live on SQLite without the recommended
  ``OPTIONS`` (WAL, ``transaction_mode="IMMEDIATE"``, ``timeout``).

Deployment (``manage.py check --deploy``), covering what Django's security.W010–W015
cover (those stay silent when ``django.contrib.sessions`` is not installed):

* ``hardened_sessions.W010`` — ``SESSION_COOKIE_SECURE`` is not True.
* ``hardened_sessions.W013`` — ``SESSION_COOKIE_HTTPONLY`` is not True.
* ``hardened_sessions.W020`` — ``ABSOLUTE_TIMEOUT`` is not set.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS, validate

__all__ = ["JSON_SERIALIZERS", "RECOMMENDED_SQLITE_OPTIONS"]

JSON_SERIALIZERS = frozenset({"django.contrib.sessions.serializers.JSONSerializer"})
MIDDLEWARE_PATH = "hardened_sessions.middleware.HardenedSessionMiddleware"
DJANGO_MIDDLEWARE_PATH = "django.contrib.sessions.middleware.SessionMiddleware"
RECOMMENDED_SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def _uses_hardened_engine() -> bool:
    return str(getattr(settings, "SESSION_ENGINE", "")).startswith("hardened_sessions.")


def _raw_config() -> dict[str, Any]:
    raw = getattr(settings, "HARDENED_SESSIONS", None)
    return {**DEFAULTS, **raw} if isinstance(raw, dict) else dict(DEFAULTS)


@register(Tags.security, "sessions")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(problem, id="hardened_sessions.E001")
        for problem in validate(getattr(settings, "HARDENED_SESSIONS", None))
    ]
    serializer = getattr(settings, "SESSION_SERIALIZER", "")
    if not isinstance(serializer, str) or serializer not in JSON_SERIALIZERS:
        messages.append(
            Error(
                f"SESSION_SERIALIZER is {serializer!r}; hardened_sessions stores JSON only "
                "(never pickle).",
                hint="Remove SESSION_SERIALIZER or set it to "
                "'django.contrib.sessions.serializers.JSONSerializer'.",
                id="hardened_sessions.E002",
            )
        )
    config = _raw_config()
    if settings.SESSION_SAVE_EVERY_REQUEST and config.get("TOUCH_INTERVAL") is not None:
        messages.append(
            Error(
                "SESSION_SAVE_EVERY_REQUEST writes every request, which defeats "
                "HARDENED_SESSIONS['TOUCH_INTERVAL'].",
                hint="Drop one of the two; TOUCH_INTERVAL bounds writes to one per interval.",
                id="hardened_sessions.E003",
            )
        )
    messages.extend(_cookie_name_checks())
    samesite = settings.SESSION_COOKIE_SAMESITE
    if samesite is not False and (
        not isinstance(samesite, str) or samesite.lower() not in ("lax", "strict", "none")
    ):
        messages.append(
            Error(
                f"SESSION_COOKIE_SAMESITE is {samesite!r}; use 'Lax', 'Strict', 'None' or False.",
                id="hardened_sessions.E006",
            )
        )
    if _uses_hardened_engine() and not _hardened_middleware_installed():
        messages.append(
            Warning(
                f"SESSION_ENGINE is {settings.SESSION_ENGINE!r} but {MIDDLEWARE_PATH} is not "
                "in MIDDLEWARE: store failures and oversize sessions will not be answered "
                "503/400.",
                hint=f"Replace {DJANGO_MIDDLEWARE_PATH} with {MIDDLEWARE_PATH}.",
                id="hardened_sessions.W001",
            )
        )
    messages.extend(_sqlite_checks())
    messages.extend(_cache_checks())
    return messages


def _cache_checks() -> list[CheckMessage]:
    if settings.SESSION_ENGINE not in (
        "hardened_sessions.backends.cache",
        "hardened_sessions.backends.cached_db",
    ):
        return []
    from django.core.cache import caches

    from .stores import UnsupportedCache, kind_of

    alias = settings.SESSION_CACHE_ALIAS
    if alias not in settings.CACHES:
        return [
            Error(
                f"SESSION_CACHE_ALIAS is {alias!r}, which CACHES does not define.",
                id="hardened_sessions.E010",
            )
        ]
    try:
        kind_of(caches[alias])
    except UnsupportedCache as exc:
        return [
            Error(
                str(exc),
                hint="Point SESSION_CACHE_ALIAS at a django-redis RedisCache, Django's "
                "RedisCache or PyMemcacheCache, or use the db engine.",
                id="hardened_sessions.E010",
            )
        ]
    return []


def _hardened_middleware_installed() -> bool:
    """Whether MIDDLEWARE has HardenedSessionMiddleware or a subclass of it."""
    from django.utils.module_loading import import_string

    from .middleware import HardenedSessionMiddleware

    for path in settings.MIDDLEWARE:
        try:
            middleware = import_string(path)
        except ImportError:
            continue  # Django's own checks report it
        if isinstance(middleware, type) and issubclass(middleware, HardenedSessionMiddleware):
            return True
    return False


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


def _sqlite_checks() -> list[CheckMessage]:
    if not settings.SESSION_ENGINE.startswith("hardened_sessions.backends.") or (
        settings.SESSION_ENGINE == "hardened_sessions.backends.cache"
    ):
        return []
    from django.apps import apps
    from django.db import connections, router

    if not apps.ready:
        return []
    from .models import HardenedSession

    alias = router.db_for_write(HardenedSession)
    if alias not in connections.settings:
        return []
    db = connections.settings[alias]
    if db.get("ENGINE") != "django.db.backends.sqlite3":
        return []
    options = db.get("OPTIONS") or {}
    missing = []
    if "journal_mode=wal" not in str(options.get("init_command", "")).lower().replace(" ", ""):
        missing.append("init_command with PRAGMA journal_mode=WAL")
    if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
        missing.append('transaction_mode="IMMEDIATE"')
    if "timeout" not in options:
        missing.append("timeout")
    if not missing:
        return []
    return [
        Warning(
            f"The sessions live on SQLite database {alias!r} without {', '.join(missing)}: "
            "concurrent requests will meet 'database is locked' (answered 503).",
            hint=f"Add to DATABASES[{alias!r}]['OPTIONS']: {RECOMMENDED_SQLITE_OPTIONS!r}.",
            id="hardened_sessions.W030",
        )
    ]


@register(Tags.security, deploy=True)
def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not _uses_hardened_engine():
        return []
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
    if _raw_config().get("ABSOLUTE_TIMEOUT") is None:
        messages.append(
            Warning(
                "HARDENED_SESSIONS['ABSOLUTE_TIMEOUT'] is not set: a session kept active "
                "lives forever, so a stolen cookie never stops working.",
                hint="Set it, e.g. 43200 (12 hours) or 604800 (a week).",
                id="hardened_sessions.W020",
            )
        )
    return messages
