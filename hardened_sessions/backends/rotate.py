"""``RotatingSession``: delete, flush and ``cycle_key``, failing closed.

``cycle_key`` deletes the old record before storing the new one, and refuses what
the new one would refuse (size, JSON) before deleting anything: a rotation never
leaves two live keys, and one that cannot complete leaves an empty session and a
503 (docs/architecture.rst, "Rotation").
"""

from __future__ import annotations

from .. import keys, record, timeutil
from ..exceptions import SessionRotationFailed, SessionStoreUnavailable
from ..signals import Reason, emit, session_revoked
from .core import Step, Steps, hash_prefix, logger
from .save import SavingSession

__all__ = ["RotatingSession"]


class RotatingSession(SavingSession):
    """The delete and rotation policy (see the module docstring)."""

    def _delete_steps(self, session_key: str | None) -> Steps[None]:
        with self._write_lock:
            if session_key is None:
                session_key = self.session_key
            if not keys.is_well_formed(session_key):
                return
            assert session_key is not None
            store_key = keys.store_key(session_key)
            if (yield Step("remove", (store_key,))):
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

    def _flush_steps(self) -> Steps[None]:
        """Delete the stored record (failing loudly if the store can't), then forget it."""
        with self._write_lock:
            yield from self._delete_steps(None)
            with self._lock:
                self._session_cache = {}
                self._cleared = True
                self.accessed = True
                self.modified = True
                self._session_key = None
                self._record = None
                self._token = None

    def _cycle_key_steps(self) -> Steps[None]:
        """Move the data to a fresh key, failing closed: never two live keys (docs/architecture.rst,
        "Rotation")."""
        with self._write_lock:
            if self._cached_session(no_load=False) is None:
                # A load is store I/O: never under the session's lock.
                self._keep_loaded((yield from self._load_steps()))
            with self._lock:
                old_key = self.session_key
                had_record = self._record is not None
                data = dict(self._session_cache)
            # Refuse what create() would refuse (over MAX_BYTES, not JSON) before the old
            # record is deleted: a rotation that cannot complete leaves the session as it was.
            with self.pool.buffer() as probe:
                record.encode(
                    self._fresh_record(data, timeutil.now(), base=None),
                    "",
                    probe,
                    self.config.max_bytes,
                )
            existed = True
            if old_key is not None and had_record:
                store_key = keys.store_key(old_key)
                try:
                    existed = yield Step("remove", (store_key,))
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
                yield from self._create_steps()
            except Exception as exc:
                if self._session_key is not None:
                    # The new record is stored and this session holds it: whatever
                    # failed came after the rotation, which must not be undone.
                    raise
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

    def revoke(self, store_key: str) -> bool:
        """Delete the session stored under ``store_key`` (a key hash, as the admin and
        the revocation helpers know it); whether there was one."""
        return self._io(self._remove, store_key)
