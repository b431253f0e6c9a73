"""Settings for Django's own test suite with a chosen session engine.

Django's ``tests/runtests.py`` takes a settings module (its default is
``test_sqlite``: in-memory SQLite, no ``CACHES``, so the default cache is
``LocMemCache``) and sets ``INSTALLED_APPS``, ``MIDDLEWARE`` and a few more itself;
``hs_runtests.py`` swaps the middleware and adds the app. This module adds only what
runtests.py leaves to settings: the session engine, named by the environment of
``run.py``, and the test runner that applies ``deviations.toml``.
"""

import os

from test_sqlite import *  # noqa: F403  (Django's own test settings, from its sdist)

ENGINE_KIND = os.environ["HS_DJANGO_OWN_ENGINE"]  # db, cache or cached_db
MODE = os.environ["HS_DJANGO_OWN_MODE"]  # hardened or stock

if ENGINE_KIND not in {"db", "cache", "cached_db"} or MODE not in {"hardened", "stock"}:
    raise RuntimeError(f"unknown engine {ENGINE_KIND!r} or mode {MODE!r}")

SESSION_ENGINE = (
    "hardened_sessions" if MODE == "hardened" else "django.contrib.sessions"
) + f".backends.{ENGINE_KIND}"

TEST_RUNNER = "hs_deviations.DeviationRunner"
