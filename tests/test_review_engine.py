"""Review of the db engine and the engine core: attacks that found a break.

Each test is named after the attack; the ones here failed before the fix next to them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections, transaction

from hardened_sessions.backends.cached_db import SessionStore as CachedDBStore
from hardened_sessions.backends.db import SessionStore as DBStore
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.keys import store_key
from hardened_sessions.models import HardenedSession
from tests.conftest import configured_databases, require_server
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def locmem_sessions(request: pytest.FixtureRequest) -> Iterator[str]:
    with variant_cache("locmem", request) as alias:
        yield alias


def in_another_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` as another request would: its own thread, its own connections."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # pragma: no cover - reported below
            out.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


# --- cached_db: a logout inside a caller's transaction (ATOMIC_REQUESTS) -----------------


def test_a_load_between_a_transactional_logout_and_its_commit_leaves_no_copy(
    db_alias: str, locmem_sessions: str
) -> None:
    """The logout's row DELETE is not committed when its second cache delete runs: a
    concurrent load still reads the committed row, and its fill re-checks the version
    against that same committed row, so its copy lands. Once the logout commits, the
    copy keeps loading the logged-out session until its TTL."""
    session = CachedDBStore()
    session.update({"_auth_user_id": "7", "sudo": True})
    session.save()
    key = session.session_key
    assert key is not None
    from hardened_sessions.stores import store_for_cache

    store_for_cache(locmem_sessions).delete(store_key(key))  # the next load fills

    with transaction.atomic(using=db_alias):
        CachedDBStore(key).delete()  # Django's logout() -> flush() in an atomic view
        # Another request with the same cookie, meanwhile (its own connection).
        seen = in_another_thread(lambda: CachedDBStore(key).load())
        assert seen.get("_auth_user_id") == "7"  # the row is not gone until the commit
    assert not HardenedSession.objects.using(db_alias).filter(pk=store_key(key)).exists()
    assert CachedDBStore(key).load() == {}


class FailingThirdDelete:
    """Wraps a session's cache store: its third ``delete`` fails as an outage would
    (the one a logout in a transaction runs after the commit)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.deletes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete(self, key: str) -> bool:
        self.deletes += 1
        if self.deletes == 3:
            raise SessionStoreUnavailable("the cache went away")
        return bool(self._store.delete(key))


def test_a_transactional_logout_whose_after_commit_delete_fails_is_no_success(
    db_alias: str, locmem_sessions: str
) -> None:
    """The delete after the commit is the one that ends copies put back meanwhile: its
    failure must surface (the middleware answers SessionStoreUnavailable with 503)."""
    session = CachedDBStore()
    session.update({"_auth_user_id": "7"})
    session.save()
    key = session.session_key
    assert key is not None
    logout = CachedDBStore(key)
    logout._cache = FailingThirdDelete(logout._cache)  # type: ignore[assignment]
    with pytest.raises(SessionStoreUnavailable), transaction.atomic(using=db_alias):
        logout.delete()
    assert not HardenedSession.objects.using(db_alias).filter(pk=store_key(key)).exists()


def test_a_save_rolled_back_with_its_transaction_leaves_no_copy_of_it(
    db_alias: str, locmem_sessions: str
) -> None:
    """A save inside a caller's transaction puts its record in the cache at once; when
    the transaction rolls back, the cache serves data the database never kept."""
    session = CachedDBStore()
    session.update({"_auth_user_id": "7"})
    session.save()
    key = session.session_key
    assert key is not None

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic(using=db_alias):
        inside = CachedDBStore(key)
        inside["sudo"] = True
        inside.save()
        # Another object of this request reads the uncommitted row: its fill waits too.
        assert CachedDBStore(key).load()["sudo"] is True
        raise Boom
    assert "sudo" not in CachedDBStore(key).load()


# --- db engine: the expiry sweep -----------------------------------------------------------


def test_a_sweep_with_a_batch_size_of_zero_or_less_is_refused(db_alias: str) -> None:
    with pytest.raises(ValueError):
        DBStore.delete_expired(batch_size=0, using=db_alias)
    with pytest.raises(ValueError):
        DBStore.delete_expired(batch_size=-5, using=db_alias)


def expired_rows(alias: str, count: int) -> None:
    from datetime import UTC, datetime, timedelta

    past = datetime.now(UTC) - timedelta(days=1)
    HardenedSession.objects.using(alias).bulk_create(
        [
            HardenedSession(
                key_hash=f"{n:064x}",
                data=b"x",
                expire_date=past,
                created=past,
                last_activity=past,
                size=1,
                version=1,
            )
            for n in range(count)
        ]
    )


def test_the_default_sweep_fits_sqlites_oldest_bound_on_query_parameters() -> None:
    """SQLite before 3.32 (Django 5.2 supports 3.31) takes at most 999 parameters per
    statement, as Django's ``features.max_query_params`` says: a batch of 1000 keys
    plus the deadline failed every sweep there."""
    import sqlite3

    connection = connections["default"]
    connection.ensure_connection()
    raw = connection.connection
    old = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    try:
        expired_rows("default", 1001)
        assert DBStore.delete_expired(using="default") == 1001
        # METADATA_RETENTION's batches bind four parameters more than the keys.
        from datetime import UTC, datetime, timedelta

        from django.test import override_settings

        future = datetime.now(UTC) + timedelta(days=1)
        old_activity = datetime.now(UTC) - timedelta(days=30)
        HardenedSession.objects.using("default").bulk_create(
            [
                HardenedSession(
                    key_hash=f"{n:064x}",
                    data=b"x",
                    expire_date=future,
                    created=old_activity,
                    last_activity=old_activity,
                    size=1,
                    version=1,
                    ip_address="192.0.2.1",
                    user_agent="agent",
                )
                for n in range(1001)
            ]
        )
        with override_settings(
            HARDENED_SESSIONS={"DEVICE_METADATA": True, "METADATA_RETENTION": 86400}
        ):
            assert DBStore.delete_expired(using="default") == 0
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, old)
    assert not HardenedSession.objects.using("default").exclude(user_agent="").exists()


# --- db engine: the sweep's runner lock ---------------------------------------------------


def test_a_sweep_failing_in_a_callers_transaction_frees_the_runner_lock() -> None:
    """PostgreSQL: the advisory lock was a session lock, released by a statement after
    the sweep; in a caller's transaction that a failed batch had aborted, the release
    failed too (hiding the store failure behind "current transaction is aborted") and
    the connection kept the lock, so every later sweep, of any process, stood down."""
    from django.test import override_settings

    from hardened_sessions.backends.db import single_runner
    from tests.support.routers import SessionsAliasRouter
    from tests.test_threat_db_schema_faults import TRIGGERS

    alias = "postgresql"
    if alias not in configured_databases(alias):
        require_server(alias, "the advisory lock needs HS_TEST_POSTGRES_URL")
    connection = connections[alias]
    create, drop = TRIGGERS["postgresql"]
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        expired_rows(alias, 3)
        with connection.cursor() as cursor:
            for statement in create:
                cursor.execute(statement)
        try:
            with pytest.raises(SessionStoreUnavailable), transaction.atomic(using=alias):
                DBStore.clear_expired()
        finally:
            with connection.cursor() as cursor:
                for statement in drop:
                    cursor.execute(statement)

        def take() -> bool:
            with single_runner(alias) as obtained:
                return obtained

        assert in_another_thread(take) is True
        DBStore.clear_expired()
    assert not HardenedSession.objects.using(alias).exists()


# --- engine core: ideas that held (kept as guards) ----------------------------------------


def test_an_async_receiver_writing_the_session_during_its_save_does_not_deadlock() -> None:
    """Under ASGI a save runs in the thread-sensitive executor, holding the object's
    write lock while the signal calls an async receiver back on the event loop; the
    receiver's own dict write and save must not wait for that thread."""
    from asgiref.sync import async_to_sync

    from hardened_sessions.signals import session_created

    session = DBStore()

    async def receiver(sender: Any, **kwargs: Any) -> None:
        await session.aset("seen", True)
        await session.asave()  # re-entrant: the same object's write lock, same thread

    async def view() -> None:
        await session.aset("a", 1)
        await session.asave()

    session_created.connect(receiver, sender=DBStore, weak=False)
    try:
        in_another_thread(async_to_sync(view))
    finally:
        session_created.disconnect(receiver, sender=DBStore)
    assert session.session_key is not None
    assert DBStore(session.session_key).load() == {"a": 1, "seen": True}


def test_a_sweep_whose_runner_lock_cannot_be_taken_is_a_store_failure() -> None:
    """The runner lock's own statement met the database's errors unwrapped: a raw
    DatabaseError (a traceback from ``clearsessions``) instead of SessionStoreUnavailable.
    Here the caller's transaction is already broken (PostgreSQL refuses every statement);
    MySQL takes its lock outside any transaction: nothing to break there."""
    from django.db import DatabaseError
    from django.test import override_settings

    from tests.support.routers import SessionsAliasRouter

    alias = "postgresql"
    if alias not in configured_databases(alias):
        require_server(alias, "a broken transaction needs HS_TEST_POSTGRES_URL")
    connection = connections[alias]
    with (
        override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]),
        pytest.raises(SessionStoreUnavailable),
        transaction.atomic(using=alias),
    ):
        with pytest.raises(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT 1/0")
        DBStore.clear_expired()


def test_two_tasks_of_one_request_rotate_and_write_without_deadlock() -> None:
    """One task rotates the key (in the sync thread, under the write lock) while another
    writes the dict on the event loop: the loop only ever waits for the dict lock,
    which the rotating thread never holds across I/O; the write lands in the new key."""
    import asyncio

    from asgiref.sync import async_to_sync

    session = DBStore()
    session["user"] = "7"
    session.save()
    old_key = session.session_key

    async def writer() -> None:
        for n in range(50):
            await session.aset(f"k{n}", n)
            await asyncio.sleep(0)

    async def request() -> None:
        await asyncio.gather(session.acycle_key(), writer())
        await session.asave()

    in_another_thread(async_to_sync(request))
    assert session.session_key not in (None, old_key)
    stored = DBStore(session.session_key).load()
    assert stored["user"] == "7"
    assert all(stored[f"k{n}"] == n for n in range(50))
    assert DBStore(old_key).load() == {}
