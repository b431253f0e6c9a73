"""A small pool of reusable serialization buffers that are wiped before reuse.

A session record is assembled in a :class:`RecordBuffer`, size-checked there
and handed to the store as a view of that buffer. On release the bytes written
are overwritten with zeros before the buffer returns to the pool; a buffer
that grew past ``max_pooled_bytes`` is wiped and dropped instead of pooled, so
one large session does not pin memory, and the pool holds at most
``max_buffers`` buffers.

What this cannot do: Python's immutable copies (the ``str`` that
``json.dumps`` returns, the ``bytes`` a database driver or socket keeps)
cannot be wiped. The pool bounds the lifetime of the engine's *own* copies,
nothing more; the threat model (docs/design.rst, "Memory") says so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BufferPool", "RecordBuffer", "default_pool"]

_INITIAL_CAPACITY = 8 * 1024


class RecordBuffer:
    """An append-only byte buffer over a preallocated ``bytearray``."""

    __slots__ = ("_data", "_used")

    def __init__(self, capacity: int = _INITIAL_CAPACITY) -> None:
        self._data = bytearray(capacity)
        self._used = 0

    def __len__(self) -> int:
        return self._used

    @property
    def capacity(self) -> int:
        return len(self._data)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        end = self._used + len(chunk)
        if end > len(self._data):
            # Grow into a new array; wipe the old one first so no stale copy survives.
            grown = bytearray(max(end, 2 * len(self._data)))
            grown[: self._used] = self._data[: self._used]
            self._data[: self._used] = bytes(self._used)
            self._data = grown
        self._data[self._used : end] = chunk
        self._used = end

    def view(self) -> memoryview:
        """A read-only view of the bytes written so far (release it before the buffer)."""
        return memoryview(self._data)[: self._used].toreadonly()

    def getvalue(self) -> bytes:
        """An immutable copy of the bytes written (it cannot be wiped: use sparingly)."""
        return bytes(self._data[: self._used])

    def wipe(self) -> None:
        """Zero every byte written so far and start over; the capacity is kept."""
        self._data[: self._used] = bytes(self._used)
        self._used = 0


class BufferPool:
    def __init__(self, max_buffers: int = 16, max_pooled_bytes: int = 256 * 1024) -> None:
        self.max_buffers = max_buffers
        self.max_pooled_bytes = max_pooled_bytes
        self._free: list[RecordBuffer] = []
        self._lock = threading.Lock()

    def acquire(self) -> RecordBuffer:
        with self._lock:
            if self._free:
                return self._free.pop()
        return RecordBuffer()

    def release(self, buffer: RecordBuffer) -> None:
        buffer.wipe()
        if buffer.capacity > self.max_pooled_bytes:
            return
        with self._lock:
            if len(self._free) < self.max_buffers:
                self._free.append(buffer)

    @contextmanager
    def buffer(self) -> Iterator[RecordBuffer]:
        buf = self.acquire()
        try:
            yield buf
        finally:
            self.release(buf)

    def __len__(self) -> int:
        with self._lock:
            return len(self._free)


default_pool = BufferPool()
