"""Async verbs over a sync byte store, for the servers without a suitable asyncio
client: the engine's async methods then still run their policy on the event loop
(``native_async``), and only the store's own I/O leaves it.

memcached (:class:`ExecutorAsyncStore`): each command runs in a bounded thread pool of
the store's own, *not* Django's thread-sensitive executor, so concurrent requests wait
on memcached side by side instead of one at a time, as under ``sync_to_async``. The
pool runs the sync store's own code, so placement (the rendezvous hash), the
dead-server rule, the stale-connection resend and the per-server pool limits are
exactly the sync path's: sync and async code can never read or delete on different
servers. Why no asyncio memcached client: docs/engines.rst, "Async".

Its size is the cache's ``max_pool_size`` when it is pooled with one (more threads
would only wait for a pooled client), else :data:`DEFAULT_THREADS`. Without pooling,
each pool thread keeps its own connection to each server, so the async path opens at
most *threads* connections per server and process, beside those of the sync threads.

LocMemCache (:class:`InlineAsyncStore`): in-process, so its verbs run inline on the
event loop (a dictionary behind a lock held for microseconds).

A forked child (a pre-fork server's worker) starts a pool of its own on first use.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .token import Handle, Token

__all__ = ["DEFAULT_THREADS", "ExecutorAsyncStore", "InlineAsyncStore"]

T = TypeVar("T")

#: Threads of a memcached store's async pool when the cache sets no ``max_pool_size``:
#: the standard library's default for a thread pool.
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)

_pools: weakref.WeakSet[ExecutorAsyncStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's pool threads do not exist in the child: start over on first use.
    for store in list(_pools):
        store._executor = None
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ExecutorAsyncStore:
    """The verbs of the sync ``store`` as coroutines, each run in a bounded pool of
    ``threads`` threads, with the caller's context variables (as ``sync_to_async``
    passes them), so log filters and the like see the request's context."""

    def __init__(self, store: Any, threads: int, *, name: str) -> None:
        if threads < 1:
            raise ValueError("An async store needs at least one thread.")
        self.store = store
        self.threads = threads
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        _pools.add(self)

    def _pool(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._lock:
                executor = self._executor
                if executor is None:
                    executor = self._executor = ThreadPoolExecutor(
                        max_workers=self.threads,
                        thread_name_prefix=f"hardened_sessions-{self._name}",
                    )
        return executor

    async def _run(self, verb: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        context = contextvars.copy_context()
        call = functools.partial(context.run, verb, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    async def get(self, key: str) -> tuple[bytes, Handle] | None:
        return await self._run(self.store.get, key)

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        **cap: Any,
    ) -> Token | None:
        return await self._run(self.store.add, key, value, ttl, version, user, **cap)

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
            self.store.cas, key, value, ttl, token, version, user, head=head, **cap
        )

    async def delete(self, key: str) -> bool:
        return await self._run(self.store.delete, key)

    def close(self, *, wait: bool = True) -> None:
        """Stop the pool's threads once their commands are done (settings changed,
        shutdown); the next command starts a new pool."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)


class InlineAsyncStore:
    """The verbs of an in-process sync ``store`` as coroutines that call it directly."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def get(self, key: str) -> tuple[bytes, Handle] | None:
        return self.store.get(key)  # type: ignore[no-any-return]

    async def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        **cap: Any,
    ) -> Token | None:
        return self.store.add(key, value, ttl, version, user, **cap)  # type: ignore[no-any-return]

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
        return self.store.cas(  # type: ignore[no-any-return]
            key, value, ttl, token, version, user, head=head, **cap
        )

    async def delete(self, key: str) -> bool:
        return self.store.delete(key)  # type: ignore[no-any-return]
