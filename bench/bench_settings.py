"""Django settings of the in-process benchmarks (micro, concurrency, clear_expired, profile).

Both ``django.contrib.sessions`` (for the stock engines) and ``hardened_sessions`` are
installed, so one process can time both sides in alternating rounds. The servers come
from the ``HS_BENCH_*`` variables that ``common.environment()`` sets:

* ``default``: an SQLite file with the recommended options (WAL, synchronous=NORMAL,
  ``transaction_mode="IMMEDIATE"``, a busy timeout);
* ``sqlite_plain``: another SQLite file with Django's default connection options;
* ``postgresql``: the scratch database (``HS_BENCH_PG_URL``), when there is one;
* caches ``redis`` (django-redis), ``redis_django`` (Django's ``RedisCache``) and
  ``memcached`` (``PyMemcacheCache`` with ``no_delay``, the option the hardened engine's
  own client always sets);
* ``SESSION_REDIS`` for the peer engine, django-redis-sessions.

:class:`ActiveAliasRouter` sends both session models to the alias named by its
``alias`` attribute, so the same engine class can be timed on each database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SECRET_KEY = "hardened-sessions-bench-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Nothing else: the session tables are all the benchmarks need (fast migrations).
INSTALLED_APPS = [
    "django.contrib.sessions",
    "hardened_sessions",
]

SESSION_ENGINE = "hardened_sessions.backends.db"
SESSION_CACHE_ALIAS = "redis"

_sqlite_dir = Path(os.environ.get("HS_BENCH_SQLITE_DIR", "."))

SQLITE_RECOMMENDED_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_sqlite_dir / "bench-wal.sqlite3"),
        "OPTIONS": dict(SQLITE_RECOMMENDED_OPTIONS),
    },
    "sqlite_plain": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_sqlite_dir / "bench-plain.sqlite3"),
    },
}

if _pg_url := os.environ.get("HS_BENCH_PG_URL"):
    _pg = urlsplit(_pg_url)
    DATABASES["postgresql"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _pg.path.lstrip("/"),
        "USER": _pg.username or "postgres",
        "PASSWORD": _pg.password or "",
        "HOST": _pg.hostname or "127.0.0.1",
        "PORT": str(_pg.port or 5432),
        "CONN_MAX_AGE": None,
    }

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

if _redis_url := os.environ.get("HS_BENCH_REDIS_URL"):
    CACHES["redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _redis_url,
        "KEY_PREFIX": "hsbench",
    }
    # Django's own RedisCache on the same server (the cache engine serves both).
    CACHES["redis_django"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _redis_url,
        "KEY_PREFIX": "hsbench-dj",
    }
    _redis = urlsplit(_redis_url)
    # The peer (django-redis-sessions); its default 0.1 s socket timeout would turn a
    # scheduling hiccup on a busy machine into a lost session.
    SESSION_REDIS = {
        "host": _redis.hostname,
        "port": _redis.port,
        "db": 0,
        "prefix": "hsbench-peer",
        "socket_timeout": 5,
    }

if _memcached := os.environ.get("HS_BENCH_MEMCACHED"):
    CACHES["memcached"] = {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": _memcached,
        "KEY_PREFIX": "hsbench",
        # The hardened engine's own client always sets TCP_NODELAY; give Django's the
        # same, or a get after a set stalls ~40 ms on Nagle + delayed ACK.
        "OPTIONS": {"no_delay": True},
    }

HARDENED_SESSIONS: dict[str, Any] = {}

DATABASE_ROUTERS = ["bench_settings.ActiveAliasRouter"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {
        "hardened_sessions": {"handlers": ["null"], "propagate": False},
        "django.security": {"handlers": ["null"], "propagate": False},
    },
}


class ActiveAliasRouter:
    """Routes the session models of both apps to ``ActiveAliasRouter.alias``."""

    alias = os.environ.get("HS_BENCH_ACTIVE_ALIAS", "default")
    _apps = frozenset({"sessions", "hardened_sessions"})

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return type(self).alias if model._meta.app_label in self._apps else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return type(self).alias if model._meta.app_label in self._apps else None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True
