"""A standalone Django process hammering one SQLite file (used by
``tests/test_threat_sqlite_concurrency.py``; not a test module itself).

Run as ``python tests/support/threat_sqlite_worker.py CONFIG_JSON`` with the repository root on
``PYTHONPATH``. ``CONFIG_JSON`` holds ``database`` (the file), ``options`` (the
SQLite ``OPTIONS``), ``secret_key`` and ``mode``:

* ``setup``: migrate the file, create the shared session, print ``{"key": ...}``;
* ``hammer`` (with ``index``, ``iterations``, ``key``, ``own_every``): print ``ready``,
  wait for a line on stdin (so that every process starts at once), then run
  ``iterations`` load-modify-save cycles on the shared session, setting ``p<index>``
  to the loop counter, and create a session of its own every ``own_every`` cycles;
  print a JSON report on the last line.
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
                "OPTIONS": config["options"],
            }
        },
        SESSION_ENGINE="hardened_sessions.backends.db",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def setup() -> dict[str, Any]:
    from django.core.management import call_command

    from hardened_sessions.backends.db import SessionStore

    call_command("migrate", verbosity=0, interactive=False)
    session = SessionStore()
    session["owner"] = "shared"
    session.save()
    return {"key": session.session_key}


def hammer(config: dict[str, Any]) -> dict[str, Any]:
    from hardened_sessions.backends.db import SessionStore

    index: int = config["index"]
    mine = f"p{index}"
    errors: list[str] = []
    own_keys: list[str] = []

    print("ready", flush=True)
    sys.stdin.readline()

    for n in range(config["iterations"]):
        try:
            session = SessionStore(config["key"])
            seen = session.get(mine)
            expected = n - 1 if n else None
            if seen != expected or session.get("owner") != "shared":
                errors.append(f"cycle {n}: loaded {mine}={seen!r}, expected {expected!r}")
            session[mine] = n
            session.save()
            if session.session_key != config["key"]:
                errors.append(f"cycle {n}: the shared session got another key")
            if n % config["own_every"] == 0:
                own = SessionStore()
                own["owner"] = mine
                own.save()
                if SessionStore(own.session_key).get("owner") != mine:
                    errors.append(f"cycle {n}: own session did not load back")
                own_keys.append(own.session_key)
        except Exception as exc:  # every failure counts, whatever it is
            errors.append(f"cycle {n}: {exc.__class__.__name__}: {exc}")
    return {"index": index, "errors": len(errors), "first_errors": errors[:5], "own": own_keys}


def main() -> None:
    config = json.loads(sys.argv[1])
    configure(config)
    result = setup() if config["mode"] == "setup" else hammer(config)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
