"""The async per-user helpers: ``auser_sessions`` and ``arevoke_user_sessions``.

docs/api.rst: they take the arguments of ``user_sessions`` / ``revoke_user_sessions``
and give their results. The cache engine on Redis serves them from the native asyncio
store (no thread hop); the db engine (and every other one) runs the sync helper in a
thread. ``session_revoked`` is sent for each session ended, as the sync helper sends it.
Checked on the db engine (SQLite) and on the cache engine over django-redis and
Django's own RedisCache (``tests.support.servers.variant_cache``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings

import hardened_sessions
from hardened_sessions import keys, revoke
from hardened_sessions.backends.core import hash_prefix
from hardened_sessions.signals import Reason, session_revoked
from hardened_sessions.stores import async_store_for_cache
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
ENGINES = ["db", "django-redis", "django-rediscache"]


@pytest.fixture(params=ENGINES, ids=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The db engine, or the cache engine on one Redis variant."""
    if request.param == "db":
        with override_settings(SESSION_ENGINE="hardened_sessions.backends.db"):
            yield "db"
        return
    with (
        variant_cache(request.param, request),
        override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"),
    ):
        yield request.param


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def revocations() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    uid = "tests.test_per_user_sessions_async"
    session_revoked.connect(receiver, weak=False, dispatch_uid=uid)
    try:
        yield received
    finally:
        session_revoked.disconnect(dispatch_uid=uid)


def _store(key: str | None = None) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def _session(user: Any = None, **data: Any) -> str:
    session = _store()
    if user is not None:
        session["_auth_user_id"] = str(user.pk)
    session.update(data)
    session.save()
    key: str = session.session_key
    return key


def _described(sessions: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (s.key_hash, s.user_id, s.expire_date, s.created, s.last_activity, s.size, s.version)
        for s in sessions
    ]


def _no_thread_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the async helpers fall back to the sync ones."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the sync helper ran: the native async store was not used")

    monkeypatch.setattr(revoke, "user_sessions", refuse)
    monkeypatch.setattr(revoke, "revoke_user_sessions", refuse)


def test_the_redis_variants_have_a_native_async_store(engine: str) -> None:
    if engine == "db":
        return
    assert async_store_for_cache(settings.SESSION_CACHE_ALIAS) is not None


def test_auser_sessions_equals_user_sessions(
    engine: str, alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = {keys.store_key(_session(alice, n=n)) for n in range(3)}
    _session(bob)
    _session(theme="dark")
    expected = hardened_sessions.user_sessions(alice)
    assert {s.key_hash for s in expected} == mine
    if engine != "db":
        _no_thread_hop(monkeypatch)

    for who in (alice, alice.pk, str(alice.pk)):
        listed = asyncio.run(hardened_sessions.auser_sessions(who))
        assert _described(listed) == _described(expected)
    assert asyncio.run(revoke.auser_sessions(get_user_model()(pk=10_000))) == []


def test_auser_sessions_refuses_a_user_without_pk(engine: str) -> None:
    with pytest.raises(ValueError, match="no primary key"):
        asyncio.run(hardened_sessions.auser_sessions(get_user_model()()))


def test_arevoke_user_sessions_ends_all_but_the_kept_one(
    engine: str,
    alice: Any,
    bob: Any,
    revocations: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = _session(alice, device="laptop")
    others = [_session(alice, device="phone"), _session(alice, device="tablet")]
    bobs = _session(bob, device="desk")
    if engine != "db":
        _no_thread_hop(monkeypatch)

    ended = asyncio.run(hardened_sessions.arevoke_user_sessions(alice, keep=kept))

    assert ended == 2
    assert _store(kept).load() == {"_auth_user_id": str(alice.pk), "device": "laptop"}
    for key in others:
        assert _store(key).load() == {}
        assert not _store().exists(key)
    assert _store(bobs).load()["device"] == "desk"
    assert sorted(r["key_hash_prefix"] for r in revocations) == sorted(
        hash_prefix(keys.store_key(key)) for key in others
    )
    sender = import_module(settings.SESSION_ENGINE).SessionStore
    for received in revocations:
        assert received["sender"] is sender
        assert received["user_id"] == str(alice.pk)
        assert received["reason"] is Reason.REVOKED
        assert received["description"] == "revoked"
    remaining = asyncio.run(revoke.auser_sessions(alice))
    assert [s.key_hash for s in remaining] == [keys.store_key(kept)]
    # Nothing left to end: the same answer as the sync helper, and no more signals.
    assert asyncio.run(revoke.arevoke_user_sessions(alice, keep=kept)) == 0
    assert len(revocations) == 2


def test_arevoke_user_sessions_counts_as_the_sync_helper(
    engine: str, alice: Any, revocations: list[dict[str, Any]]
) -> None:
    first = [_session(alice, n=n) for n in range(3)]
    second = [_session(alice, n=n) for n in range(3)]

    synchronous = hardened_sessions.revoke_user_sessions(alice, keep=first[0])
    _store(first[0]).delete()
    asynchronous = asyncio.run(
        revoke.arevoke_user_sessions(
            alice, reason=Reason.ADMIN, description="all sessions ended in the admin"
        )
    )

    assert synchronous == 5
    assert asynchronous == 0
    assert all(not _store().exists(key) for key in first + second)
    # A new session, ended with another reason.
    late = _session(alice, n="late")
    assert asyncio.run(revoke.arevoke_user_sessions(alice.pk, reason=Reason.ADMIN)) == 1
    assert not _store().exists(late)
    assert revocations[-1]["reason"] is Reason.ADMIN
    assert revocations[-1]["key_hash_prefix"] == hash_prefix(keys.store_key(late))
    assert [r["reason"] for r in revocations] == [Reason.REVOKED] * 5 + [
        Reason.LOGOUT,  # the kept one, deleted through the engine
        Reason.ADMIN,
    ]
