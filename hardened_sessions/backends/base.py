"""``HardenedSessionBase``: the policy every engine shares.

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

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

from .. import keys, record
from ..buffers import BufferPool, default_pool
from ..conf import Config, get_config
from ..exceptions import (
    SessionKeyUnavailable,
    SessionRotationFailed,
    SessionStoreUnavailable,
)
from ..record import CorruptRecord, Record
from ..signals import (
    Reason,
    emit,
    session_conflict_merged,
    session_created,
    session_expired,
    session_rejected,
    session_revoked,
    session_rotated,
)

__all__ = ["HardenedSessionBase", "Token", "hash_prefix", "past_deadline"]

logger = logging.getLogger("hardened_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")

# What an engine hands back with a record so that the next write can be
# version-checked (a version number, a memcached cas id, ...). Opaque here.
Token = Any
T = TypeVar("T")
_NOT_GIVEN: Any = object()


def hash_prefix(store_key: str) -> str:
    """The only part of a session's identity that may appear in logs."""
    return store_key[:8]


def past_deadline(rec: Record, now: float, config: Config) -> bool:
    """Past a deadline the record carries, or one the current settings impose (a
    timeout added or shortened after the record was saved applies at once)."""
    if rec.expired(now):
        return True
    if config.absolute_timeout is not None and now >= rec.created + config.absolute_timeout:
        return True
    return config.idle_timeout is not None and now >= rec.activity + config.idle_timeout


def _diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
    return changed, set(old) - set(new)


def _apply(target: dict[str, Any], changed: dict[str, Any], deleted: set[str]) -> None:
    target.update(changed)
    for k in deleted:
        target.pop(k, None)


class HardenedSessionBase(SessionBase):
    """Django's ``SessionBase`` with the hardened save/load/rotate policy.

    Subclasses implement the storage primitives; see the module docstring.
    """

    pool: BufferPool = default_pool
    _session_cache: dict[str, Any]

    def __init__(self, session_key: str | None = None) -> None:
        # What SessionBase.__init__ sets, but for ``serializer`` (see below): a session is
        # built on every request, and importing the serializer is a tenth of a load.
        self._session_key = session_key
        self.accessed = False
        self.modified = False
        self._lock = threading.RLock()
        # Serialises this object's writes to the store; see the module docstring.
        self._write_lock = threading.RLock()
        self._record: Record | None = None
        self._token: Token = None
        self._store_failure: SessionStoreUnavailable | None = None
        self._cleared = False
        # The old key's hash prefix while cycle_key() stores the new record.
        self._rotating_from: str | None = None
        self.rotation_failed = False
        # {"ip": ..., "user_agent": ...} when DEVICE_METADATA is on (set by the middleware).
        self.device: dict[str, str] | None = None

    @cached_property
    def serializer(self) -> Any:
        """``SESSION_SERIALIZER``, for Django's ``encode()``/``decode()`` (records never
        use it: they are JSON by construction)."""
        return import_string(settings.SESSION_SERIALIZER)

    # ------------------------------------------------------------------ primitives
    # Engines implement these. They raise SessionStoreUnavailable when the store
    # cannot answer; any other outcome is a definite answer.

    def _read(self, store_key: str) -> tuple[bytes, Token] | None:
        """The stored bytes and a version token, or ``None`` when nothing is stored."""
        raise NotImplementedError

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        """Store ``data`` only if nothing is stored under ``store_key``; the new token,
        or ``None`` when the key is taken."""
        raise NotImplementedError

    def _write_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        """Replace the record only if it is still the one ``token`` names; the new
        token, or ``None`` when it changed or is gone."""
        raise NotImplementedError

    def _remove(self, store_key: str) -> bool:
        """Delete the record; whether one was there."""
        raise NotImplementedError

    def _conflict_guard(self) -> AbstractContextManager[Any]:
        """Context for the read-merge-write after a version conflict (a transaction
        on databases, so the retry does not race again)."""
        return nullcontext()

    def _read_for_update(self, store_key: str) -> tuple[bytes, Token] | None:
        """``_read`` inside :meth:`_conflict_guard`; engines may lock the row here."""
        return self._read(store_key)

    # ------------------------------------------------------------------ plumbing

    @property
    def config(self) -> Config:
        return get_config()

    @property
    def store_failure(self) -> SessionStoreUnavailable | None:
        """The store failure this session met, if any (the middleware answers 503)."""
        return self._store_failure

    @property
    def record(self) -> Record | None:
        """The record as last loaded or saved (metadata included), or ``None``."""
        return self._record

    def _io(self, operation: Callable[..., T], *args: Any) -> T:
        # One failed store access per request: after it, every further access fails
        # at once instead of waiting on the store again for each request.user lookup.
        failure = self._store_failure
        if failure is not None:
            raise SessionStoreUnavailable(str(failure)) from failure
        try:
            if self.config.metrics:  # the only cost of metrics when off
                from .. import metrics

                return metrics.timed(self, operation, args)
            return operation(*args)
        except SessionStoreUnavailable as exc:
            self._store_failure = exc
            raise

    def _reject(
        self, store_key: str, description: str, *, suspicious: bool, reason: Reason
    ) -> None:
        message = "Session %s… rejected: %s."
        if suspicious:
            security_logger.warning(message, hash_prefix(store_key), description)
        else:
            logger.info(message, hash_prefix(store_key), description)
        emit(
            session_rejected,
            type(self),
            key_hash_prefix=hash_prefix(store_key),
            reason=reason,
            description=description,
        )

    def _fresh_record(self, data: dict[str, Any], now: float, *, base: Record | None) -> Record:
        config = self.config
        now_s = int(now)
        created = base.created if base is not None else now_s
        age = self.get_expiry_age(modification=timezone.now(), expiry=data.get("_session_expiry"))
        return Record(
            user_id=record.user_id_of(data),
            data=data,
            version=(base.version + 1) if base is not None else 1,
            created=created,
            activity=now_s,
            # A far-future set_expiry() is capped, not refused: the record must stay loadable.
            expiry=max(0, min(now_s + int(age), record.MAX_TIMESTAMP)),
            idle_deadline=(now_s + config.idle_timeout) if config.idle_timeout else None,
            absolute_deadline=(created + config.absolute_timeout)
            if config.absolute_timeout
            else None,
        )

    # ------------------------------------------------------------------ the dict, locked

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

    def pop(self, key: str, default: Any = _NOT_GIVEN) -> Any:
        self._get_session()
        with self._lock:
            session = self._session_cache
            self.modified = self.modified or key in session
            if default is _NOT_GIVEN:
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

    async def apop(self, key: str, default: Any = _NOT_GIVEN) -> Any:
        await self._aget_session()
        with self._lock:
            session = self._session_cache
            self.modified = self.modified or key in session
            if default is _NOT_GIVEN:
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

    # ------------------------------------------------------------------ load

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
        if self._past_deadline(rec, time.time()):
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

    def _past_deadline(self, rec: Record, now: float) -> bool:
        return past_deadline(rec, now, self.config)

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
        return not self._past_deadline(rec, time.time())

    # ------------------------------------------------------------------ save

    def create(self) -> None:
        """Store the current data under a fresh key (``created`` starts now)."""
        with self._write_lock:
            config = self.config
            with self.pool.buffer() as buf:
                for _ in range(config.key_attempts):
                    session_key = keys.generate_key()
                    store_key = keys.store_key(session_key)
                    with self._lock:
                        data = self._get_session(no_load=True)
                        rec = self._fresh_record(data, time.time(), base=None)
                        buf.wipe()
                        record.encode(rec, store_key, buf, config.max_bytes)
                    view = buf.view()
                    try:
                        token = self._io(self._write_new, store_key, view, rec)
                    finally:
                        view.release()
                    if token is not None:
                        with self._lock:
                            self._session_key = session_key
                            self._record = rec
                            self._token = token
                            self._cleared = False
                            self.modified = True
                        self._started(store_key, rec)
                        return
            raise SessionKeyUnavailable(
                f"{config.key_attempts} fresh session keys in a row collided with stored "
                "sessions; the random source is not to be trusted."
            )

    def _started(self, store_key: str, rec: Record) -> None:
        sender = type(self)
        old = self._rotating_from
        if old is None:
            if session_created.has_listeners(sender) or self.config.metrics:
                emit(
                    session_created,
                    sender,
                    key_hash_prefix=hash_prefix(store_key),
                    user_id=rec.user_id,
                    reason=Reason.CREATED,
                )
        else:
            emit(
                session_rotated,
                sender,
                key_hash_prefix=hash_prefix(store_key),
                old_key_hash_prefix=old,
                user_id=rec.user_id,
                reason=Reason.ROTATION,
            )

    def save(self, must_create: bool = False) -> None:
        with self._write_lock:
            with self._lock:
                base = self._record
                session_key = self.session_key
            if must_create or base is None or not keys.is_well_formed(session_key):
                # A key with no record behind it (unknown, expired, or set by hand) never
                # gets one created under it: a save issues a fresh key.
                self.create()
                return
            assert session_key is not None
            self._update(keys.store_key(session_key), base, touch_only=False)

    def touch(self) -> None:
        """Record activity (a re-signed record with new deadlines, same data).

        Raises ``UpdateError`` when the session was deleted meanwhile; a conflicting
        save by another request already recorded activity, so that is a success.
        """
        with self._write_lock:
            with self._lock:
                base = self._record
                session_key = self.session_key
            if base is None or not keys.is_well_formed(session_key):
                return
            assert session_key is not None
            self._update(keys.store_key(session_key), base, touch_only=True)

    def _update(self, store_key: str, base: Record, *, touch_only: bool) -> None:
        config = self.config
        with self.pool.buffer() as buf:
            with self._lock:
                try:
                    data = base.data if touch_only else self._session_cache
                except AttributeError:
                    # load() was called directly, without going through the dict.
                    data = self._session_cache = base.data
                rec = self._fresh_record(data, time.time(), base=base)
                cleared = self._cleared
                token = self._token
                record.encode(rec, store_key, buf, config.max_bytes)
            view = buf.view()
            try:
                new_token = self._io(self._write_update, store_key, view, rec, token)
            finally:
                view.release()
        if new_token is not None:
            self._saved(rec, new_token, base=base, snapshot=rec)
            return
        if touch_only:
            # Someone else wrote meanwhile (their write counts as activity), unless the
            # record is gone: then the session ended and the caller must know.
            if self._io(self._read, store_key) is None:
                raise UpdateError("The session was deleted before its activity was recorded.")
            return
        self._merge_and_write(store_key, base, rec, cleared)

    def _merge_and_write(self, store_key: str, base: Record, ours: Record, cleared: bool) -> None:
        """Apply this request's changes onto the latest stored record (version conflict)."""
        config = self.config
        base_data = record.decode_payload_data(base.payload)
        our_data = record.decode_payload_data(ours.payload)  # JSON-normalised snapshot
        if cleared:
            our_changed, our_deleted = our_data, set(base_data) - set(our_data)
        else:
            our_changed, our_deleted = _diff(base_data, our_data)
        for _ in range(config.key_attempts):
            with self.pool.buffer() as buf, self._conflict_guard():
                found = self._io(self._read_for_update, store_key)
                latest = self._decode_live(store_key, found)
                if latest is None:
                    raise UpdateError("The session was deleted before this request saved it.")
                assert found is not None
                token = latest.version if found[1] is None else found[1]
                merged = dict(our_data) if cleared else dict(latest.data)
                if not cleared:
                    _apply(merged, our_changed, our_deleted)
                rec = self._fresh_record(merged, time.time(), base=latest)
                record.encode(rec, store_key, buf, config.max_bytes)
                view = buf.view()
                try:
                    new_token = self._io(self._write_update, store_key, view, rec, token)
                finally:
                    view.release()
            if new_token is not None:
                logger.debug("Merged a concurrent save into session %s….", hash_prefix(store_key))
                self._saved(rec, new_token, base=base, snapshot=ours, others=latest)
                emit(
                    session_conflict_merged,
                    type(self),
                    key_hash_prefix=hash_prefix(store_key),
                    user_id=rec.user_id,
                    reason=Reason.CONFLICT,
                )
                return
        raise SessionStoreUnavailable(
            f"Session {hash_prefix(store_key)}… kept changing under this request's save; "
            f"gave up after {config.key_attempts} attempts."
        )

    def _decode_live(self, store_key: str, found: tuple[bytes, Token] | None) -> Record | None:
        if found is None:
            return None
        try:
            latest = record.decode(found[0], store_key, self.config.max_bytes)
        except CorruptRecord as exc:
            self._reject(store_key, exc.reason, suspicious=True, reason=Reason.BAD_RECORD)
            return None
        if self._past_deadline(latest, time.time()):
            return None
        return latest

    def _saved(
        self,
        rec: Record,
        token: Token,
        *,
        base: Record,
        snapshot: Record,
        others: Record | None = None,
    ) -> None:
        with self._lock:
            if others is not None:
                # Bring the other requests' changes into memory too, keeping whatever
                # this request changed since (so the next save diffs against the truth).
                base_data = record.decode_payload_data(base.payload)
                snapshot_data = record.decode_payload_data(snapshot.payload)
                theirs_changed, theirs_deleted = _diff(base_data, others.data)
                ours_changed, ours_deleted = _diff(base_data, snapshot_data)
                for k in set(ours_changed) | ours_deleted:
                    theirs_changed.pop(k, None)
                    theirs_deleted.discard(k)
                session = self._get_session(no_load=True)
                # A key changed in memory after the snapshot was taken (by this thread
                # or another one) is newer than both records: leave it alone.
                changed_since = {
                    k
                    for k in set(theirs_changed) | theirs_deleted
                    if session.get(k, _NOT_GIVEN) != snapshot_data.get(k, _NOT_GIVEN)
                }
                _apply(
                    session,
                    {k: v for k, v in theirs_changed.items() if k not in changed_since},
                    theirs_deleted - changed_since,
                )
            self._record = rec
            self._token = token
            self._cleared = False

    # ------------------------------------------------------------------ delete, rotate

    def delete(self, session_key: str | None = None) -> None:
        with self._write_lock:
            if session_key is None:
                session_key = self.session_key
            if not keys.is_well_formed(session_key):
                return
            assert session_key is not None
            store_key = keys.store_key(session_key)
            if self._io(self._remove, store_key):
                rec = self._record if session_key == self.session_key else None
                emit(
                    session_revoked,
                    type(self),
                    key_hash_prefix=hash_prefix(store_key),
                    user_id=rec.user_id if rec is not None else None,
                    reason=Reason.LOGOUT,
                )
            # The object keeps its record as the base of a next save, which then meets
            # the missing record and raises UpdateError, as Django's db engine does.
            # Forgetting the record would turn that save into a create: the deleted
            # session's data (its user included) stored again under a fresh key.

    def flush(self) -> None:
        """Delete the stored record (failing loudly if the store can't), then forget it."""
        with self._write_lock:
            self.delete()
            with self._lock:
                self._session_cache = {}
                self._cleared = True
                self.accessed = True
                self.modified = True
                self._session_key = None
                self._record = None
                self._token = None

    def cycle_key(self) -> None:
        """Move the data to a fresh key, failing closed (docs/design.rst: never two live keys)."""
        with self._write_lock:
            self._get_session()  # a load is store I/O: before the lock
            with self._lock:
                old_key = self.session_key
                had_record = self._record is not None
                data = dict(self._session_cache)
            # Refuse what create() would refuse (over MAX_BYTES, not JSON) before the old
            # record is deleted: a rotation that cannot complete leaves the session as it was.
            with self.pool.buffer() as probe:
                record.encode(
                    self._fresh_record(data, time.time(), base=None),
                    "",
                    probe,
                    self.config.max_bytes,
                )
            existed = True
            if old_key is not None and had_record:
                store_key = keys.store_key(old_key)
                try:
                    existed = self._io(self._remove, store_key)
                except SessionStoreUnavailable as exc:
                    self.rotation_failed = True
                    raise SessionRotationFailed(
                        "The old session could not be deleted, so the key was not rotated."
                    ) from exc
                if not existed:
                    # Revoked or logged out elsewhere meanwhile: carry nothing over.
                    logger.info(
                        "Session %s… was gone at rotation; starting empty.",
                        hash_prefix(store_key),
                    )
            with self._lock:
                if not existed:
                    self._session_cache = {}
                # Otherwise the live dict moves to the new key as it is now: a write
                # another thread made while the old record was being deleted is this
                # session's data too, and lands in the new record.
                self._session_key = None
                self._record = None
                self._token = None
                self._cleared = False
            rotated = had_record and existed and old_key is not None
            self._rotating_from = (
                hash_prefix(keys.store_key(old_key)) if rotated and old_key is not None else None
            )
            try:
                self.create()
            except Exception as exc:
                # The old record is gone: whatever stopped the new one (the store, the
                # random source, data another thread made too large meanwhile), the
                # session must not keep data it can no longer be trusted to hold.
                with self._lock:
                    self._session_cache = {}
                    self._session_key = None
                    self.modified = False
                    self.rotation_failed = True
                if self._rotating_from is not None:
                    emit(
                        session_revoked,
                        type(self),
                        key_hash_prefix=self._rotating_from,
                        user_id=record.user_id_of(data),
                        reason=Reason.ROTATION,
                        description="the rotation failed: the old session was deleted and "
                        "no new one could be stored",
                    )
                raise SessionRotationFailed(
                    "The old session was deleted but the new one could not be stored; "
                    "the session is now empty."
                ) from exc
            finally:
                self._rotating_from = None

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    async def aflush(self) -> None:
        await sync_to_async(self.flush)()

    async def atouch(self) -> None:
        await sync_to_async(self.touch)()

    # ------------------------------------------------------------------ policy helpers

    def needs_touch(self, now: float | None = None) -> bool:
        """True when ``IDLE_TIMEOUT`` is on and the last recorded activity is older than
        ``TOUCH_INTERVAL`` (or on every request without one)."""
        config = self.config
        rec = self._record
        if config.idle_timeout is None or rec is None or self.modified:
            return False
        if config.touch_interval is None:
            return True
        return (now if now is not None else time.time()) - rec.activity >= config.touch_interval

    def cookie_max_age(self) -> int:
        """Seconds the cookie should live: the expiry age, cut at the absolute deadline."""
        age = int(self.get_expiry_age())
        rec = self._record
        if rec is not None and rec.absolute_deadline is not None:
            age = min(age, rec.absolute_deadline - int(time.time()))
        return max(age, 0)

    def revoke(self, store_key: str) -> bool:
        """Delete the session stored under ``store_key`` (a key hash, as the admin and
        the revocation helpers know it); whether there was one."""
        return self._io(self._remove, store_key)

    def _get_new_session_key(self) -> str:
        # No exists() round trip: the atomic create detects collisions.
        return keys.generate_key()

    async def _aget_new_session_key(self) -> str:
        return keys.generate_key()
