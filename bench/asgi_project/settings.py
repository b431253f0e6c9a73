"""Settings of the ASGI benchmark's project, one engine per process.

``HS_BENCH_ASGI_VARIANT``:

``hardened``
    ``hardened_sessions.backends.cache`` and ``HardenedSessionMiddleware`` (the
    package's defaults: no idle or absolute timeout, so a read writes nothing);
``stock``
    ``django.contrib.sessions.backends.cache`` and Django's ``SessionMiddleware``.

``HS_BENCH_ASGI_CACHE``: the cache both engines store in: on the Redis server named by
``HS_BENCH_REDIS_URL``, ``django-redis`` (``django_redis.cache.RedisCache``) or
``django-rediscache`` (Django's own ``django.core.cache.backends.redis.RedisCache``); on
the memcached server of ``HS_BENCH_MEMCACHED`` (``host:port``), ``pymemcache``
(``PyMemcacheCache``).
``HS_BENCH_ASGI_PREFIX`` prefixes every key, so that runs and sides never share one.

The session middleware is the only one: the figures are the session layer's cost on
top of Django's ASGI handler, not a site's.
"""

from __future__ import annotations

import os
from typing import Any

VARIANT = os.environ.get("HS_BENCH_ASGI_VARIANT", "hardened")
CACHE = os.environ.get("HS_BENCH_ASGI_CACHE", "django-redis")
CACHE_BACKENDS = {
    "django-redis": "django_redis.cache.RedisCache",
    "django-rediscache": "django.core.cache.backends.redis.RedisCache",
    "pymemcache": "django.core.cache.backends.memcached.PyMemcacheCache",
}
if VARIANT not in ("hardened", "stock") or CACHE not in CACHE_BACKENDS:
    raise RuntimeError(f"unknown ASGI bench variant {VARIANT!r} or cache {CACHE!r}")

SECRET_KEY = "hardened-sessions-bench-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "asgi_project.urls"
ASGI_APPLICATION = "asgi_project.asgi.application"

# The cache engines never touch a database; an in-memory SQLite keeps Django content.
DATABASES: dict[str, dict[str, Any]] = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
}

# Room for a connection per request in flight on both sides (256 connections): stock
# Django's cache runs each request's ``aget`` in a thread of that request, each with a
# connection of its own, and redis-py 7's default pool of 100 answers the others with
# errors (500s).
_POOL_OPTIONS: dict[str, dict[str, Any]] = {
    "django-redis": {"CONNECTION_POOL_KWARGS": {"max_connections": 512}},
    "django-rediscache": {"max_connections": 512},
}

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "sessions": {
        "BACKEND": CACHE_BACKENDS[CACHE],
        "LOCATION": (
            os.environ.get("HS_BENCH_MEMCACHED", "127.0.0.1:11211")
            if CACHE == "pymemcache"
            else os.environ.get("HS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        ),
        "KEY_PREFIX": f"{os.environ.get('HS_BENCH_ASGI_PREFIX', 'hsbench-asgi')}-{VARIANT}",
        "OPTIONS": _POOL_OPTIONS.get(CACHE, {}),
    },
}
SESSION_CACHE_ALIAS = "sessions"

if VARIANT == "hardened":
    INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "hardened_sessions"]
    MIDDLEWARE = ["hardened_sessions.middleware.HardenedSessionMiddleware"]
    SESSION_ENGINE = "hardened_sessions.backends.cache"
    HARDENED_SESSIONS: dict[str, Any] = {}
else:
    INSTALLED_APPS = [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
    ]
    MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
