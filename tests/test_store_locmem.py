"""The byte store behind a ``LocMemCache`` session cache (``stores/locmem.py``).

``LocMemCache``'s public API pickles and has no compare-and-set, so the records live in
a process-local store of the package's own, per alias and ``LOCATION``: the four verbs
with TTLs, a bound from ``MAX_ENTRIES``, compare-and-set under one lock, an exact
per-user index, and ``cache.clear()`` ending the sessions as it does with Django's own
cache engine.
"""

from __future__ import annotations

import logging
import pickle
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import override_settings

from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.record import peek_version, version_head
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.locmem import LocMemByteStore
from hardened_sessions.stores.token import Token
from tests.support.servers import LOCMEM_DEFAULT, cache_settings, sessions_cache

THREADS = 8
INCREMENTS = 300


def rec(version: int, body: bytes = b"{}") -> memoryview:
    """Bytes that start as a record of ``version`` does (what ``cas`` compares with the
    ``head`` it is handed)."""
    return memoryview(version_head(version) + body)


def key(n: int) -> str:
    return f"{n:064x}"


def options(**options: Any) -> Any:
    """The ``OPTIONS`` of the test's LocMemCache."""
    return pytest.mark.parametrize("locmem", [options], indirect=True, ids=["options"])


@pytest.fixture
def locmem(request: pytest.FixtureRequest) -> Iterator[LocMemByteStore]:
    """The store of a fresh LocMemCache ``sessions`` alias; ``OPTIONS`` from an indirect
    parameter (see :func:`options`)."""
    config = cache_settings("locmem", options=getattr(request, "param", None))
    config["LOCATION"] += f"-{request.node.name}"
    with sessions_cache(config, SESSION_ENGINE="hardened_sessions.backends.cache") as alias:
        store = store_for_cache(alias)
        assert isinstance(store, LocMemByteStore)
        yield store


def test_add_creates_only_and_cas_replaces_only_the_version_it_read(
    locmem: LocMemByteStore,
) -> None:
    assert locmem.get(key(1)) is None
    assert locmem.add(key(1), rec(1, b"first"), 60, 1) == Token(1)
    assert locmem.add(key(1), rec(1, b"again"), 60, 1) is None  # taken
    # No handle: the version the engine reads from the verified record is the token.
    assert locmem.get(key(1)) == (version_head(1) + b"first", None)

    assert locmem.cas(key(1), rec(2, b"second"), 60, Token(1), 2, head=version_head(1)) == Token(2)
    stale = locmem.cas(key(1), rec(2, b"stale"), 60, Token(1), 2, head=version_head(1))
    assert stale is None  # it changed
    assert locmem.get(key(1)) == (version_head(2) + b"second", None)


def test_a_cas_after_a_delete_never_recreates_the_record(locmem: LocMemByteStore) -> None:
    locmem.add(key(1), rec(1), 60, 1)
    assert locmem.delete(key(1)) is True
    assert locmem.delete(key(1)) is False  # only the call that deleted says so
    assert locmem.cas(key(1), rec(2), 60, Token(1), 2, head=version_head(1)) is None
    assert locmem.get(key(1)) is None


def test_records_expire_with_their_ttl(locmem: LocMemByteStore) -> None:
    locmem.add(key(1), rec(1), 1, 1, user="7")
    locmem.add(key(2), rec(1), 60, 1, user="7")
    full_key = caches["sessions"].make_key("hardened_sessions:" + key(1))
    assert 0 < (locmem.raw_ttl(full_key) or 0) <= 1
    time.sleep(1.1)
    assert locmem.get(key(1)) is None
    assert locmem.delete(key(1)) is False  # an expired record is not "deleted" now
    assert locmem.cas(key(1), rec(2), 60, Token(1), 2, head=version_head(1)) is None
    assert locmem.user_members("7") == [key(2)]
    assert locmem.add(key(1), rec(5), 60, 5) == Token(5)  # the key is free again


def test_records_live_outside_the_cache_and_nothing_is_unpickled(
    locmem: LocMemByteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refused)
    session = SessionStore()
    session["n"] = 1
    session.save()
    assert SessionStore(session.session_key)["n"] == 1
    session.delete()
    cache = caches["sessions"]
    # The record is in the store, not in the cache: the cache's get finds nothing there.
    assert cache.get("hardened_sessions:" + key(3)) is None


@options(MAX_ENTRIES=10, CULL_FREQUENCY=2)
def test_max_entries_bounds_the_store_expired_records_going_first(
    locmem: LocMemByteStore, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(4):
        locmem.add(key(n), rec(1), 1, 1)
    for n in range(4, 10):
        locmem.add(key(n), rec(1), 60, 1)
    time.sleep(1.1)
    with caplog.at_level(logging.WARNING, logger="hardened_sessions"):
        assert locmem.add(key(10), rec(1), 60, 1) == Token(1)
    assert len(locmem.raw_keys()) == 7  # the four expired ones made room
    assert not caplog.records

    for n in range(11, 14):
        locmem.add(key(n), rec(1), 60, 1)
    assert len(locmem.raw_keys()) == 10
    assert locmem.get(key(4)) is not None  # the oldest, now the most recently used
    with caplog.at_level(logging.WARNING, logger="hardened_sessions"):
        assert locmem.add(key(14), rec(1), 60, 1) == Token(1)
    # Full of live sessions: the 10 // 2 least recently used ones ended, and it says so.
    survivors = {k.rsplit(":", 1)[1] for k in locmem.raw_keys()}
    assert survivors == {key(n) for n in (4, 10, 11, 12, 13, 14)}
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "MAX_ENTRIES=10" in caplog.records[0].getMessage()
    assert "5 least recently used" in caplog.records[0].getMessage()


@options(MAX_ENTRIES=4, CULL_FREQUENCY=0)
def test_cull_frequency_zero_empties_a_full_store_as_locmemcache_does(
    locmem: LocMemByteStore,
) -> None:
    for n in range(4):
        locmem.add(key(n), rec(1), 60, 1, user="7")
    locmem.add(key(4), rec(1), 60, 1)
    assert [k.rsplit(":", 1)[1] for k in locmem.raw_keys()] == [key(4)]
    assert locmem.user_records("7") == []


@options(MAX_ENTRIES=3)
def test_a_full_store_never_evicts_on_a_save_of_an_existing_session(
    locmem: LocMemByteStore,
) -> None:
    for n in range(3):
        locmem.add(key(n), rec(1), 60, 1)
    for n in range(3):
        assert locmem.cas(key(n), rec(2), 60, Token(1), 2, head=version_head(1)) == Token(2)
    assert len(locmem.raw_keys()) == 3


def test_threads_cas_incrementing_one_record_never_lose_an_increment(
    locmem: LocMemByteStore,
) -> None:
    locmem.add(key(1), rec(0), 60, 0)
    start = threading.Barrier(THREADS, timeout=30)
    errors: list[BaseException] = []
    conflicts = [0]

    def worker() -> None:
        try:
            start.wait()
            done = 0
            while done < INCREMENTS:
                found = locmem.get(key(1))
                assert found is not None
                value, handle = found
                assert handle is None
                version = peek_version(value)  # the engine's part: the store never parses
                assert version is not None
                written = locmem.cas(
                    key(1), rec(version + 1), 60, Token(version), version + 1,
                    head=version_head(version),
                )  # fmt: skip
                if written is None:
                    conflicts[0] += 1
                    continue
                done += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes, about
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert locmem.get(key(1)) == (version_head(THREADS * INCREMENTS) + b"{}", None)


def test_the_per_user_index_follows_every_write_and_delete(locmem: LocMemByteStore) -> None:
    locmem.add(key(1), rec(1, b"a1"), 60, 1, user="alice")
    locmem.add(key(2), rec(1, b"a2"), 60, 1, user="alice")
    locmem.add(key(3), rec(1, b"b"), 60, 1, user="bob")
    locmem.add(key(4), rec(1, b"anon"), 60, 1)
    assert locmem.user_records("alice") == [
        (key(1), version_head(1) + b"a1"),
        (key(2), version_head(1) + b"a2"),
    ]
    assert locmem.user_members("bob") == [key(3)]

    locmem.cas(
        key(2), rec(2, b"out"), 60, Token(1), 2, head=version_head(1), user=None
    )  # logged out, kept data
    locmem.cas(
        key(4), rec(2, b"in"), 60, Token(1), 2, head=version_head(1), user="bob"
    )  # logged in
    assert locmem.user_members("alice") == [key(1)]
    assert locmem.user_members("bob") == [key(3), key(4)]

    assert locmem.delete_many([key(3), key(9), key(3)]) == [True, False, False]
    assert locmem.user_members("bob") == [key(4)]
    locmem.forget_members("bob", [key(4)])
    assert locmem.user_members("bob") == []
    assert locmem.get(key(4)) is not None  # forgetting prunes the index, not the record
    assert locmem.user_members("nobody") == []


def test_cache_clear_ends_the_sessions_as_with_djangos_cache_engine(
    locmem: LocMemByteStore,
) -> None:
    session = SessionStore()
    session["n"] = 1
    session["_auth_user_id"] = "7"
    session.save()
    cache = caches["sessions"]
    cache.set("unrelated", 1)

    cache.clear()

    assert SessionStore(session.session_key).load() == {}
    assert locmem.user_records("7") == []
    assert locmem.raw_keys() == []
    # Sessions made after the clear are kept.
    again = SessionStore()
    again["n"] = 2
    again.save()
    assert SessionStore(again.session_key)["n"] == 2


@options(MAX_ENTRIES=5)
def test_a_busy_cache_does_not_cull_the_sessions_of_a_store_in_use(
    locmem: LocMemByteStore,
) -> None:
    """The cache culls its least recently used entries when full; the store's marker is
    rewritten on every operation, so it is never the one culled while sessions are used."""
    cache = caches["sessions"]
    locmem.add(key(1), rec(1), 60, 1)
    for n in range(40):
        cache.set(f"other-{n}", n)
        assert locmem.get(key(1)) is not None, n


def test_aliases_keep_their_records_apart() -> None:
    config = cache_settings("locmem")
    same_location = dict(config)
    other_location = {**config, "LOCATION": config["LOCATION"] + "-other"}
    with override_settings(
        CACHES={
            "default": dict(LOCMEM_DEFAULT),
            "a": config,
            "b": same_location,
            "c": other_location,
        }
    ):
        for alias in "abc":
            caches[alias].clear()
        a, b, c = (store_for_cache(alias) for alias in "abc")
        assert a.add(key(1), rec(1, b"a"), 60, 1, user="7") == Token(1)
        assert b.get(key(1)) is None and c.get(key(1)) is None
        assert b.add(key(1), rec(1, b"b"), 60, 1) == Token(1)
        assert a.get(key(1)) == (version_head(1) + b"a", None)
        assert b.user_records("7") == []  # type: ignore[attr-defined]
        assert b.delete(key(1)) is True
        assert a.get(key(1)) is not None
        # LocMemCache shares one LOCATION's entries: its clear() ends both stores' records.
        caches["b"].clear()
        assert a.get(key(1)) is None

    # The records stay in the process across settings changes, as the cache's own do.
    with override_settings(CACHES={"default": dict(LOCMEM_DEFAULT), "a": config}):
        assert store_for_cache("a").add(key(2), rec(1), 60, 1) == Token(1)
    with override_settings(CACHES={"default": dict(LOCMEM_DEFAULT), "a": config}):
        assert store_for_cache("a").get(key(2)) is not None


def test_a_forked_child_does_not_wait_for_a_lock_its_parent_held(
    locmem: LocMemByteStore,
) -> None:
    """Django's parallel test runner forks its workers: a child whose parent had another
    thread inside the store at that moment must not wait forever for that thread."""
    import os
    import select
    import signal

    locmem.add(key(1), rec(1), 60, 1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locmem._records.lock:  # a parent thread in the middle of an operation
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            os.write(write, b"ok" if locmem.get(key(1)) is not None else b"no")
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 10)
        answer = os.read(read, 2) if ready else b"stuck"
    finally:
        release.set()
        holder.join(10)
        os.close(read)
        if answer == b"stuck":
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer == b"ok"
    assert locmem.get(key(1)) is not None  # the parent's lock was released as usual
