"""Async verbs over a sync byte store, for the servers without a suitable asyncio
client: the engine's async methods then still run their policy on the event loop
(``native_async``), and only the store's own I/O leaves it.

memcached (:class:`ExecutorAsyncStore`): each command runs in a bounded thread pool of
the store's own, *not* Django's thread-sensitive executor, so concurrent requests wait
on memcached side by side instead of one at a time, as under ``sync_to_async``. The
pool runs the sync store's own code, so placement (the rendezvous hash), the
dead-server rule and the stale-connection resend are exactly the sync path's: sync and
async code can never read or delete on different servers.

One pool per server (*lane*), each of ``threads`` threads: the cache's
``max_pool_size`` when it is pooled with one (more threads would only wait for one of
that server's pooled clients), else :data:`DEFAULT_THREADS`; so a slow server holds
up only the commands for the sessions it homes. Without pooling, each pool thread keeps
its own connection to its server, so the async path opens at most ``threads``
connections per server and process, beside those of the sync threads. A command that
waited longer than ``max_wait`` (memcached's ``POOL_WAIT``) for a thread of its pool
fails closed when it gets one (``SessionStoreUnavailable``, a 503), without I/O.

A cancelled caller (a client that went away, a timeout) drops its command if no thread
took it yet; otherwise the caller hears of the cancellation once the command is over,
so the session's write lock is never released while its write may still land.

LocMemCache (:class:`InlineAsyncStore`): in-process, so its verbs run inline on the
event loop (a dictionary behind a lock; a sync thread holding it, for a cull at
``MAX_ENTRIES`` say, holds up the loop as long).

A forked child (a pre-fork server's worker) starts pools of its own on first use; a
change of ``CACHES`` (tests) retires the store and stops its pools once idle.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..exceptions import SessionStoreUnavailable
from .token import Handle, Token

__all__ = ["DEFAULT_THREADS", "ExecutorAsyncStore", "InlineAsyncStore"]

T = TypeVar("T")

#: Threads of each of a memcached store's async pools when the cache sets no
#: ``max_pool_size``: the standard library's default for a thread pool.
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)

_pools: weakref.WeakSet[ExecutorAsyncStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's pool threads do not exist in the child: start over on first use.
    for store in list(_pools):
        store._lock = threading.Lock()
        store._executors = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _AsyncVerbs:
    """:class:`~hardened_sessions.stores.AsyncByteStore`'s verbs over the sync
    ``store``, each run by ``_run`` (``key`` names the session, for routing)."""

    store: Any

    async def _run(self, key: str, verb: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise NotImplementedError

    async def get(self, key: str) -> tuple[bytes, Handle] | None:
        return await self._run(key, self.store.get, key)

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        **cap: Any,
    ) -> Token | None:
        return await self._run(key, self.store.add, key, value, ttl, version, user, **cap)

    async def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Token,
        version: int,
        user: str | None = None,
        *,
        head: bytes,
        **cap: Any,
    ) -> Token | None:
        return await self._run(
            key, self.store.cas, key, value, ttl, token, version, user, head=head, **cap
        )

    async def delete(self, key: str) -> bool:
        return await self._run(key, self.store.delete, key)


class ExecutorAsyncStore(_AsyncVerbs):
    """The verbs of the sync ``store`` as coroutines, each run in the pool of the lane
    ``route(key)`` names (``threads`` threads each), with the caller's context variables
    (as ``sync_to_async`` passes them), so log filters and the like see the request's
    context."""

    def __init__(
        self,
        store: Any,
        threads: int,
        *,
        name: str,
        route: Callable[[str], int],
        max_wait: float,
    ) -> None:
        if threads < 1:
            raise ValueError("An async store needs at least one thread per pool.")
        self.store = store
        self.threads = threads
        self.max_wait = max_wait
        self._name = name
        self._route = route
        self._executors: dict[int, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        _pools.add(self)

    def _submit(self, lane: int, job: Callable[[], T]) -> Any:
        # Under the lock: close() cannot shut the pool between its lookup and the submit.
        with self._lock:
            executor = self._executors.get(lane)
            if executor is None:
                executor = self._executors[lane] = ThreadPoolExecutor(
                    max_workers=self.threads,
                    thread_name_prefix=f"hardened_sessions-{self._name}-{lane}",
                )
            return executor.submit(job)

    async def _run(self, key: str, verb: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        context = contextvars.copy_context()
        queued = time.monotonic()
        max_wait = self.max_wait

        def job() -> T:
            waited = time.monotonic() - queued
            if waited > max_wait:
                raise SessionStoreUnavailable(
                    f"The {self._name} command waited {waited:.1f} s for a thread of the "
                    f"async pool ({self.threads} per server): the server is slow or the "
                    "pool too small."
                )
            return context.run(verb, *args, **kwargs)

        pending = self._submit(self._route(key), job)
        future = asyncio.wrap_future(pending)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not pending.cancel():  # a thread runs it: let it end before we go on
                await asyncio.wait([future])
            raise

    def close(self, *, wait: bool = True) -> None:
        """Stop the pools' threads once their commands are done (settings changed,
        shutdown). A later command starts a new pool."""
        with self._lock:
            executors, self._executors = self._executors, {}
        for executor in executors.values():
            executor.shutdown(wait=wait)


class InlineAsyncStore(_AsyncVerbs):
    """The verbs of an in-process sync ``store`` as coroutines that call it directly."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def _run(self, key: str, verb: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return verb(*args, **kwargs)
