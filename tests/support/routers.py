"""Database router used by the ``db_alias`` fixture (see ``tests/conftest.py``)."""

from __future__ import annotations

from typing import Any

SESSIONS_APP_LABEL = "hardened_sessions"


class SessionsAliasRouter:
    """Send reads and writes of the ``hardened_sessions`` models to one alias.

    Every other model keeps Django's default routing, and every model may be migrated
    everywhere, so each test database has the whole schema.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.alias!r})"

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        if model._meta.app_label == SESSIONS_APP_LABEL:
            return self.alias
        return None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        if model._meta.app_label == SESSIONS_APP_LABEL:
            return self.alias
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True
