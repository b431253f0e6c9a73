"""The session mapping: Django's session dict, behind a lock, sync and async side by side.

Every dict operation looks the dict up under the session's lock, so a write never
lands in a dict that a rotation or a flush has just replaced, and two threads
sharing one session object see each other's writes (docs/architecture.rst, "Modify").
Store I/O (the first load) happens outside the lock, and the lock is never held
across an ``await``: the async methods take it only around the dict operation.

Loading is the engine's business: this class calls ``load()`` / ``aload()`` and
keeps whichever dict was installed first (``HardenedSessionBase._adopt``).
"""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.sessions.backends.base import SessionBase

__all__ = ["NOT_GIVEN", "SessionMapping"]

# ``pop()``'s "no default given", distinct from None.
NOT_GIVEN: Any = object()


class SessionMapping(SessionBase):
    """The dict half of a hardened session (see the module docstring)."""

    _lock: threading.RLock
    _session_cache: dict[str, Any]

    def _cached_session(self, no_load: bool) -> dict[str, Any] | None:
        """The session dict if no load is needed (an empty one for a new session), else
        ``None``."""
        self.accessed = True
        with self._lock:
            # ``_session_cache`` is unset until loaded (as in SessionBase); looked up in
            # the instance dict, because a caught AttributeError costs more.
            cached: dict[str, Any] | None = self.__dict__.get("_session_cache")
            if cached is not None:
                return cached
            if self.session_key is None or no_load:
                self._session_cache = {}
                return self._session_cache
        return None

    def _keep_loaded(self, data: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            # Another thread finished loading first: keep its dict.
            session: dict[str, Any] = self.__dict__.setdefault("_session_cache", data)
            return session

    def _get_session(self, no_load: bool = False) -> dict[str, Any]:
        session = self._cached_session(no_load)
        if session is not None:
            return session
        return self._keep_loaded(self.load())  # store I/O outside the lock

    async def _aget_session(self, no_load: bool = False) -> dict[str, Any]:
        session = self._cached_session(no_load)
        if session is not None:
            return session
        return self._keep_loaded(await self.aload())

    _session = property(_get_session)

    def __contains__(self, key: object) -> bool:
        self._get_session()
        with self._lock:
            return key in self._session_cache

    def __getitem__(self, key: str) -> Any:
        self._get_session()
        with self._lock:
            return self._session_cache[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._get_session()
        with self._lock:
            # Looked up under the lock: a rotation or flush may have replaced the dict.
            self._session_cache[key] = value
            self.modified = True

    def __delitem__(self, key: str) -> None:
        self._get_session()
        with self._lock:
            del self._session_cache[key]
            self.modified = True

    def get(self, key: str, default: Any = None) -> Any:
        self._get_session()
        with self._lock:
            return self._session_cache.get(key, default)

    def pop(self, key: str, default: Any = NOT_GIVEN) -> Any:
        self._get_session()
        with self._lock:
            session = self._session_cache
            self.modified = self.modified or key in session
            if default is NOT_GIVEN:
                return session.pop(key)
            return session.pop(key, default)

    def setdefault(self, key: str, value: Any) -> Any:  # type: ignore[override]
        self._get_session()
        with self._lock:
            session = self._session_cache
            if key in session:
                return session[key]
            session[key] = value
            self.modified = True
            return value

    def update(self, dict_: Any) -> None:  # type: ignore[override]
        self._get_session()
        with self._lock:
            self._session_cache.update(dict_)
            self.modified = True

    def has_key(self, key: str) -> bool:
        return key in self

    def keys(self) -> Any:
        self._get_session()
        with self._lock:
            return dict(self._session_cache).keys()

    def values(self) -> Any:
        self._get_session()
        with self._lock:
            return dict(self._session_cache).values()

    def items(self) -> Any:
        self._get_session()
        with self._lock:
            return dict(self._session_cache).items()

    def clear(self) -> None:
        with self._lock:
            self._session_cache = {}
            self._cleared = True
            self.accessed = True
            self.modified = True

    def is_empty(self) -> bool:
        with self._lock:
            return super().is_empty()

    async def aset(self, key: str, value: Any) -> None:
        await self._aget_session()
        with self._lock:
            self._session_cache[key] = value
            self.modified = True

    async def aget(self, key: str, default: Any = None) -> Any:
        await self._aget_session()
        with self._lock:
            return self._session_cache.get(key, default)

    async def apop(self, key: str, default: Any = NOT_GIVEN) -> Any:
        await self._aget_session()
        with self._lock:
            session = self._session_cache
            self.modified = self.modified or key in session
            if default is NOT_GIVEN:
                return session.pop(key)
            return session.pop(key, default)

    async def asetdefault(self, key: str, value: Any) -> Any:
        await self._aget_session()
        with self._lock:
            session = self._session_cache
            if key in session:
                return session[key]
            session[key] = value
            self.modified = True
            return value

    async def aupdate(self, dict_: Any) -> None:
        await self._aget_session()
        with self._lock:
            self._session_cache.update(dict_)
            self.modified = True

    async def ahas_key(self, key: str) -> bool:
        await self._aget_session()
        with self._lock:
            return key in self._session_cache

    async def akeys(self) -> Any:
        await self._aget_session()
        with self._lock:
            return dict(self._session_cache).keys()

    async def avalues(self) -> Any:
        await self._aget_session()
        with self._lock:
            return dict(self._session_cache).values()

    async def aitems(self) -> Any:
        await self._aget_session()
        with self._lock:
            return dict(self._session_cache).items()

    async def adelete_test_cookie(self) -> None:
        await self.apop(self.TEST_COOKIE_NAME)
