"""The async stores of memcached and LocMemCache (``hardened_sessions.stores.threaded``).

memcached has no asyncio client that can mirror the sync store (docs/engines.rst,
"Async"), so the engine's async methods run their policy on the event loop and send
each memcached command through a bounded thread pool of the store's own, running the
sync store's code. Checked here on the suite's three real memcached servers: the
engine takes the native async path (no ``sync_to_async``), commands of concurrent
requests wait side by side and never more of them than the pool's bound, sync and
async code see the same placement (what one writes on a server the other reads and
deletes there), a dead server is handled by the one shared rule, context variables
reach the pool, a forked child gets a pool of its own, and a settings change retires
the old pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from importlib import import_module
from typing import Any

import pytest
from django.test import override_settings

from hardened_sessions import keys
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.stores import async_store_for_cache, store_for_cache
from hardened_sessions.stores.memcached import MemcachedByteStore
from hardened_sessions.stores.threaded import DEFAULT_THREADS, ExecutorAsyncStore, InlineAsyncStore
from tests.conftest import require_server
from tests.support.servers import Server, cache_settings, sessions_cache

ENGINE = "hardened_sessions.backends.cache"


@pytest.fixture
def memcached_alias(memcached_servers: list[Server]) -> Iterator[str]:
    with (
        sessions_cache(cache_settings("pymemcache", memcached=memcached_servers)) as alias,
        override_settings(SESSION_ENGINE=ENGINE, SESSION_CACHE_ALIAS=alias),
    ):
        yield alias


def engine() -> Any:
    return import_module(ENGINE).SessionStore


def test_memcached_and_locmem_have_async_stores(memcached_servers: list[Server]) -> None:
    with sessions_cache(cache_settings("pymemcache", memcached=memcached_servers)) as alias:
        twin = async_store_for_cache(alias)
        assert isinstance(twin, ExecutorAsyncStore)
        assert twin.store is store_for_cache(alias)
        assert twin.threads == DEFAULT_THREADS
    pooled = cache_settings(
        "pymemcache", memcached=memcached_servers, options={"use_pooling": True, "max_pool_size": 3}
    )
    with sessions_cache(pooled) as alias:
        twin = async_store_for_cache(alias)
        assert isinstance(twin, ExecutorAsyncStore)
        assert twin.threads == 3  # more threads would only wait for a pooled client
    with sessions_cache(cache_settings("locmem")) as alias:
        inline = async_store_for_cache(alias)
        assert isinstance(inline, InlineAsyncStore)
        assert inline.store is store_for_cache(alias)


def test_the_async_api_runs_natively_without_sync_to_async(
    memcached_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hardened_sessions.backends.base as base

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async path hopped through sync_to_async")

    monkeypatch.setattr(base, "sync_to_async", refuse)
    store_class = engine()
    threads: list[str] = []
    sync_store = store_for_cache(memcached_alias)
    original_get = sync_store.get

    def spying_get(key: str) -> Any:
        threads.append(threading.current_thread().name)
        return original_get(key)

    monkeypatch.setattr(sync_store, "get", spying_get)

    async def scenario() -> None:
        session = store_class()
        assert session.native_async
        await session.aset("a", 1)
        await session.asave()
        key = session.session_key
        again = store_class(key)
        assert await again.aget("a") == 1
        assert await again.aexists(key)
        await again.acycle_key()
        assert again.session_key != key
        assert not await again.aexists(key)
        await again.aflush()
        assert again.session_key is None

    asyncio.run(scenario())
    assert threads, "the loads read memcached"
    assert all(name.startswith("hardened_sessions-memcached") for name in threads), threads


def test_concurrent_commands_wait_side_by_side_and_within_the_bound(
    memcached_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight slow reads take about one read's time with 8 threads (under Django's
    thread-sensitive executor they would take eight), and about four with 2 threads:
    the pool's bound holds."""
    store_class = engine()
    sync_store = store_for_cache(memcached_alias)
    original_get = sync_store.get
    running = 0
    most = 0
    lock = threading.Lock()

    def slow_get(key: str) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.2)
            return original_get(key)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(sync_store, "get", slow_get)

    async def eight_loads() -> float:
        sessions = [store_class(keys.generate_key()) for i in range(8)]
        started = time.monotonic()
        await asyncio.gather(*(session.aload() for session in sessions))
        return time.monotonic() - started

    twin = async_store_for_cache(memcached_alias)
    assert isinstance(twin, ExecutorAsyncStore)
    monkeypatch.setattr(twin, "_route", lambda key: 0)  # one server's pool
    monkeypatch.setattr(twin, "threads", 8)
    twin.close()
    wide = asyncio.run(eight_loads())
    assert most == 8
    assert wide < 0.2 * 8 / 2, f"8 loads took {wide:.2f} s: they ran one at a time"

    most = 0
    monkeypatch.setattr(twin, "threads", 2)
    twin.close()
    narrow = asyncio.run(eight_loads())
    assert most == 2
    assert narrow >= 0.2 * 4 * 0.9


def test_a_slow_server_holds_up_only_the_sessions_it_homes(
    memcached_servers: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pool per server: four slow reads on server 0 (its two threads busy) leave a
    read of a session homed on another server as fast as ever."""
    pooled = cache_settings(
        "pymemcache", memcached=memcached_servers, options={"use_pooling": True, "max_pool_size": 2}
    )
    with (
        sessions_cache(pooled) as alias,
        override_settings(SESSION_ENGINE=ENGINE, SESSION_CACHE_ALIAS=alias),
    ):
        sync_store = store_for_cache(alias)
        assert isinstance(sync_store, MemcachedByteStore)
        original_get = sync_store.get

        def get(key: str) -> Any:
            if sync_store.home_of(key) == 0:
                time.sleep(1.0)
            return original_get(key)

        monkeypatch.setattr(sync_store, "get", get)

        def key_homed_on(server: int) -> str:
            while True:
                key = keys.generate_key()
                if sync_store.home_of(keys.store_key(key)) == server:
                    return key

        async def scenario() -> float:
            slow = [asyncio.create_task(engine()(key_homed_on(0)).aload()) for _ in range(4)]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await engine()(key_homed_on(1)).aload()
            elapsed = time.monotonic() - started
            await asyncio.gather(*slow)
            return elapsed

        assert asyncio.run(scenario()) < 0.5


def test_a_command_that_waited_too_long_for_a_thread_fails_closed(
    memcached_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_store = store_for_cache(memcached_alias)
    original_get = sync_store.get

    def slow_get(key: str) -> Any:
        time.sleep(0.5)
        return original_get(key)

    monkeypatch.setattr(sync_store, "get", slow_get)
    twin = async_store_for_cache(memcached_alias)
    assert isinstance(twin, ExecutorAsyncStore)
    monkeypatch.setattr(twin, "_route", lambda key: 0)
    monkeypatch.setattr(twin, "threads", 1)
    monkeypatch.setattr(twin, "max_wait", 0.2)
    twin.close()

    async def scenario() -> list[Any]:
        loads = [engine()(keys.generate_key()).aload() for _ in range(2)]
        return await asyncio.gather(*loads, return_exceptions=True)

    first, second = asyncio.run(scenario())
    assert first == {}
    assert isinstance(second, SessionStoreUnavailable), second
    assert "waited" in str(second)


def test_a_cancelled_caller_hears_of_it_once_the_command_is_over(
    memcached_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logout cancelled while its delete runs: the cancellation reaches the caller
    only after the delete, so nothing of the session's runs on meanwhile, and the
    record is gone by then."""
    store_class = engine()
    sync_store = store_for_cache(memcached_alias)
    original_delete = sync_store.delete
    finished: list[float] = []

    def slow_delete(key: str) -> bool:
        time.sleep(0.5)
        try:
            return original_delete(key)
        finally:
            finished.append(time.monotonic())

    async def scenario() -> None:
        session = store_class()
        await session.aset("a", 1)
        await session.asave()
        key = session.session_key
        monkeypatch.setattr(sync_store, "delete", slow_delete)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(session.aflush(), 0.1)
        heard = time.monotonic()
        assert finished and finished[0] <= heard
        monkeypatch.setattr(sync_store, "delete", original_delete)
        assert not await store_class().aexists(key)

    asyncio.run(scenario())


def test_sync_and_async_code_use_the_same_server_for_each_session(
    memcached_alias: str, memcached_servers: list[Server]
) -> None:
    store_class = engine()
    sync_store = store_for_cache(memcached_alias)
    assert isinstance(sync_store, MemcachedByteStore)
    homes: set[int] = set()

    async def write_async() -> list[str]:
        made = []
        for i in range(24):
            session = store_class()
            await session.aset("n", i)
            await session.asave()
            assert session.session_key is not None
            made.append(session.session_key)
        return made

    made = asyncio.run(write_async())
    for i, key in enumerate(made):
        session = store_class(key)
        assert session["n"] == i  # the sync path finds what the async one wrote
        store_key = keys.store_key(key)
        homes.add(sync_store.home(sync_store._key(store_key)))
        session.delete()

    async def all_gone() -> list[bool]:
        return [await store_class().aexists(key) for key in made]

    assert not any(asyncio.run(all_gone()))  # ... and the sync deletes reached it
    assert len(homes) == len(memcached_servers), "the sessions spread over every server"


def test_a_failing_server_fails_closed_on_the_async_path(
    memcached_alias: str,
    memcached_servers: list[Server],
    revive_servers: Callable[[Server], Server],
) -> None:
    """The sync store's failure rule, reached through the pool: with the session's home
    server stopped, a save and a logout are 503s (SessionStoreUnavailable), never a
    silent success, and the failure is remembered for the rest of the request."""
    store_class = engine()
    sync_store = store_for_cache(memcached_alias)
    assert isinstance(sync_store, MemcachedByteStore)

    async def scenario() -> None:
        session = store_class()
        await session.aset("a", 1)
        await session.asave()
        assert session.session_key is not None
        home = memcached_servers[sync_store.home_of(keys.store_key(session.session_key))]
        if not home.managed:
            require_server("memcached", "stopping a server needs servers started by the tests")
        revive_servers(home).stop()
        await session.aset("a", 2)
        with pytest.raises(SessionStoreUnavailable):
            await session.asave()
        with pytest.raises(SessionStoreUnavailable):
            await session.aflush()
        assert session.store_failure is not None

    asyncio.run(scenario())


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def test_context_variables_reach_the_pool(
    memcached_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_store = store_for_cache(memcached_alias)
    original_get = sync_store.get
    seen: list[str] = []

    def get(key: str) -> Any:
        seen.append(request_id.get())
        return original_get(key)

    monkeypatch.setattr(sync_store, "get", get)

    async def scenario() -> None:
        request_id.set("r-42")
        await engine()(keys.generate_key()).aload()

    asyncio.run(scenario())
    assert seen == ["r-42"]


def test_a_settings_change_retires_the_pool(memcached_alias: str) -> None:
    twin = async_store_for_cache(memcached_alias)
    assert isinstance(twin, ExecutorAsyncStore)
    asyncio.run(engine()(keys.generate_key()).aload())
    assert twin._executors
    with override_settings(SESSION_CACHE_ALIAS=memcached_alias):  # any setting_changed
        assert twin._executors == {}
        assert async_store_for_cache(memcached_alias) is not twin


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_pool_of_its_own(memcached_alias: str) -> None:
    twin = async_store_for_cache(memcached_alias)
    assert isinstance(twin, ExecutorAsyncStore)
    store_class = engine()

    async def save() -> str:
        session = store_class()
        await session.aset("who", "parent")
        await session.asave()
        assert session.session_key is not None
        return session.session_key

    key = asyncio.run(save())
    assert twin._executors
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: exits with 0 only if its own pool reads the session
        code = 1
        try:
            os.close(read)
            fresh = twin._executors == {}
            value = asyncio.run(store_class(key).aget("who"))
            code = 0 if fresh and value == "parent" else 2
        finally:
            os._exit(code)
    os.close(write)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
