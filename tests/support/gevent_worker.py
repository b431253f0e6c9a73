"""Many greenlets on one session engine under gevent's monkey-patching (used by
``tests/test_gevent.py``; not a test module itself).

Run as ``python tests/support/gevent_worker.py CONFIG_JSON`` with the repository root on
``PYTHONPATH``. gevent patches the standard library before anything else is imported,
as a gevent server (gunicorn's gevent worker, ``gevent.pywsgi``) does. ``CONFIG_JSON``
holds ``secret_key``, ``engine`` (a ``SESSION_ENGINE``), ``cache`` (the
``CACHES["sessions"]`` entry), ``database`` (the ``DATABASES["default"]`` entry) and
``greenlets``. The process prints ``ready`` and waits for a line on stdin (the test
starts counting connections meanwhile), then lets every greenlet go at once. Each one
is a request: ``request_started``, create a session, load it, change and save it, load
it again, ``request_finished`` (which closes or returns the database connection, as
Django's handlers do). Last it prints one JSON line: ``done`` (greenlets that finished
with the right data), ``errors`` (exception class and message -> count) and
``patched`` (whether socket and threading were patched).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

JOIN_TIMEOUT = 90.0


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
        DATABASES={"default": config["database"]},
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


def request(n: int, go: Event) -> None:
    from importlib import import_module

    from django.conf import settings
    from django.core.signals import request_finished, request_started

    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    go.wait()
    request_started.send(sender=None)
    try:
        session = store_class()
        session["n"] = n
        session.save()
        key = session.session_key
        loaded = store_class(key)
        if loaded.get("n") != n:
            raise AssertionError(f"greenlet {n}: loaded {dict(loaded.items())!r}")
        loaded["m"] = n * 2
        loaded.save()
        again = store_class(key)
        if (again.get("n"), again.get("m")) != (n, n * 2):
            raise AssertionError(f"greenlet {n}: saved, then loaded {dict(again.items())!r}")
    finally:
        request_finished.send(sender=None)


def main() -> None:
    config = json.loads(sys.argv[1])
    configure(config)
    patched = {name: monkey.is_module_patched(name) for name in ("socket", "threading")}
    go = Event()
    greenlets = [gevent.spawn(request, n, go) for n in range(config["greenlets"])]
    gevent.sleep(0)  # every greenlet waits at go.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    gevent.joinall(greenlets, timeout=JOIN_TIMEOUT)
    errors: Counter[str] = Counter()
    done = 0
    for greenlet in greenlets:
        if not greenlet.ready():
            errors["unfinished"] += 1
            greenlet.kill(block=False)
        elif greenlet.successful():
            done += 1
        else:
            exc = greenlet.exception
            errors[f"{type(exc).__name__}: {str(exc)[:200]}"] += 1
    print(json.dumps({"done": done, "errors": dict(errors), "patched": patched}), flush=True)


if __name__ == "__main__":
    main()
