"""System checks on the session cache: can the cache engines serve sessions from it?

* ``hardened_sessions.E010``: a cache engine over a cache it cannot serve without the
  cache's (pickling) serializer, over an alias that ``CACHES`` does not define, or
  whose backend cannot be loaded;
* ``hardened_sessions.E105``: memcached with an ``OPTIONS`` entry the store cannot
  honour;
* ``hardened_sessions.E210``: Redis with ``decode_responses`` on;
* ``hardened_sessions.E211``: the cache's client library is not installed (the error
  names the package extra);
* ``hardened_sessions.W213``: a ``CACHES`` entry on the Redis Cluster backend's old
  path.

:mod:`hardened_sessions.checks` registers the checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .capabilities import Capability, engine_capabilities

__all__ = [
    "CLIENT_LIBRARY_EXTRAS",
    "CLUSTER_BACKEND",
    "OLD_CLUSTER_BACKEND",
    "cache_checks",
    "check_cache_backend_paths",
]

CLUSTER_BACKEND = "hardened_sessions.redis_cluster.RedisClusterCache"
OLD_CLUSTER_BACKEND = "hardened_sessions.cache.RedisClusterCache"  # deprecated (W213)

# The package extra that installs each client library a session cache can need.
CLIENT_LIBRARY_EXTRAS = {"redis": "redis", "django_redis": "redis", "pymemcache": "memcached"}


def cache_checks() -> list[CheckMessage]:
    if Capability.CACHE not in engine_capabilities():
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
                hint="Remove the option from the session cache's OPTIONS (see the "
                "documentation's engines page, memcached).",
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


def check_cache_backend_paths(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W213: a cache (any alias, not only the sessions') on the Redis Cluster backend's
    deprecated path."""
    caches: Any = getattr(settings, "CACHES", None)
    if not isinstance(caches, dict):
        return []
    return [
        Warning(
            f"CACHES[{alias!r}]['BACKEND'] is {OLD_CLUSTER_BACKEND!r}, the old path of the "
            "Redis Cluster cache backend: it still loads, but it will be removed in the next "
            "major release.",
            hint=f"Set CACHES[{alias!r}]['BACKEND'] = {CLUSTER_BACKEND!r}.",
            id="hardened_sessions.W213",
        )
        for alias, config in caches.items()
        if isinstance(config, dict) and config.get("BACKEND") == OLD_CLUSTER_BACKEND
    ]
