"""Django settings for the test suite.

The "default" database is an SQLite file with the OPTIONS docs/settings.rst ("SQLite")
recommends.
The "postgresql" and "mysql" aliases exist only when HS_TEST_POSTGRES_URL /
HS_TEST_MYSQL_URL are set; tests that need them skip without them, or fail under CI
(see ``tests.conftest.require_server``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import dj_database_url

SECRET_KEY = "hardened-sessions-tests-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.admin",
    "django.contrib.messages",
    "hardened_sessions",
]

MIDDLEWARE = [
    "hardened_sessions.middleware.HardenedSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

SESSION_ENGINE = "hardened_sessions.backends.db"

ROOT_URLCONF = "tests.support.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "hardened-sessions-tests",
    },
}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Fast hashing: the tests log users in, they do not test password storage.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Databases ---------------------------------------------------------------------

# tox sets HS_TEST_DB_SUFFIX to the environment's name, so that environments running
# side by side never share a test database (file or server-side name).
_raw_suffix = os.environ.get("HS_TEST_DB_SUFFIX", "")
DB_SUFFIX = "_" + re.sub(r"[^A-Za-z0-9]+", "_", _raw_suffix).strip("_") if _raw_suffix else ""

_SQLITE_DIR = Path(tempfile.gettempdir())

# Recommended for the db engine on SQLite: WAL with synchronous=NORMAL (fast, durable
# commits), transactions that take the write lock at BEGIN (no deadlocking upgrade from
# a read lock), and a busy timeout.
SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_SQLITE_DIR / f"hardened_sessions{DB_SUFFIX}.sqlite3"),
        "OPTIONS": dict(SQLITE_OPTIONS),
        # A file, not Django's in-memory default: the engine must be tested the way it
        # runs (WAL, several connections, real locking).
        "TEST": {"NAME": str(_SQLITE_DIR / f"test_hardened_sessions{DB_SUFFIX}.sqlite3")},
    },
}


def _server_database(url: str) -> dict[str, Any]:
    config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=0))
    base_name = config.get("NAME") or "hardened_sessions"
    config["TEST"] = {"NAME": f"test_{base_name}{DB_SUFFIX}"}
    return config


if _postgres_url := os.environ.get("HS_TEST_POSTGRES_URL"):
    DATABASES["postgresql"] = _server_database(_postgres_url)

if _mysql_url := os.environ.get("HS_TEST_MYSQL_URL"):
    DATABASES["mysql"] = _server_database(_mysql_url)
    DATABASES["mysql"].setdefault("OPTIONS", {})["charset"] = "utf8mb4"
    DATABASES["mysql"]["TEST"].update({"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
