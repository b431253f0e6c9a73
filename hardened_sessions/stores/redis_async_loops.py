"""The asyncio Redis store's clients, one per event loop, and their closing.

redis.asyncio connections belong to the loop that opened them, so the store keeps a
client (and its pool) per running loop. The pool's ``max_connections`` is the cache's,
per loop, and separate from the sync store's pool: a process that serves sessions both
ways may hold both limits' worth of connections (an ASGI server runs one loop, so one
async pool). A loop's client is closed when ``asyncio.run()`` (or anything else that
calls ``loop.shutdown_asyncgens()``) ends the loop; a loop closed otherwise is forgotten
at the next new loop, and :meth:`LoopClients.aclose` closes the running loop's client at
once. Under WSGI, Django runs an async view through asgiref's ``async_to_sync`` on a loop
of its own for that call (``asyncio.run``), so the client connects anew for each such
call; under ASGI one loop serves every request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import Any

from redis.exceptions import RedisError

from .redis_async_clients import Connect

__all__ = ["LoopClient", "LoopClients"]


class LoopClient:
    """The client of one event loop, with the script objects made on it."""

    def __init__(self, client: Any, others: list[Any]) -> None:
        self.client = client
        self.pool: Any = getattr(client, "connection_pool", None)
        self.others = others
        self.scripts: dict[str, Any] = {}
        self.closer: AsyncGenerator[None, None] | None = None

    async def aclose(self) -> None:
        """Close the connections (a failure to close one does not keep the others open)."""
        closers = [self.client.aclose]
        if self.pool is not None:  # a pool given to Redis() is not closed by it
            closers.append(self.pool.disconnect)
        closers += [other.aclose for other in self.others]
        for close in closers:
            with suppress(RedisError, OSError, RuntimeError):
                await close()


class LoopClients:
    """The clients ``connect`` builds, one per running event loop."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, LoopClient] = {}

    async def entry(self) -> LoopClient:
        """The running loop's client, built at its first use there."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._clients.get(loop)
            if entry is None:
                for closed in [other for other in self._clients if other.is_closed()]:
                    del self._clients[closed]
                entry = self._clients[loop] = LoopClient(*self._connect())
                entry.closer = self._closer(loop, entry)
                start = True
            else:
                start = False
        if start and entry.closer is not None:
            # An asynchronous generator that the loop closes at its end
            # (loop.shutdown_asyncgens(), which asyncio.run() calls): it closes the client.
            await entry.closer.asend(None)
        return entry

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, entry: LoopClient
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(loop) is entry:
                    del self._clients[loop]
            await entry.aclose()

    async def aclose(self) -> None:
        """Close the running event loop's client (a later call opens a new one)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.pop(loop, None)
        if entry is not None:
            if entry.closer is not None:
                await entry.closer.aclose()
            else:
                await entry.aclose()
