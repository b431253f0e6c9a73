"""The testproject's settings, for the end-to-end benchmark, in two variants.

``HS_BENCH_E2E_VARIANT``:

``hardened``
    the testproject as it is (``hardened_sessions`` and its middleware, its
    ``HARDENED_SESSIONS``);
``stock``
    the same project switched to ``django.contrib.sessions``: the app and the
    middleware swapped, Django's engine of the same kind.

``HS_BENCH_E2E_STORE``: ``sqlite`` (the db engines on an SQLite file with the
recommended options, ``HS_BENCH_E2E_SQLITE``) or ``redis`` (the cache engines on
django-redis, ``HS_BENCH_REDIS_URL``). DEBUG is off; the URLconf adds the two
benchmark views of ``e2e_urls`` to the project's own.
"""

from __future__ import annotations

import os
from typing import Any

from testproject.settings import *  # noqa: F403
from testproject.settings import INSTALLED_APPS, MIDDLEWARE, SQLITE_OPTIONS

VARIANT = os.environ.get("HS_BENCH_E2E_VARIANT", "hardened")
STORE = os.environ.get("HS_BENCH_E2E_STORE", "sqlite")
if VARIANT not in ("hardened", "stock") or STORE not in ("sqlite", "redis"):
    raise RuntimeError(f"unknown e2e variant {VARIANT!r} or store {STORE!r}")

DEBUG = False
ROOT_URLCONF = "e2e_urls"

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["HS_BENCH_E2E_SQLITE"],
        "OPTIONS": dict(SQLITE_OPTIONS),
    }
}

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
if STORE == "redis":
    CACHES["sessions"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ["HS_BENCH_REDIS_URL"],
        "KEY_PREFIX": f"hsbench-e2e-{VARIANT}",
    }
    SESSION_CACHE_ALIAS = "sessions"

_kind = "cache" if STORE == "redis" else "db"
if VARIANT == "hardened":
    SESSION_ENGINE = f"hardened_sessions.backends.{_kind}"
else:
    INSTALLED_APPS = [
        "django.contrib.sessions" if app == "hardened_sessions" else app for app in INSTALLED_APPS
    ]
    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware"
        if m == "hardened_sessions.middleware.HardenedSessionMiddleware"
        else m
        for m in MIDDLEWARE
    ]
    SESSION_ENGINE = f"django.contrib.sessions.backends.{_kind}"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
