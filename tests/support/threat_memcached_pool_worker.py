"""A second Django process on the same memcached pool (used by
``tests/test_threat_memcached_pool_logout.py``; not a test module itself).

Run as ``python tests/support/threat_memcached_pool_worker.py CONFIG_JSON`` with the repository
root on ``PYTHONPATH``. ``CONFIG_JSON`` holds ``secret_key``, ``engine`` (a
``SESSION_ENGINE``), ``cache`` (the ``CACHES["sessions"]`` entry) and ``database`` (the
SQLite file of the ``cached_db`` engine). The process prints ``ready``, then answers
one JSON line per JSON line read from stdin, from its one long-lived thread (so its
memcached connections live across requests, as a worker process's do):

* ``{"op": "load", "key": K}``: ``{"data": {...}}`` (empty when there is no session);
* ``{"op": "delete", "key": K}``: ``SessionStore().delete(K)``, ``{"data": null}``;

or ``{"error": "<exception class name>"}`` when the operation raised.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def configure(config: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=config["secret_key"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "hardened_sessions",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": config["database"],
                "OPTIONS": config["database_options"],
            }
        },
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "sessions": config["cache"],
        },
        SESSION_CACHE_ALIAS="sessions",
        SESSION_ENGINE=config["engine"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def answer(request: dict[str, Any]) -> dict[str, Any]:
    from importlib import import_module

    from django.conf import settings

    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    try:
        if request["op"] == "load":
            return {"data": dict(store_class(request["key"]).items())}
        if request["op"] == "delete":
            store_class().delete(request["key"])
            return {"data": None}
    except Exception as exc:  # reported to the test, which decides
        return {"error": exc.__class__.__name__, "message": str(exc)}
    return {"error": "unknown op"}


def main() -> None:
    configure(json.loads(sys.argv[1]))
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
