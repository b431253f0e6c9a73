"""Settings of the demo site as the browser tests serve it.

The demo's own settings (``testproject/testproject/settings.py``), with the database
moved to a file of the test run and three knobs the tests turn through environment
variables of the server process (set by ``tests/browser/conftest.py``):

- ``HS_BROWSER_DB``: path of the SQLite file (required);
- ``HS_BROWSER_SAMESITE``: ``SESSION_COOKIE_SAMESITE`` (default: the demo's ``Lax``);
- ``HS_BROWSER_SESSION_CACHE=locmem``: sessions on the cache engine over ``LocMemCache``
  (the server is one process, so that cache is shared by all its requests).

The demo's own ``HS_DEMO_*`` variables are removed from the server's environment, so a
developer's demo configuration never leaks into the tests.
"""

from __future__ import annotations

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import CACHES, SQLITE_OPTIONS

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["HS_BROWSER_DB"],
        "OPTIONS": dict(SQLITE_OPTIONS),
    }
}

SESSION_COOKIE_SAMESITE = os.environ.get("HS_BROWSER_SAMESITE", "Lax")

if os.environ.get("HS_BROWSER_SESSION_CACHE") == "locmem":
    CACHES["sessions"] = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "hardened-sessions-browser-tests",
    }
    SESSION_ENGINE = "hardened_sessions.backends.cache"
    SESSION_CACHE_ALIAS = "sessions"

# Fast hashing: the tests log users in, they do not test password storage.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
