"""System checks for hardened_sessions: the index of their ids, and their registration.

Errors (``manage.py check``):

* ``hardened_sessions.E001`` — ``HARDENED_SESSIONS`` has an unknown key or a bad value.
* ``hardened_sessions.E002`` — ``SESSION_SERIALIZER`` is not JSON (records are JSON only).
* ``hardened_sessions.E003`` — ``SESSION_SAVE_EVERY_REQUEST`` together with ``TOUCH_INTERVAL``.
* ``hardened_sessions.E004`` — a ``__Host-`` cookie name without ``Secure``, with a
  domain, or with a path other than ``/``.
* ``hardened_sessions.E005`` — a ``__Secure-`` cookie name without ``Secure``.
* ``hardened_sessions.E006`` — ``SESSION_COOKIE_SAMESITE`` is not Lax, Strict, None or False.
* ``hardened_sessions.E010`` — a cache engine over a cache it cannot serve without the
  cache's (pickling) serializer, or over an alias that ``CACHES`` does not define, or
  whose backend cannot be loaded.
* ``hardened_sessions.E101`` — ``SESSION_COOKIE_NAME`` is not a cookie name (an RFC 2616
  token: no space, control, non-ASCII or ``()<>@,;:\\"/[]?={}`` character).
* ``hardened_sessions.E102`` — ``SESSION_COOKIE_PATH`` does not start with ``/`` or holds
  a ``;``, ``,``, space, quote, backslash, control or non-ASCII character.
* ``hardened_sessions.E103`` — ``SESSION_COOKIE_DOMAIN`` is not a host name.
* ``hardened_sessions.E104`` — ``SESSION_COOKIE_AGE`` is not a whole number of seconds
  from 1 to ten years.
* ``hardened_sessions.E105`` — the session cache is memcached with an ``OPTIONS`` entry
  the store cannot honour (a ``hasher``: sessions are placed by the package's own
  rendezvous hashing, so that a logout deletes where every client looks), an unknown
  option, or a negative retry setting.
* ``hardened_sessions.E200`` — ``HardenedSessionMiddleware`` is installed but
  ``SESSION_ENGINE`` cannot be imported.
* ``hardened_sessions.E210`` — the session cache is Redis with ``decode_responses`` on
  (every load would fail).
* ``hardened_sessions.E211`` — the session cache's client library (redis, django-redis,
  pymemcache) is not installed; the error names the package extra to install.

E101–E103 and E006 are also refused at run time: ``HardenedSessionMiddleware`` raises
``ImproperlyConfigured`` rather than send such a cookie, even with the checks silenced.

Warnings:

* ``hardened_sessions.W001`` — a hardened engine without ``HardenedSessionMiddleware``.
* ``hardened_sessions.W201`` — ``HardenedSessionMiddleware`` over an engine that is not
  hardened (it then behaves exactly as Django's ``SessionMiddleware``).
* ``hardened_sessions.W213`` — a ``CACHES`` entry names the Redis Cluster backend by its
  old path, ``hardened_sessions.cache.RedisClusterCache`` (deprecated, removed in the
  next major release).

Database (``manage.py check --database ALIAS``, and ``migrate``, which runs them):

* ``hardened_sessions.W212`` — the sessions table does not exist in the database the
  sessions are routed to (migrations not applied). A warning, not an error: ``migrate``
  refuses to run while an error stands, and it is what creates the table.

Deployment (``manage.py check --deploy``), covering what Django's security.W010–W015
cover (those stay silent when ``django.contrib.sessions`` is not installed):

* ``hardened_sessions.W010`` — ``SESSION_COOKIE_SECURE`` is not True.
* ``hardened_sessions.W013`` — ``SESSION_COOKIE_HTTPONLY`` is not True.
* ``hardened_sessions.W020`` — ``ABSOLUTE_TIMEOUT`` is not set.
* ``hardened_sessions.W030`` — the sessions live on SQLite without the ``OPTIONS`` that
  several processes need (WAL, ``transaction_mode="IMMEDIATE"``, ``timeout``); one
  process works on Django's defaults, so a plain ``check`` stays quiet.

W010 and W013 apply whenever the hardened engine or ``HardenedSessionMiddleware`` is in
use (the middleware sets the cookie whatever the engine); W020 with a hardened engine.

Each subject's checks live in a module of their own: ``checks_engine.py`` (engine and
middleware), ``checks_cookie.py`` (``SESSION_COOKIE_*``), ``checks_cache.py`` (the
session cache), ``checks_database.py`` (the sessions' database); ``HARDENED_SESSIONS``
itself is checked by :func:`hardened_sessions.conf.validate`. This module registers
them all with Django (``apps.py`` imports it); W402 registers with
:mod:`hardened_sessions.cap`, E020 with :mod:`hardened_sessions.device`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from . import cap  # noqa: F401  (registers hardened_sessions.W402)
from .checks_cache import cache_checks, check_cache_backend_paths
from .checks_cookie import cookie_checks, cookie_deploy_checks
from .checks_database import RECOMMENDED_SQLITE_OPTIONS, check_database, check_sqlite_options
from .checks_engine import (
    engine_checks,
    hardened_middleware_installed,
    middleware_checks,
    uses_hardened_engine,
)
from .conf import DEFAULTS, validate

__all__ = [
    "JSON_SERIALIZERS",
    "RECOMMENDED_SQLITE_OPTIONS",
    "check_cache_backend_paths",
    "check_database",
    "check_deploy",
    "check_settings",
    "check_sqlite_options",
]

JSON_SERIALIZERS = frozenset({"django.contrib.sessions.serializers.JSONSerializer"})


def _raw_config() -> dict[str, Any]:
    """``HARDENED_SESSIONS`` over the defaults, as written (not validated)."""
    raw = getattr(settings, "HARDENED_SESSIONS", None)
    return {**DEFAULTS, **raw} if isinstance(raw, dict) else dict(DEFAULTS)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001–E003, then the cookie, engine, middleware and session cache checks."""
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
    messages.extend(cookie_checks())
    messages.extend(engine_checks())
    messages.extend(middleware_checks())
    messages.extend(cache_checks())
    return messages


def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W010 and W013 (the cookie) wherever the hardened engine or middleware is in use;
    W020 with a hardened engine."""
    hardened_engine = uses_hardened_engine()
    if not hardened_engine and not hardened_middleware_installed():
        return []
    messages = cookie_deploy_checks()
    if hardened_engine and _raw_config().get("ABSOLUTE_TIMEOUT") is None:
        messages.append(
            Warning(
                "HARDENED_SESSIONS['ABSOLUTE_TIMEOUT'] is not set: a session kept active "
                "lives forever, so a stolen cookie never stops working.",
                hint="Set it, e.g. 43200 (12 hours) or 604800 (a week).",
                id="hardened_sessions.W020",
            )
        )
    return messages


register(Tags.security, "sessions")(check_settings)
register(Tags.caches, "sessions")(check_cache_backend_paths)
register(Tags.database)(check_database)
register(Tags.security, deploy=True)(check_deploy)
register("sessions", deploy=True)(check_sqlite_options)
