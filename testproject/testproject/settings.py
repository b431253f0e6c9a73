"""Settings of the demo site: hardened_sessions configured the way a project would.

Defaults to the db engine on an SQLite file next to manage.py. Environment variables
switch the store:

- ``HS_DEMO_DATABASE_URL``: the database (a dj-database-url URL, e.g.
  ``postgres://postgres@127.0.0.1:5432/hardened_sessions_demo``);
- ``HS_DEMO_REDIS_URL``: sessions in Redis through django-redis
  (``SESSION_ENGINE = "hardened_sessions.backends.cache"``), e.g. ``redis://127.0.0.1:6379/1``;
- ``HS_DEMO_MEMCACHED``: sessions in memcached through Django's ``PyMemcacheCache``,
  e.g. ``127.0.0.1:11211`` (several servers: comma-separated);
- ``HS_DEMO_SHORT_TIMEOUTS=1``: sessions end after 60 seconds without a request and
  180 seconds after login at the latest, so that expiry can be watched;
- ``HS_DEMO_REAUTH_MAX_AGE``: seconds a proof of identity counts for the sensitive page
  (default 120), e.g. ``5`` to see the re-authentication page after a short wait.

This is a demo: the secret key is public and DEBUG is on. Do not deploy it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "HS_DEMO_SECRET_KEY", "demo-only-not-secret-hardened-sessions-7c1f0e9a2b4d6e8f"
)
DEBUG = os.environ.get("HS_DEMO_DEBUG", "1") not in {"", "0", "false", "no", "off"}
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # In place of django.contrib.sessions: it owns the session model.
    "hardened_sessions",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # In place of django.contrib.sessions.middleware.SessionMiddleware.
    "hardened_sessions.middleware.HardenedSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Says "your session was ended" when a session cookie came in but opened nothing.
    "demo.middleware.session_ended_message",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # templates/hardened_sessions/base.html puts the package's pages ("Your
        # sessions", the re-authentication page) into the demo's layout.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------

# The OPTIONS recommended for the db engine on SQLite: WAL with synchronous=NORMAL,
# write transactions that take the lock at BEGIN, and a busy timeout.
SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}

if _database_url := os.environ.get("HS_DEMO_DATABASE_URL"):
    DATABASES: dict[str, dict[str, Any]] = {
        "default": dict(dj_database_url.parse(_database_url, conn_max_age=60))
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            "OPTIONS": SQLITE_OPTIONS,
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Sessions ----------------------------------------------------------------------

CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

_redis_url = os.environ.get("HS_DEMO_REDIS_URL")
_memcached = os.environ.get("HS_DEMO_MEMCACHED")
if _redis_url and _memcached:
    raise ImproperlyConfigured("Set HS_DEMO_REDIS_URL or HS_DEMO_MEMCACHED, not both.")

if _redis_url:
    CACHES["sessions"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _redis_url,
        "KEY_PREFIX": "hs-demo",
    }
elif _memcached:
    CACHES["sessions"] = {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": [server.strip() for server in _memcached.split(",") if server.strip()],
        "KEY_PREFIX": "hs-demo",
    }

if "sessions" in CACHES:
    SESSION_ENGINE = "hardened_sessions.backends.cache"
    SESSION_CACHE_ALIAS = "sessions"
else:
    SESSION_ENGINE = "hardened_sessions.backends.db"

HARDENED_SESSIONS = {
    "MAX_BYTES": 65536,  # 64 KiB: the "grow" page reaches it
    "IDLE_TIMEOUT": 1800,  # 30 minutes without a request ends the session
    "ABSOLUTE_TIMEOUT": 43200,  # 12 hours after login at most
    "TOUCH_INTERVAL": 60,  # record activity at most once a minute
    # Keep each session's network (the /24 of its IPv4 address, the /48 of IPv6) and user
    # agent, shown on "Your sessions" and in the admin. That is personal data: a real site
    # says so in its privacy notice, and it is deleted with the session.
    "DEVICE_METADATA": True,
    # "Sudo mode": the "sensitive" page asks for the password again when the last proof
    # (login or re-authentication) is older than this. Short here, to show it.
    "REAUTH_MAX_AGE": 120,
    # The 400 and 503 answers of the session middleware (a session grown over
    # MAX_BYTES, a store that is down) as pages in the demo's layout.
    "FAILURE_VIEW": "demo.views.session_failure",
}

if os.environ.get("HS_DEMO_SHORT_TIMEOUTS", "") not in {"", "0", "false", "no", "off"}:
    HARDENED_SESSIONS.update(IDLE_TIMEOUT=60, ABSOLUTE_TIMEOUT=180, TOUCH_INTERVAL=10)
if _reauth_max_age := os.environ.get("HS_DEMO_REAUTH_MAX_AGE"):
    HARDENED_SESSIONS["REAUTH_MAX_AGE"] = int(_reauth_max_age)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Served over plain http on 127.0.0.1: a deployment sets this (and CSRF_COOKIE_SECURE).
SESSION_COOKIE_SECURE = False

# --- Authentication, i18n, static files --------------------------------------------

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
