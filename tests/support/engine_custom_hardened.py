"""A project's own session engine built on a hardened one:
``SESSION_ENGINE = "tests.support.engine_custom_hardened"``."""

from __future__ import annotations

from hardened_sessions.backends.db import SessionStore as HardenedDBStore


class SessionStore(HardenedDBStore):
    """A project's subclass of the hardened db engine (adds nothing)."""
