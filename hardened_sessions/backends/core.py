"""``EngineCore``: what every hardened engine holds, and the primitives it implements.

The state of one session object (its record, the version token of the next write,
the store failure it met), the five storage primitives an engine implements (and
their async twins, for stores with a native async client), and the plumbing the
load, save and rotation policies share (``_io``, ``_reject``, ``_fresh_record``).

The policies (``load.py``, ``save.py``, ``rotate.py``) are written once, as
generators that yield each store access they need as a :class:`Step` and receive
its answer (or its exception) back. Two drivers run them: :meth:`EngineCore._drive`
with the sync primitives, :meth:`EngineCore._adrive` with the async ones, so the
sync and the async paths take every decision in the same code.
docs/architecture.rst walks one request through them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple, TypeVar

from django.conf import settings
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

from .. import keys, record, timeutil
from ..buffers import BufferPool, default_pool
from ..conf import Config, get_config
from ..exceptions import SessionStoreUnavailable
from ..record import Record
from ..signals import Reason, adeferred, deferred, emit, session_rejected
from ..stores.token import Handle, Token
from .mapping import SessionMapping

__all__ = ["EngineCore", "Handle", "Step", "Steps", "Token", "hash_prefix", "past_deadline"]

logger = logging.getLogger("hardened_sessions")
security_logger = logging.getLogger("django.security.SuspiciousSession")

T = TypeVar("T")


class Step(NamedTuple):
    """One store access a policy asks its driver for: the primitive's name without
    its underscore (``read``, ``read_for_update``, ``write_new``, ``write_update``,
    ``remove``, or ``discard``: a best-effort ``remove`` whose failure is only
    logged) and its arguments."""

    primitive: str
    args: tuple[Any, ...]


# A policy: yields the Steps it needs, is sent each one's answer, returns its result.
Steps = Generator[Step, Any, T]


def hash_prefix(store_key: str) -> str:
    """The only part of a session's identity that may appear in logs and signals: its
    handle, the first 16 hex digits of the key's SHA-256 (the admin's row id, the
    handle of the sessions pages)."""
    return store_key[:16]


def past_deadline(rec: Record, now: float, config: Config) -> bool:
    """Past a deadline the record carries, or one the current settings impose (a
    timeout added or shortened after the record was saved applies at once)."""
    if rec.expired(now):
        return True
    if config.absolute_timeout is not None and now >= rec.created + config.absolute_timeout:
        return True
    return config.idle_timeout is not None and now >= rec.activity + config.idle_timeout


class EngineCore(SessionMapping):
    """Session state, storage primitives and shared plumbing (see the module docstring)."""

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
        self._token: Token | None = None
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

    # A read answers the stored bytes and the store's own compare-and-set handle of
    # them (a :data:`Handle`: memcached's cas unique, a row's version, or ``None``);
    # the load policy builds the :class:`Token` of the next write once the record
    # verified (``Token(record.version, handle)``). Writes take and return tokens.

    def _read(self, store_key: str) -> tuple[bytes, Handle] | None:
        """The stored bytes and the store's handle, or ``None`` when nothing is stored."""
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

    def _read_for_update(self, store_key: str) -> tuple[bytes, Handle] | None:
        """``_read`` inside :meth:`_conflict_guard`; engines may lock the row here."""
        return self._read(store_key)

    # Async twins, for engines whose store has a native async client (``native_async``);
    # the others run the sync policy in a thread, as Django's own engines do.

    @property
    def native_async(self) -> bool:
        """Whether the async primitives below talk to the store natively."""
        return False

    async def _aread(self, store_key: str) -> tuple[bytes, Handle] | None:
        raise NotImplementedError

    async def _awrite_new(self, store_key: str, data: memoryview, rec: Record) -> Token | None:
        raise NotImplementedError

    async def _awrite_update(
        self, store_key: str, data: memoryview, rec: Record, token: Token
    ) -> Token | None:
        raise NotImplementedError

    async def _aremove(self, store_key: str) -> bool:
        raise NotImplementedError

    async def _aread_for_update(self, store_key: str) -> tuple[bytes, Handle] | None:
        return await self._aread(store_key)

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

    def _refuse_after_failure(self) -> None:
        # One failed store access per request: after it, every further access fails
        # at once instead of waiting on the store again for each request.user lookup.
        failure = self._store_failure
        if failure is not None:
            raise SessionStoreUnavailable(str(failure)) from failure

    def _io(self, operation: Callable[..., T], *args: Any) -> T:
        self._refuse_after_failure()
        try:
            if self.config.metrics:  # the only cost of metrics when off
                from .. import metrics

                return metrics.timed(self, operation, args)
            return operation(*args)
        except SessionStoreUnavailable as exc:
            self._store_failure = exc
            raise

    def _discard(self, store_key: str) -> None:
        """Best-effort delete of a dead record (the store also expires it)."""
        try:
            self._remove(store_key)
        except SessionStoreUnavailable:
            logger.warning("Could not delete expired session %s….", hash_prefix(store_key))

    async def _adiscard(self, store_key: str) -> None:
        try:
            await self._aremove(store_key)
        except SessionStoreUnavailable:
            logger.warning("Could not delete expired session %s….", hash_prefix(store_key))

    # ------------------------------------------------------------------ the drivers

    def _drive(self, steps: Steps[T]) -> T:
        """Run a policy with the sync primitives; the signals it emits are sent once it
        is done (:func:`~hardened_sessions.signals.deferred`)."""
        with deferred():
            return self._drive_steps(steps)

    def _drive_steps(self, steps: Steps[T]) -> T:
        answer: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            error = None
            try:
                if step.primitive == "discard":
                    self._discard(*step.args)
                    answer = None
                else:
                    answer = self._io(getattr(self, "_" + step.primitive), *step.args)
            except BaseException as exc:  # handed to the policy, which decides
                answer, error = None, exc

    async def _adrive(self, steps: Steps[T]) -> T:
        """Run a policy with the async primitives (``native_async`` engines). A
        cancellation during a store access reaches the policy like any error, so its
        locks and buffers are released. The signals the policy emits are sent in a
        thread once it is done (:func:`~hardened_sessions.signals.adeferred`)."""
        async with adeferred():
            return await self._adrive_steps(steps)

    async def _adrive_steps(self, steps: Steps[T]) -> T:
        answer: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            error = None
            try:
                if step.primitive == "discard":
                    await self._adiscard(*step.args)
                    answer = None
                else:
                    answer = await self._aio(step.primitive, step.args)
            except BaseException as exc:
                answer, error = None, exc

    async def _aio(self, primitive: str, args: tuple[Any, ...]) -> Any:
        """:meth:`_io` for an async primitive."""
        self._refuse_after_failure()
        operation = getattr(self, "_a" + primitive)
        try:
            if self.config.metrics:
                from .. import metrics

                return await metrics.atimed(self, "_" + primitive, operation, args)
            return await operation(*args)
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

    # ------------------------------------------------------------------ policy helpers

    def _past_deadline(self, rec: Record, now: float) -> bool:
        return past_deadline(rec, now, self.config)

    def needs_touch(self, now: float | None = None) -> bool:
        """True when ``IDLE_TIMEOUT`` is on and the last recorded activity is older than
        ``TOUCH_INTERVAL`` (or on every request without one)."""
        config = self.config
        rec = self._record
        if config.idle_timeout is None or rec is None or self.modified:
            return False
        if config.touch_interval is None:
            return True
        return (now if now is not None else timeutil.now()) - rec.activity >= config.touch_interval

    def cookie_max_age(self) -> int:
        """Seconds the cookie should live: the expiry age, cut at the absolute deadline."""
        age = int(self.get_expiry_age())
        rec = self._record
        if rec is not None and rec.absolute_deadline is not None:
            age = min(age, rec.absolute_deadline - int(timeutil.now()))
        return max(age, 0)

    def _get_new_session_key(self) -> str:
        # No exists() round trip: the atomic create detects collisions.
        return keys.generate_key()

    async def _aget_new_session_key(self) -> str:
        return keys.generate_key()
