"""A project's own session engine, built on Django's ``SessionBase`` only.

``SESSION_ENGINE = "tests.support.engine_custom_stock"``: what a project that wrote its own
engine (not on ``HardenedSessionBase``) runs under ``HardenedSessionMiddleware``. The
records live in a process-local dict. The class also has methods and attributes whose
names the hardened engines use (``needs_touch``, ``touch``, ``device``,
``store_failure``, ``rotation_failed``, ``cookie_max_age``), with other meanings, so
that a middleware that asks "does it quack like a hardened session?" instead of "is
it one?" is caught.
"""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError

_lock = threading.Lock()
records: dict[str, dict[str, Any]] = {}
# What the middleware must never call on this engine.
calls: list[str] = []


class SessionStore(SessionBase):
    # Same names as the hardened engines' hooks, unrelated meanings.
    device = "not a dict"
    store_failure = RuntimeError("not a store failure")
    rotation_failed = True

    def needs_touch(self) -> bool:
        calls.append("needs_touch")
        return True

    def touch(self) -> None:
        calls.append("touch")

    def cookie_max_age(self) -> int:
        calls.append("cookie_max_age")
        return 1

    def load(self) -> dict[str, Any]:
        with _lock:
            data = records.get(self.session_key or "")
        if data is None:
            self._session_key = None
            return {}
        return dict(data)

    def exists(self, session_key: str | None) -> bool:
        with _lock:
            return session_key in records

    def create(self) -> None:
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            self.create()
            return
        data = dict(self._get_session(no_load=must_create))
        with _lock:
            if must_create and self.session_key in records:
                raise CreateError
            if not must_create and self.session_key not in records:
                raise UpdateError
            records[self.session_key] = data

    def delete(self, session_key: str | None = None) -> None:
        key = session_key if session_key is not None else self.session_key
        with _lock:
            records.pop(key or "", None)

    @classmethod
    def clear_expired(cls) -> None:
        pass
