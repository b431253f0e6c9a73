"""Threat: session data lingering in reused memory (remanence).

The engine assembles each record in a reusable ``bytearray`` from a pool. A
buffer handed back to the pool must hold nothing of the last session: every
byte is zeroed on release, including the smaller array a buffer outgrew; a
buffer that grew past ``max_pooled_bytes`` is wiped and dropped; the pool holds
at most ``max_buffers``; and no two threads ever hold the same buffer.

(Python's immutable copies, the ``str`` and ``bytes`` handed to drivers, cannot
be wiped; docs/design.rst, "Memory", says so. These tests cover the engine's own buffers.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from hardened_sessions.backends.db import SessionStore
from hardened_sessions.buffers import BufferPool, RecordBuffer, default_pool
from hardened_sessions.exceptions import SessionTooLarge
from hardened_sessions.models import HardenedSession
from hardened_sessions.record import Record
from tests.support.helpers import buffer_array

SECRET = "remanence-marker-7f3c"
on_every_database = pytest.mark.django_db(transaction=True, databases="__all__")


def is_zero(array: bytearray) -> bool:
    return array.count(0) == len(array)


def nonzero(n: int, fill: int = 0xA5) -> bytes:
    return bytes([fill]) * n


# ---------------------------------------------------------------------------- one buffer


def test_release_zeroes_every_byte() -> None:
    pool = BufferPool()
    buf = pool.acquire()
    buf.write(b"session data: " + SECRET.encode())
    array = buffer_array(buf)
    assert not is_zero(array)
    pool.release(buf)
    assert is_zero(array)
    assert len(buf) == 0


def test_context_manager_zeroes_even_when_the_body_raises() -> None:
    pool = BufferPool()
    with pytest.raises(RuntimeError), pool.buffer() as buf:
        buf.write(SECRET.encode())
        array = buffer_array(buf)
        raise RuntimeError("store write failed")
    assert is_zero(array)


def test_growth_wipes_the_array_it_leaves_behind() -> None:
    buf = RecordBuffer(capacity=16)
    buf.write(nonzero(10))
    small = buffer_array(buf)
    buf.write(nonzero(100, 0x5A))
    assert buffer_array(buf) is not small
    assert is_zero(small), "the outgrown array still holds the record"
    assert buf.getvalue() == nonzero(10) + nonzero(100, 0x5A)

    pool = BufferPool()
    pool.release(buf)
    assert is_zero(buffer_array(buf))


def test_wipe_keeps_capacity_and_zeroes() -> None:
    buf = RecordBuffer(capacity=64)
    buf.write(nonzero(40))
    buf.wipe()
    assert buf.capacity == 64 and len(buf) == 0
    assert is_zero(buffer_array(buf))
    buf.write(b"ab")
    assert buf.getvalue() == b"ab"


chunks = st.lists(
    st.binary(min_size=1, max_size=300).map(lambda b: bytes(x or 1 for x in b)),
    min_size=1,
    max_size=20,
)


@hypothesis_settings(max_examples=200, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=64), pieces=chunks)
def test_no_array_ever_used_keeps_data_after_release(capacity: int, pieces: list[bytes]) -> None:
    pool = BufferPool(max_pooled_bytes=1 << 20)
    buf = RecordBuffer(capacity=capacity)
    arrays = [buffer_array(buf)]
    for piece in pieces:
        buf.write(piece)
        if buffer_array(buf) is not arrays[-1]:
            arrays.append(buffer_array(buf))
        # Every array but the current one is already clean, before any release.
        assert all(is_zero(old) for old in arrays[:-1])
    assert buf.getvalue() == b"".join(pieces)
    pool.release(buf)
    assert all(is_zero(array) for array in arrays)


# ---------------------------------------------------------------------------- the pool


def test_pool_holds_at_most_max_buffers_and_wipes_the_rest() -> None:
    pool = BufferPool(max_buffers=3)
    held = [pool.acquire() for _ in range(10)]
    arrays = []
    for n, buf in enumerate(held):
        buf.write(nonzero(50, n + 1))
        arrays.append(buffer_array(buf))
    for buf in held:
        pool.release(buf)
        assert len(pool) <= 3
    assert len(pool) == 3
    assert len(pool._free) == 3
    assert all(is_zero(array) for array in arrays)


def test_pooled_buffers_are_reused() -> None:
    # The control for the bound below: a small buffer does go back into the pool.
    pool = BufferPool(max_buffers=2, max_pooled_bytes=16 * 1024)
    buf = pool.acquire()
    buf.write(nonzero(100))
    pool.release(buf)
    assert len(pool) == 1
    assert pool.acquire() is buf


def test_grown_buffer_is_wiped_and_not_pooled() -> None:
    pool = BufferPool(max_buffers=4, max_pooled_bytes=16 * 1024)
    buf = pool.acquire()
    first = buffer_array(buf)
    buf.write(nonzero(20_000))
    assert buf.capacity > pool.max_pooled_bytes
    grown = buffer_array(buf)
    pool.release(buf)
    assert is_zero(first) and is_zero(grown)
    assert len(pool) == 0
    assert buf not in pool._free
    assert pool.acquire() is not buf


@pytest.mark.timeout(60)
def test_threads_never_share_a_buffer() -> None:
    pool = BufferPool(max_buffers=4)
    threads_count, rounds = 8, 300
    held: set[int] = set()
    held_lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(threads_count)

    def worker(n: int) -> None:
        mark = bytes([n + 1]) * 256
        start.wait()
        for _ in range(rounds):
            buf = pool.acquire()
            with held_lock:
                if id(buf) in held:
                    errors.append(f"thread {n} got a buffer another thread holds")
                held.add(id(buf))
            if len(buf) != 0 or not is_zero(buffer_array(buf)):
                errors.append(f"thread {n} got a dirty buffer")
            buf.write(mark)
            for _ in range(3):
                if buf.getvalue() != mark:
                    errors.append(f"thread {n} saw another thread's bytes")
            with held_lock:
                held.discard(id(buf))
            pool.release(buf)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []
    assert 1 <= len(pool) <= 4
    assert all(is_zero(buffer_array(buf)) for buf in pool._free)


# ---------------------------------------------------------------------------- through the DB engine


@pytest.fixture
def acquired(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[RecordBuffer, bytearray]]]:
    """Every buffer the engine takes from the default pool, with the array it started with."""
    seen: list[tuple[RecordBuffer, bytearray]] = []
    real_acquire = default_pool.acquire

    def spy() -> RecordBuffer:
        buf = real_acquire()
        seen.append((buf, buffer_array(buf)))
        return buf

    monkeypatch.setattr(default_pool, "acquire", spy)
    yield seen


def assert_pool_clean(seen: list[tuple[RecordBuffer, bytearray]]) -> None:
    assert seen, "the engine took no buffer from the default pool"
    for buf, first in seen:
        assert len(buf) == 0
        assert is_zero(first)
        assert is_zero(buffer_array(buf))
        assert SECRET.encode() not in buffer_array(buf)
    for buf in default_pool._free:
        assert is_zero(buffer_array(buf))
    assert len(default_pool) <= default_pool.max_buffers


def stored(alias: str) -> list[bytes]:
    return [bytes(d) for d in HardenedSession.objects.using(alias).values_list("data", flat=True)]


@on_every_database
def test_saves_leave_every_pooled_buffer_zeroed(
    db_alias: str, acquired: list[tuple[RecordBuffer, bytearray]]
) -> None:
    session = SessionStore()
    session["secret"] = SECRET
    session.save()  # create
    session["more"] = SECRET * 2
    session.save()  # update
    # The records really went through those buffers.
    assert any(SECRET.encode() in raw for raw in stored(db_alias))
    assert len(acquired) >= 2
    assert_pool_clean(acquired)


@on_every_database
def test_a_record_larger_than_the_initial_capacity_leaves_nothing_behind(
    db_alias: str, acquired: list[tuple[RecordBuffer, bytearray]]
) -> None:
    # About 300 KB: more than any pooled buffer holds, so the buffer grows (and, past
    # max_pooled_bytes, is dropped instead of pooled).
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": 1024 * 1024}):
        session = SessionStore()
        session["secret"] = SECRET * 15_000
        session.save()
    assert any(buffer_array(buf) is not first for buf, first in acquired)
    assert max(buf.capacity for buf, _ in acquired) > default_pool.max_pooled_bytes
    assert all(buf.capacity <= default_pool.max_pooled_bytes for buf in default_pool._free)
    assert_pool_clean(acquired)


@on_every_database
def test_a_concurrent_merge_leaves_every_pooled_buffer_zeroed(
    db_alias: str, acquired: list[tuple[RecordBuffer, bytearray]]
) -> None:
    first = SessionStore()
    first["a"] = SECRET
    first.save()
    second = SessionStore(first.session_key)
    second["b"] = SECRET
    second.save()
    first["c"] = SECRET  # conflicts with second's save: read, merge, write again
    first.save()
    assert SessionStore(first.session_key).load() == {"a": SECRET, "b": SECRET, "c": SECRET}
    assert_pool_clean(acquired)


@on_every_database
def test_session_too_large_leaves_every_pooled_buffer_zeroed(
    db_alias: str, acquired: list[tuple[RecordBuffer, bytearray]]
) -> None:
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": 4096}):
        session = SessionStore()
        session["secret"] = SECRET
        session.save()
        session["secret"] = SECRET * 1000
        with pytest.raises(SessionTooLarge):
            session.save()
        fresh = SessionStore()
        fresh["secret"] = SECRET * 1000
        with pytest.raises(SessionTooLarge):
            fresh.save()
    assert_pool_clean(acquired)


class FailingWrite(SessionStore):
    """A store whose write fails after it saw the record (a driver error surfacing)."""

    seen: list[bytes]

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> Any:
        self.seen.append(bytes(data))
        raise RuntimeError("connection reset while writing")


def test_a_failed_write_leaves_the_buffer_zeroed(
    acquired: list[tuple[RecordBuffer, bytearray]],
) -> None:
    session = FailingWrite()
    session.seen = []
    session["secret"] = SECRET
    with pytest.raises(RuntimeError):
        session.save()
    assert SECRET.encode() in session.seen[0]
    assert_pool_clean(acquired)
