"""System checks on the engine and the middleware: are they the hardened ones, together?

* ``hardened_sessions.E200``: ``HardenedSessionMiddleware`` is installed but
  ``SESSION_ENGINE`` cannot be imported;
* ``hardened_sessions.W201``: ``HardenedSessionMiddleware`` over an engine that is not
  hardened;
* ``hardened_sessions.W001``: a hardened engine without ``HardenedSessionMiddleware``.

The other checks ask which engine this is through
:func:`~hardened_sessions.capabilities.engine_capabilities`, and which middleware
through the predicates here. :mod:`hardened_sessions.checks` registers the checks.
"""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .capabilities import capabilities_of, engine_capabilities

__all__ = [
    "DJANGO_MIDDLEWARE_PATH",
    "MIDDLEWARE_PATH",
    "engine_checks",
    "engine_class",
    "hardened_middleware_installed",
    "middleware_checks",
    "uses_hardened_engine",
]

MIDDLEWARE_PATH = "hardened_sessions.middleware.HardenedSessionMiddleware"
DJANGO_MIDDLEWARE_PATH = "django.contrib.sessions.middleware.SessionMiddleware"


def engine_class() -> type:
    """``SESSION_ENGINE``'s ``SessionStore``; raises whatever importing it raises."""
    return import_module(settings.SESSION_ENGINE).SessionStore  # type: ignore[no-any-return]


def uses_hardened_engine() -> bool:
    """Whether ``SESSION_ENGINE`` is a hardened engine (or a project's own engine built
    on one)."""
    return bool(engine_capabilities())


def hardened_middleware_installed() -> bool:
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


def engine_checks() -> list[CheckMessage]:
    """E200 and W201: what ``HardenedSessionMiddleware`` finds in ``SESSION_ENGINE``."""
    if not hardened_middleware_installed():
        return []
    engine_path = settings.SESSION_ENGINE
    try:
        engine = engine_class()
    except Exception as exc:  # noqa: BLE001 -- whatever the import raises, say it
        return [
            Error(
                f"SESSION_ENGINE is {engine_path!r}, which cannot be imported as a session "
                f"engine ({type(exc).__name__}: {exc}); {MIDDLEWARE_PATH} would fail on "
                "start-up.",
                hint="Set SESSION_ENGINE to 'hardened_sessions.backends.db' (or .cache, "
                ".cached_db).",
                id="hardened_sessions.E200",
            )
        ]
    if capabilities_of(engine):
        return []
    return [
        Warning(
            f"{MIDDLEWARE_PATH} is installed but SESSION_ENGINE is {engine_path!r}, which is "
            "not a hardened engine: the middleware then behaves exactly as Django's "
            "SessionMiddleware, and none of the engine's protections (size bound, signed "
            "records, hashed keys, timeouts, 503 on store failures) apply.",
            hint="Set SESSION_ENGINE to 'hardened_sessions.backends.db' (or .cache, "
            ".cached_db), or silence this warning while you migrate.",
            id="hardened_sessions.W201",
        )
    ]


def middleware_checks() -> list[CheckMessage]:
    """W001: a hardened engine without ``HardenedSessionMiddleware``."""
    messages: list[CheckMessage] = []
    if uses_hardened_engine() and not hardened_middleware_installed():
        messages.append(
            Warning(
                f"SESSION_ENGINE is {settings.SESSION_ENGINE!r} but {MIDDLEWARE_PATH} is not "
                "in MIDDLEWARE: store failures and oversize sessions will not be answered "
                "503/400.",
                hint=f"Replace {DJANGO_MIDDLEWARE_PATH} with {MIDDLEWARE_PATH}.",
                id="hardened_sessions.W001",
            )
        )
    return messages
