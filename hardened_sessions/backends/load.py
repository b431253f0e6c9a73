"""``LoadingSession``: the load policy, and ``exists``.

A key that is not of the form this package issues never reaches the store. A record
read is checked before anything is parsed (size), then its signature (over the store
key and the payload), its JSON and every deadline, whatever the store's own TTL said;
a record that fails any check is no session. The outcome becomes the object's state
only if no dict exists yet (:meth:`LoadingSession._adopt`), so a load that finishes
late never rewinds a session that was saved, rotated or flushed meanwhile.
"""

from __future__ import annotations

from typing import Any

from .. import keys, record, timeutil
from ..record import CorruptRecord, Record
from ..signals import Reason, emit, session_expired
from .core import EngineCore, Step, Steps, Token, hash_prefix

__all__ = ["LoadingSession"]


class LoadingSession(EngineCore):
    """The load policy (see the module docstring)."""

    def _adopt(
        self, session_key: str | None, rec: Record | None, token: Token | None = None
    ) -> dict[str, Any]:
        """Make a load's outcome the object's state, unless the object already has a
        dict (another thread's load finished first, or the session was saved, rotated
        or flushed meanwhile): then the load was only a read, and the record that dict
        came from stays the base of the next save. No record: the next save issues a
        fresh key."""
        data: dict[str, Any] = rec.data if rec is not None else {}
        with self._lock:
            if "_session_cache" in self.__dict__ or self._session_key != session_key:
                return data
            if rec is None or token is None:
                self._session_key = None
                self._record = None
                self._token = None
            else:
                self._record = rec
                self._token = token
                self._cleared = False
            # The dict and its record are installed together, so a second load in
            # flight cannot pair this dict with its own (maybe newer) record.
            self._session_cache = data
            return data

    def _load_steps(self) -> Steps[dict[str, Any]]:
        session_key = self.session_key
        if not keys.is_well_formed(session_key):
            # Not a key this package issued: never touch the store with it.
            return self._adopt(session_key, None)
        assert session_key is not None
        store_key = keys.store_key(session_key)
        found = yield Step("read", (store_key,))
        if found is None:
            return self._adopt(session_key, None)
        raw, handle = found
        try:
            rec = record.decode(raw, store_key, self.config.max_bytes)
        except CorruptRecord as exc:
            self._reject(store_key, exc.reason, suspicious=True, reason=Reason.BAD_RECORD)
            return self._adopt(session_key, None)
        if self._past_deadline(rec, timeutil.now()):
            self._reject(
                store_key, "past its deadline", suspicious=False, reason=Reason.PAST_DEADLINE
            )
            yield Step("discard", (store_key,))
            emit(
                session_expired,
                type(self),
                key_hash_prefix=hash_prefix(store_key),
                where="load",
                reason=Reason.PAST_DEADLINE,
            )
            return self._adopt(session_key, None)
        token = Token(rec.version, handle)  # the record verified: its version is known
        data = self._adopt(session_key, rec, token)
        self._loaded(store_key, raw, rec, token)
        return data

    def _loaded(self, store_key: str, raw: bytes, rec: Record, token: Token) -> None:
        """Hook: a record was read and accepted; ``token`` carries the handle ``_read``
        gave (the cached_db engine fills its cache)."""

    def _exists_steps(self, session_key: str | None) -> Steps[bool]:
        if not keys.is_well_formed(session_key):
            return False
        assert session_key is not None
        store_key = keys.store_key(session_key)
        found = yield Step("read", (store_key,))
        if found is None:
            return False
        try:
            rec = record.decode(found[0], store_key, self.config.max_bytes)
        except CorruptRecord:
            return False
        return not self._past_deadline(rec, timeutil.now())
