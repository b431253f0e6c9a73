"""System checks on the database the sessions are routed to.

* ``hardened_sessions.W212`` (``check --database ALIAS``, and ``migrate``): the sessions
  table does not exist there (migrations not applied);
* ``hardened_sessions.W030`` (``check --deploy``): SQLite without the ``OPTIONS`` that
  several processes need.

:mod:`hardened_sessions.checks` registers the checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.checks import CheckMessage, Warning

from .capabilities import Capability, engine_capabilities

__all__ = ["RECOMMENDED_SQLITE_OPTIONS", "check_database", "check_sqlite_options"]

RECOMMENDED_SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def check_sqlite_options(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W030 (``check --deploy``): SQLite without the options for several processes."""
    if Capability.ROWS not in engine_capabilities():
        return []
    from django.apps import apps
    from django.db import connections, router

    if not apps.ready:
        return []
    from .models import HardenedSession

    alias = router.db_for_write(HardenedSession)
    if alias not in connections.settings:
        return []
    db = connections.settings[alias]
    if db.get("ENGINE") != "django.db.backends.sqlite3":
        return []
    name = str(db.get("NAME") or "")
    if name in ("", ":memory:") or "mode=memory" in name:
        # An in-memory database lives in one process: several processes cannot share it.
        return []
    options = db.get("OPTIONS") or {}
    missing = []
    if "journal_mode=wal" not in str(options.get("init_command", "")).lower().replace(" ", ""):
        missing.append("init_command with PRAGMA journal_mode=WAL")
    if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
        missing.append('transaction_mode="IMMEDIATE"')
    if "timeout" not in options:
        missing.append("timeout")
    if not missing:
        return []
    return [
        Warning(
            f"The sessions live on SQLite database {alias!r} without {', '.join(missing)}. "
            "One process works as it is (the engine queues its own writes), but several "
            "processes writing sessions (server workers, a cron job) will meet "
            "'database is locked' under load, answered 503.",
            hint=f"Add to DATABASES[{alias!r}]['OPTIONS']: {RECOMMENDED_SQLITE_OPTIONS!r}.",
            id="hardened_sessions.W030",
        )
    ]


def check_database(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W212: the sessions table is missing where the sessions are routed."""
    if not databases or Capability.ROWS not in engine_capabilities():
        return []
    from django.db import DatabaseError, connections, router

    from .models import HardenedSession

    table = HardenedSession._meta.db_table
    aliases = {router.db_for_read(HardenedSession), router.db_for_write(HardenedSession)}
    messages: list[CheckMessage] = []
    for alias in sorted(a for a in aliases if a in set(databases)):
        try:
            tables = connections[alias].introspection.table_names()
        except DatabaseError:
            continue  # unreachable: the engine answers 503 and logs it, not a check's job
        if table not in tables:
            messages.append(
                Warning(
                    f"The sessions table {table!r} does not exist in database {alias!r}: "
                    "every request that loads or saves a session will fail.",
                    hint=f"Run 'python manage.py migrate hardened_sessions --database "
                    f"{alias}' (while migrate itself runs, this is expected).",
                    id="hardened_sessions.W212",
                )
            )
    return messages
