"""``SavingSession``: create, save and touch, with one encode-and-write path.

A save is a version-checked write of a record encoded once into a pooled buffer.
When another request wrote the record since this one loaded it, the three-way
merge of ``hardened_sessions.merge`` applies only this request's changes onto the
latest record, within ``KEY_ATTEMPTS`` (docs/architecture.rst, "Conflict"). A save
never brings back a record that was deleted meanwhile (``UpdateError``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.base import UpdateError

from .. import keys, merge, record, timeutil
from ..exceptions import SessionKeyUnavailable, SessionStoreUnavailable
from ..record import CorruptRecord, Record
from ..signals import Reason, emit, session_conflict_merged, session_created, session_rotated
from .core import Handle, Step, Steps, Token, hash_prefix, logger
from .load import LoadingSession

__all__ = ["SavingSession"]


class SavingSession(LoadingSession):
    """The save policy (see the module docstring)."""

    def _write_steps(
        self,
        buf: Any,
        write: str,
        store_key: str,
        rec: Record,
        *token: Token,
    ) -> Steps[Token | None]:
        """The one write path: ``rec`` was encoded into the pooled ``buf`` (size bound
        checked on those exact bytes; under the session's lock when it snapshots the
        live dict); the store gets a view of those bytes, released afterwards.
        ``write`` is ``write_new``, or ``write_update`` with the expected ``token``
        (the record it replaces)."""
        view = buf.view()
        try:
            answer: Token | None = yield Step(write, (store_key, view, rec, *token))
            return answer
        finally:
            view.release()

    def _create_steps(self) -> Steps[None]:
        """Store the current data under a fresh key (``created`` starts now)."""
        with self._write_lock:
            config = self.config
            with self.pool.buffer() as buf:
                for _ in range(config.key_attempts):
                    session_key = keys.generate_key()
                    store_key = keys.store_key(session_key)
                    with self._lock:
                        data = self._get_session(no_load=True)
                        rec = self._fresh_record(data, timeutil.now(), base=None)
                        buf.wipe()
                        record.encode(rec, store_key, buf, config.max_bytes)
                    token = yield from self._write_steps(buf, "write_new", store_key, rec)
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

    def _save_steps(self, must_create: bool) -> Steps[None]:
        with self._write_lock:
            with self._lock:
                base = self._record
                session_key = self.session_key
            if must_create or base is None or not keys.is_well_formed(session_key):
                # A key with no record behind it (unknown, expired, or set by hand) never
                # gets one created under it: a save issues a fresh key.
                yield from self._create_steps()
                return
            assert session_key is not None
            yield from self._update_steps(keys.store_key(session_key), base, touch_only=False)

    def _touch_steps(self) -> Steps[None]:
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
            yield from self._update_steps(keys.store_key(session_key), base, touch_only=True)

    def _update_steps(self, store_key: str, base: Record, *, touch_only: bool) -> Steps[None]:
        config = self.config
        with self.pool.buffer() as buf:
            with self._lock:
                try:
                    data = base.data if touch_only else self._session_cache
                except AttributeError:
                    # load() was called directly, without going through the dict.
                    data = self._session_cache = base.data
                rec = self._fresh_record(data, timeutil.now(), base=base)
                cleared = self._cleared
                # A loaded or saved record always comes with its token.
                token = self._token if self._token is not None else Token(base.version)
                record.encode(rec, store_key, buf, config.max_bytes)
            new_token = yield from self._write_steps(buf, "write_update", store_key, rec, token)
        if new_token is not None:
            self._saved(rec, new_token, base=base, snapshot=rec)
            return
        if touch_only:
            # Someone else wrote meanwhile (their write counts as activity), unless the
            # record is gone: then the session ended and the caller must know.
            if (yield Step("read", (store_key,))) is None:
                raise UpdateError("The session was deleted before its activity was recorded.")
            return
        yield from self._merge_steps(store_key, base, rec, cleared)

    def _merge_steps(
        self, store_key: str, base: Record, ours: Record, cleared: bool
    ) -> Steps[None]:
        """Apply this request's changes onto the latest stored record (version conflict;
        the merge itself is ``hardened_sessions.merge``)."""
        config = self.config
        base_data = record.decode_payload_data(base.payload)
        our_data = record.decode_payload_data(ours.payload)  # JSON-normalised snapshot
        for _ in range(config.key_attempts):
            with self.pool.buffer() as buf, self._conflict_guard():
                found = yield Step("read_for_update", (store_key,))
                latest = self._decode_live(store_key, found)
                if latest is None:
                    raise UpdateError("The session was deleted before this request saved it.")
                assert found is not None
                token = Token(latest.version, found[1])
                merged = merge.merge_onto_latest(base_data, our_data, latest.data, cleared=cleared)
                rec = self._fresh_record(merged, timeutil.now(), base=latest)
                record.encode(rec, store_key, buf, config.max_bytes)
                new_token = yield from self._write_steps(buf, "write_update", store_key, rec, token)
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

    def _decode_live(self, store_key: str, found: tuple[bytes, Handle] | None) -> Record | None:
        if found is None:
            return None
        try:
            latest = record.decode(found[0], store_key, self.config.max_bytes)
        except CorruptRecord as exc:
            self._reject(store_key, exc.reason, suspicious=True, reason=Reason.BAD_RECORD)
            return None
        if self._past_deadline(latest, timeutil.now()):
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
                session = self._get_session(no_load=True)
                merge.apply(
                    session,
                    merge.their_changes_for_memory(
                        record.decode_payload_data(base.payload),
                        record.decode_payload_data(snapshot.payload),
                        others.data,
                        session,
                    ),
                )
            self._record = rec
            self._token = token
            self._cleared = False
