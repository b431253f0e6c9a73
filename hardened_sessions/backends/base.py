"""``HardenedSessionBase``: the policy every engine shares, and its load.

The policy is in parts, each class building on the one before: the locked session
dict (``mapping.py``), the object's state, primitives and plumbing (``core.py``),
create/save/touch with the merge (``save.py``, ``hardened_sessions/merge.py``),
delete and rotation (``rotate.py``), and here the load and the class engines
subclass (docs/architecture.rst).

Engines only move opaque, signed record bytes in and out of a store through
five small primitives (:meth:`_read`, :meth:`_write_new`, :meth:`_write_update`,
:meth:`_remove`, :meth:`_conflict_guard`). Everything that decides whether a
session is trustworthy lives here, once:

* the key format is checked before any store access;
* a record is encoded once, size-checked on those exact bytes, and those bytes
  are what the store receives;
* every load re-verifies the signature and every deadline, whatever the store's
  own TTL said;
* a save is a version-checked write: when another request saved in between,
  only the keys *this* request changed or deleted are applied onto the latest
  record (a flag removed elsewhere stays removed), within ``KEY_ATTEMPTS``;
* a save never brings back a record that was deleted meanwhile (``UpdateError``);
* ``cycle_key`` deletes the old record first and fails closed;
* a store failure is remembered for the rest of the request.

Thread safety: in-memory reads and writes, and the snapshot a save encodes,
hold the session's lock; store I/O happens outside it, and it is never held
across an ``await`` (the async methods run the sync ones in a thread, and the
async dict helpers take the lock only around the dict operation). Every dict
operation looks the dict up under that lock, so a write never lands in a dict that
a rotation or a flush has just replaced.

The operations that change the stored record (save, create, touch, delete, flush,
cycle_key) of one session object run one at a time, under a second lock that
reads and writes of the dict never take. Two threads saving one object would
otherwise race each other as if they were two requests: a save whose snapshot is
older than a record this same object just wrote would merge its stale values over
the newer ones, store and memory alike, and two first saves would each create a
key. In turn each save encodes a snapshot at least as new as the previous one and
writes it onto the record this object last wrote. A load changes the object's
record only while no dict exists yet (the first load), so a load that finishes late
never rewinds it.
"""

from __future__ import annotations

from typing import Any

from .. import keys, record, timeutil
from ..exceptions import SessionStoreUnavailable
from ..record import CorruptRecord, Record
from ..signals import Reason, emit, session_expired
from .core import Token, hash_prefix, logger, past_deadline
from .rotate import RotatingSession

__all__ = ["HardenedSessionBase", "Token", "hash_prefix", "past_deadline"]


class HardenedSessionBase(RotatingSession):
    """Django's ``SessionBase`` with the hardened save/load/rotate policy.

    Subclasses implement the storage primitives of :class:`~.core.EngineCore`; see
    the module docstring.
    """

    def _adopt(
        self, session_key: str | None, rec: Record | None, token: Token = None
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
            if rec is None:
                self._session_key = None
                self._record = None
                self._token = None
            else:
                self._record = rec
                # Stores whose token is the record's version may leave it to the record.
                self._token = rec.version if token is None else token
                self._cleared = False
            # The dict and its record are installed together, so a second load in
            # flight cannot pair this dict with its own (maybe newer) record.
            self._session_cache = data
            return data

    def load(self) -> dict[str, Any]:
        session_key = self.session_key
        if not keys.is_well_formed(session_key):
            # Not a key this package issued: never touch the store with it.
            return self._adopt(session_key, None)
        assert session_key is not None
        store_key = keys.store_key(session_key)
        found = self._io(self._read, store_key)
        if found is None:
            return self._adopt(session_key, None)
        raw, token = found
        try:
            rec = record.decode(raw, store_key, self.config.max_bytes)
        except CorruptRecord as exc:
            self._reject(store_key, exc.reason, suspicious=True, reason=Reason.BAD_RECORD)
            return self._adopt(session_key, None)
        if self._past_deadline(rec, timeutil.now()):
            self._reject(
                store_key, "past its deadline", suspicious=False, reason=Reason.PAST_DEADLINE
            )
            self._discard(store_key)
            emit(
                session_expired,
                type(self),
                key_hash_prefix=hash_prefix(store_key),
                where="load",
                reason=Reason.PAST_DEADLINE,
            )
            return self._adopt(session_key, None)
        data = self._adopt(session_key, rec, token)
        self._loaded(store_key, raw, rec, token)
        return data

    def _loaded(self, store_key: str, raw: bytes, rec: Record, token: Token) -> None:
        """Hook: a record was read and accepted, with the token ``_read`` gave (the
        cached_db engine fills its cache)."""

    def _discard(self, store_key: str) -> None:
        """Best-effort delete of a dead record (the store also expires it)."""
        try:
            self._remove(store_key)
        except SessionStoreUnavailable:
            logger.warning("Could not delete expired session %s….", hash_prefix(store_key))

    def exists(self, session_key: str | None) -> bool:
        if not keys.is_well_formed(session_key):
            return False
        assert session_key is not None
        store_key = keys.store_key(session_key)
        found = self._io(self._read, store_key)
        if found is None:
            return False
        try:
            rec = record.decode(found[0], store_key, self.config.max_bytes)
        except CorruptRecord:
            return False
        return not self._past_deadline(rec, timeutil.now())
