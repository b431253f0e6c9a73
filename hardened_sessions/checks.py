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
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from . import cap  # noqa: F401  (registers hardened_sessions.W402)
from .conf import DEFAULTS, cookie_problems, validate

__all__ = ["JSON_SERIALIZERS", "RECOMMENDED_SQLITE_OPTIONS"]

JSON_SERIALIZERS = frozenset({"django.contrib.sessions.serializers.JSONSerializer"})
MIDDLEWARE_PATH = "hardened_sessions.middleware.HardenedSessionMiddleware"
DJANGO_MIDDLEWARE_PATH = "django.contrib.sessions.middleware.SessionMiddleware"
RECOMMENDED_SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


# The package extra that installs each client library a session cache can need.
CLIENT_LIBRARY_EXTRAS = {"redis": "redis", "django_redis": "redis", "pymemcache": "memcached"}


def _engine_class() -> type:
    """``SESSION_ENGINE``'s ``SessionStore``; raises whatever importing it raises."""
    return import_module(settings.SESSION_ENGINE).SessionStore  # type: ignore[no-any-return]


def _engine_is(base: str) -> bool:
    """Whether ``SESSION_ENGINE``'s store is a subclass of ``base`` (a dotted path); a
    project's own engine built on a hardened one counts as hardened."""
    from django.utils.module_loading import import_string

    try:
        engine = _engine_class()
    except Exception:  # noqa: BLE001 -- reported as E200 where it matters
        return False
    return isinstance(engine, type) and issubclass(engine, import_string(base))


def _uses_hardened_engine() -> bool:
    return _engine_is("hardened_sessions.backends.base.HardenedSessionBase")


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
    problems = cookie_problems()
    messages.extend(Error(p.msg, hint=p.hint, id=p.id) for p in problems)
    if not any(p.id == "hardened_sessions.E101" for p in problems):
        messages.extend(_cookie_name_checks())
    messages.extend(_engine_checks())
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
    messages.extend(_cache_checks())
    return messages


def _engine_checks() -> list[CheckMessage]:
    """E200 and W201: what ``HardenedSessionMiddleware`` finds in ``SESSION_ENGINE``."""
    if not _hardened_middleware_installed():
        return []
    from .backends.base import HardenedSessionBase

    engine_path = settings.SESSION_ENGINE
    try:
        engine = _engine_class()
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
    if isinstance(engine, type) and issubclass(engine, HardenedSessionBase):
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


def _cache_checks() -> list[CheckMessage]:
    if not (
        _engine_is("hardened_sessions.backends.cache.SessionStore")
        or _engine_is("hardened_sessions.backends.cached_db.SessionStore")
    ):
        return []
    from django.core.cache import InvalidCacheBackendError, caches

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
        kind = kind_of(caches[alias])
        # The store modules import these at first use; a cache backend may not have yet
        # (Django's RedisCache imports redis at its first command).
        for library in {"redis": ("redis",), "memcached": ("pymemcache",)}.get(kind, ()):
            import_module(library)
    except UnsupportedCache as exc:
        return [
            Error(
                str(exc),
                hint="Point SESSION_CACHE_ALIAS at a django-redis RedisCache, Django's "
                "RedisCache or PyMemcacheCache, or use the db engine.",
                id="hardened_sessions.E010",
            )
        ]
    except (ImportError, InvalidCacheBackendError) as exc:
        return [_missing_library(alias, exc)]
    if kind == "redis":
        return _redis_decode_checks(alias, settings.CACHES[alias])
    if kind == "memcached":
        from .stores.memcached import unsupported_options

        config: dict[str, Any] = settings.CACHES[alias]
        options: dict[str, Any] = dict(config.get("OPTIONS") or {})
        return [
            Error(
                problem,
                hint="Remove the option from the session cache's OPTIONS (see the README's "
                "memcached section).",
                id="hardened_sessions.E105",
            )
            for problem in unsupported_options(options)
        ]
    return []


def _missing_library(alias: str, exc: Exception) -> CheckMessage:
    """E211 for a client library that is not installed; E010 for any other failure to
    load the cache backend."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ImportError):
        cause = cause.__cause__
    missing = (getattr(cause, "name", None) or "").partition(".")[0]
    extra = CLIENT_LIBRARY_EXTRAS.get(missing)
    if extra is None:
        return Error(
            f"The session cache {alias!r} cannot be loaded: {exc}",
            hint=f"Check CACHES[{alias!r}]['BACKEND'].",
            id="hardened_sessions.E010",
        )
    return Error(
        f"The session cache {alias!r} needs the Python package {missing!r}, which is not "
        "installed.",
        hint=f"pip install django-hardened-sessions[{extra}]",
        id="hardened_sessions.E211",
    )


def _locations(location: Any) -> list[str]:
    # Django's RedisCache splits a string on "," and ";", django-redis on ",".
    if isinstance(location, str):
        return [url.strip() for url in location.replace(";", ",").split(",")]
    if isinstance(location, Iterable):
        return [str(url) for url in location]
    return []


def _redis_decode_checks(alias: str, config: dict[str, Any]) -> list[CheckMessage]:
    """E210: ``decode_responses`` turns the stored bytes into ``str`` on the way back,
    and no record can be read. Read from the settings where each backend takes it:
    ``OPTIONS`` (Django's RedisCache and RedisClusterCache hand them to redis-py),
    ``OPTIONS["CONNECTION_POOL_KWARGS"]`` (django-redis) and the URLs' query strings."""
    where = []
    options = config.get("OPTIONS") or {}
    if isinstance(options, dict):
        if options.get("decode_responses"):
            where.append(f"CACHES[{alias!r}]['OPTIONS']['decode_responses']")
        pool = options.get("CONNECTION_POOL_KWARGS") or {}
        if isinstance(pool, dict) and pool.get("decode_responses"):
            where.append(
                f"CACHES[{alias!r}]['OPTIONS']['CONNECTION_POOL_KWARGS']['decode_responses']"
            )
    for number, url in enumerate(_locations(config.get("LOCATION")), 1):
        # redis-py passes a URL's decode_responses on as a string (redis-py 5 to 8):
        # even "False" or "0" turns decoding on, so any value counts.
        if any(name == "decode_responses" for name, _ in parse_qsl(urlsplit(url).query)):
            where.append(f"the query string of LOCATION URL {number}")
    if not where:
        return []
    return [
        Error(
            f"The session cache {alias!r} has decode_responses set ({', '.join(where)}): "
            "Redis would answer text instead of the records' bytes, and every session load "
            "would fail.",
            hint="Remove decode_responses from the session cache (give other uses their own "
            "cache alias if they need it).",
            id="hardened_sessions.E210",
        )
    ]


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


@register("sessions", deploy=True)
def check_sqlite_options(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W030 (``check --deploy``): SQLite without the options for several processes."""
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
    name = str(db.get("NAME") or "")
    if name in ("", ":memory:") or "mode=memory" in name:
        # An in-memory database lives in one process: several processes cannot share it.
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
            f"The sessions live on SQLite database {alias!r} without {', '.join(missing)}. "
            "One process works as it is (the engine queues its own writes), but several "
            "processes writing sessions (server workers, a cron job) will meet "
            "'database is locked' under load, answered 503.",
            hint=f"Add to DATABASES[{alias!r}]['OPTIONS']: {RECOMMENDED_SQLITE_OPTIONS!r}.",
            id="hardened_sessions.W030",
        )
    ]


@register(Tags.database)
def check_database(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W212: the sessions table is missing where the sessions are routed."""
    if not databases or not _engine_is("hardened_sessions.backends.db.SessionStore"):
        return []
    from django.db import DatabaseError, connections, router

    from .models import HardenedSession

    table = HardenedSession._meta.db_table
    aliases = {router.db_for_read(HardenedSession), router.db_for_write(HardenedSession)}
    messages: list[CheckMessage] = []
    for alias in sorted(a for a in aliases if a in set(databases)):
        try:
            tables = connections[alias].introspection.table_names()
        except DatabaseError:
            continue  # unreachable: the engine answers 503 and logs it, not a check's job
        if table not in tables:
            messages.append(
                Warning(
                    f"The sessions table {table!r} does not exist in database {alias!r}: "
                    "every request that loads or saves a session will fail.",
                    hint=f"Run 'python manage.py migrate hardened_sessions --database "
                    f"{alias}' (while migrate itself runs, this is expected).",
                    id="hardened_sessions.W212",
                )
            )
    return messages


@register(Tags.security, deploy=True)
def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    hardened_engine = _uses_hardened_engine()
    if not hardened_engine and not _hardened_middleware_installed():
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
