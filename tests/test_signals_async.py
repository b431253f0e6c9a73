"""Signal receivers on the native async path.

On the cache engine the async methods run their policy on the event loop (Redis,
memcached, LocMemCache). A receiver of ``session_created``, ``session_rotated``,
``session_revoked`` or ``session_rejected`` is sync code that may use the ORM, which
Django refuses on an event loop (``SynchronousOnlyOperation``): the receivers run in a
thread (``sync_to_async``, thread-sensitive, as Django runs sync code), once the
operation's store accesses are done, before the async method returns. And a receiver
that raises after a rotation stored its new record leaves the session on that record,
on both paths: the failure is the receiver's, not the store's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from hardened_sessions import signals
from hardened_sessions.capabilities import Capability
from hardened_sessions.exceptions import SessionRotationFailed
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE = "hardened_sessions.backends.cache"
VARIANTS = ["locmem", "django-redis", "pymemcache"]


@pytest.fixture(params=VARIANTS)
def cache_engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    with (
        variant_cache(request.param, request) as alias,
        override_settings(SESSION_ENGINE=ENGINE, SESSION_CACHE_ALIAS=alias),
    ):
        store_class = import_module(ENGINE).SessionStore
        assert store_class().native_async
        yield store_class


@pytest.fixture
def orm_receiver() -> Iterator[list[tuple[str, int]]]:
    """A receiver of every session signal that queries the database, as audit logs do."""
    seen: list[tuple[str, int]] = []

    def receiver(signal: Any, sender: Any, **kwargs: Any) -> None:
        seen.append((kwargs["reason"].value, get_user_model().objects.count()))

    connected = [
        signals.session_created,
        signals.session_rotated,
        signals.session_revoked,
        signals.session_rejected,
    ]
    for signal in connected:
        signal.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        for signal in connected:
            signal.disconnect(receiver)


def test_receivers_that_use_the_orm_work_on_the_async_path(
    cache_engine: Any, orm_receiver: list[tuple[str, int]]
) -> None:
    async def scenario() -> None:
        session = cache_engine()
        await session.aset("a", 1)
        await session.asave()  # created
        await session.acycle_key()  # rotated
        assert await cache_engine(session.session_key).aget("a") == 1
        await session.aflush()  # revoked (logout)

    asyncio.run(scenario())
    reasons = [reason for reason, _ in orm_receiver]
    assert reasons == ["created", "rotation", "logout"], orm_receiver


def test_a_rejected_record_reaches_an_orm_receiver_and_loads_as_no_session(
    cache_engine: Any, orm_receiver: list[tuple[str, int]]
) -> None:
    session = cache_engine()
    session["a"] = 1
    session.save()
    store = session._store
    from hardened_sessions import keys

    store_key = keys.store_key(session.session_key)
    raw, _ = store.get(store_key)
    tampered = raw[:-3] + (b"AAA" if raw[-3:] != b"AAA" else b"BBB")
    store.delete(store_key)
    assert store.add(store_key, memoryview(tampered), 300, 1) is not None
    orm_receiver.clear()

    async def load() -> dict[str, Any]:
        return await cache_engine(session.session_key).aload()

    assert asyncio.run(load()) == {}
    assert [reason for reason, _ in orm_receiver] == ["bad_record"], orm_receiver


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_receiver_failing_after_a_rotation_leaves_the_session_on_its_new_record(
    cache_engine: Any, path: str
) -> None:
    class AuditDown(Exception):
        pass

    def failing(sender: Any, **kwargs: Any) -> None:
        raise AuditDown("the audit log is down")

    session = cache_engine()
    session["a"] = 1
    session.save()
    old_key = session.session_key
    signals.session_rotated.connect(failing, weak=False)
    try:
        with pytest.raises(AuditDown) as raised:
            if path == "sync":
                session.cycle_key()
            else:
                asyncio.run(session.acycle_key())
    finally:
        signals.session_rotated.disconnect(failing)
    assert not isinstance(raised.value, SessionRotationFailed)
    assert not session.rotation_failed
    new_key = session.session_key
    assert new_key is not None and new_key != old_key
    assert session["a"] == 1
    assert cache_engine(new_key).load() == {"a": 1}  # the session holds the stored record
    assert not cache_engine().exists(old_key)


def test_a_cancellation_while_signals_are_sent_waits_for_them(cache_engine: Any) -> None:
    """A request cancelled (the client went away) while its save's signals are being
    sent: the receivers still all run, and before the cancellation reaches the caller."""
    import threading
    import time

    heard: list[str] = []
    started = threading.Event()

    def slow_receiver(sender: Any, **kwargs: Any) -> None:
        started.set()
        time.sleep(0.3)
        heard.append(kwargs["reason"].value)

    signals.session_created.connect(slow_receiver, weak=False)
    try:

        async def scenario() -> None:
            session = cache_engine()
            await session.aset("a", 1)
            task = asyncio.ensure_future(session.asave())
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert heard == ["created"]  # sent in full before the caller heard

        asyncio.run(scenario())
    finally:
        signals.session_created.disconnect(slow_receiver)


@pytest.mark.parametrize("path", ["sync", "async"])
# memcached does not enforce MAX_SESSIONS_PER_USER (hardened_sessions.W402).
@pytest.mark.parametrize("cache_engine", ["locmem", "django-redis"], indirect=True)
def test_a_raising_receiver_does_not_keep_the_others_from_hearing(
    cache_engine: Any, path: str
) -> None:
    """With ``MAX_SESSIONS_PER_USER = 1`` a rotation into a user ends the user's other
    session (``session_revoked``, CAP) and starts the new one (``session_rotated``). A
    CAP receiver that raises: the rotation is done all the same (the session on its new
    record, no phantom), the rotation's signal is still sent, and the receiver's error
    reaches the caller, on both paths."""

    assert Capability.USER_CAP in cache_engine.capabilities()

    class AuditDown(Exception):
        pass

    heard: list[str] = []

    def cap_receiver(sender: Any, **kwargs: Any) -> None:
        if kwargs["reason"] == signals.Reason.CAP:
            raise AuditDown("the audit log is down")

    def rotated(sender: Any, **kwargs: Any) -> None:
        heard.append("rotated")

    with override_settings(HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 1}):
        other = cache_engine()
        other["_auth_user_id"] = "7"
        other.save()
        session = cache_engine()
        session["a"] = 1
        session.save()
        signals.session_revoked.connect(cap_receiver, weak=False)
        signals.session_rotated.connect(rotated, weak=False)
        try:
            session["_auth_user_id"] = "7"
            with pytest.raises(AuditDown):
                if path == "sync":
                    session.cycle_key()
                else:
                    asyncio.run(session.acycle_key())
        finally:
            signals.session_revoked.disconnect(cap_receiver)
            signals.session_rotated.disconnect(rotated)
        assert heard == ["rotated"]
        assert not session.rotation_failed
        assert cache_engine(session.session_key).load() == {"a": 1, "_auth_user_id": "7"}
        assert not cache_engine().exists(other.session_key)
