"""``HardenedSessionBase``: the policy every engine shares, sync and async side by side.

The policy is in parts, each class building on the one before: the locked session
dict (``mapping.py``), the object's state, primitives and the two drivers
(``core.py``), load (``load.py``), create/save/touch with the merge (``save.py``,
``hardened_sessions/merge.py``), delete and rotation (``rotate.py``), and here the
public methods, each as Django names it and its ``a``-prefixed twin
(docs/architecture.rst).

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

Async: on engines with async primitives (``native_async``: the cache engine),
``aload``, ``asave`` and the others run the same policy with the async primitives,
on the event loop, and the signals it emits are sent in a thread once it is done;
elsewhere (db, cached_db) they run the sync methods in a thread (``sync_to_async``),
as Django's engines do (docs/engines.rst, "Async").

Thread safety: in-memory reads and writes, and the snapshot a save encodes,
hold the session's lock; store I/O happens outside it, and it is never held
across an ``await`` (the async dict helpers take the lock only around the dict
operation). Every dict
operation looks the dict up under that lock, so a write never lands in a dict that
a rotation or a flush has just replaced.

The operations that change the stored record (save, create, touch, delete, flush,
cycle_key) of one session object run one at a time, under a second lock that
reads and writes of the dict never take. Two threads saving one object would
otherwise race each other as if they were two requests: a save whose snapshot is
older than a record this same object just wrote would merge its stale values over
the newer ones, store and memory alike, and two first saves would each create a
key. In turn each save encodes a snapshot at least as new as the previous one and
writes it onto the record this object last wrote. On the native async path the
same holds between tasks sharing one object: its writes also take an ``asyncio.Lock``
(the write lock is re-entrant within the event loop's thread, so it alone would not
keep two tasks apart). A load changes the object's record only while no dict exists
yet (the first load), so a load that finishes late never rewinds it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async

from .core import Steps, T, Token, hash_prefix, past_deadline
from .rotate import RotatingSession

__all__ = ["HardenedSessionBase", "Token", "hash_prefix", "past_deadline"]


class HardenedSessionBase(RotatingSession):
    """Django's ``SessionBase`` with the hardened save/load/rotate policy.

    Subclasses implement the storage primitives of :class:`~.core.EngineCore`; see
    the module docstring.
    """

    _async_write_lock: asyncio.Lock | None = None

    async def _awrite(self, steps: Steps[T]) -> T:
        """Run a write policy natively, one task of this object at a time."""
        lock = self._async_write_lock
        if lock is None:
            lock = self._async_write_lock = asyncio.Lock()
        async with lock:
            return await self._adrive(steps)

    def load(self) -> dict[str, Any]:
        return self._drive(self._load_steps())

    async def aload(self) -> dict[str, Any]:
        if self.native_async:
            return await self._adrive(self._load_steps())
        return await sync_to_async(self.load)()

    def exists(self, session_key: str | None) -> bool:
        return self._drive(self._exists_steps(session_key))

    async def aexists(self, session_key: str | None) -> bool:
        if self.native_async:
            return await self._adrive(self._exists_steps(session_key))
        return await sync_to_async(self.exists)(session_key)

    def create(self) -> None:
        self._drive(self._create_steps())

    async def acreate(self) -> None:
        if self.native_async:
            return await self._awrite(self._create_steps())
        return await sync_to_async(self.create)()

    def save(self, must_create: bool = False) -> None:
        self._drive(self._save_steps(must_create))

    async def asave(self, must_create: bool = False) -> None:
        if self.native_async:
            return await self._awrite(self._save_steps(must_create))
        return await sync_to_async(self.save)(must_create)

    def touch(self) -> None:
        self._drive(self._touch_steps())

    async def atouch(self) -> None:
        if self.native_async:
            return await self._awrite(self._touch_steps())
        return await sync_to_async(self.touch)()

    def delete(self, session_key: str | None = None) -> None:
        self._drive(self._delete_steps(session_key))

    async def adelete(self, session_key: str | None = None) -> None:
        if self.native_async:
            return await self._awrite(self._delete_steps(session_key))
        return await sync_to_async(self.delete)(session_key)

    def flush(self) -> None:
        self._drive(self._flush_steps())

    async def aflush(self) -> None:
        if self.native_async:
            return await self._awrite(self._flush_steps())
        return await sync_to_async(self.flush)()

    def cycle_key(self) -> None:
        self._drive(self._cycle_key_steps())

    async def acycle_key(self) -> None:
        if self.native_async:
            return await self._awrite(self._cycle_key_steps())
        return await sync_to_async(self.cycle_key)()
