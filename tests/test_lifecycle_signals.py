"""Lifecycle signals: one for each way a session starts and ends, on every engine.

``hardened_sessions.signals``: ``session_created``, ``session_rotated``,
``session_revoked``, ``session_expired``, ``session_rejected``,
``session_conflict_merged`` (and ``sessions_swept`` per batch of the db sweep). Each
fires exactly once per event, on db, cache (LocMemCache and Redis) and cached_db
(on Redis), with a ``Reason`` and a ``description``, and only a key hash prefix,
never the session key nor its whole hash. A receiver written for the first signals,
``(sender, key_hash_prefix, reason, **kwargs)``, keeps working.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.dispatch import Signal
from django.test import override_settings

from hardened_sessions import keys, signals
from hardened_sessions.backends.db import SessionStore as DBStore
from hardened_sessions.exceptions import SessionRotationFailed
from hardened_sessions.revoke import revoke_sessions, revoke_user_sessions
from hardened_sessions.signals import Reason
from tests.support.clock import clock_at
from tests.support.servers import variant_cache

pytestmark = pytest.mark.django_db(transaction=True)

SIGNALS: dict[str, Signal] = {
    "created": signals.session_created,
    "rotated": signals.session_rotated,
    "revoked": signals.session_revoked,
    "expired": signals.session_expired,
    "rejected": signals.session_rejected,
    "conflict_merged": signals.session_conflict_merged,
    "swept": signals.sessions_swept,
}

ENGINES = {
    "db": ("hardened_sessions.backends.db", None),
    "cache-locmem": ("hardened_sessions.backends.cache", "locmem"),
    "cache-redis": ("hardened_sessions.backends.cache", "django-redis"),
    "cached_db-redis": ("hardened_sessions.backends.cached_db", "django-redis"),
}


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    path, variant = ENGINES[request.param]
    if variant is None:
        with override_settings(SESSION_ENGINE=path):
            yield path
        return
    with variant_cache(variant, request), override_settings(SESSION_ENGINE=path):
        yield path


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every lifecycle signal sent, as (name, kwargs with the sender)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = []
    for name, signal in SIGNALS.items():

        def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, {"sender": sender, **kwargs}))

        receivers.append(receiver)
        signal.connect(receiver, weak=False, dispatch_uid=f"{__name__}.{name}")
    try:
        yield seen
    finally:
        for name, signal in SIGNALS.items():
            signal.disconnect(dispatch_uid=f"{__name__}.{name}")


def store(key: str | None = None) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def saved(**data: Any) -> str:
    session = store()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


def prefix(session_key: str) -> str:
    return keys.store_key(session_key)[:16]


def only(events: list[tuple[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    """The single event sent, which must be ``name``."""
    assert [n for n, _ in events] == [name], events
    return events[0][1]


def assert_no_key_in(events: list[tuple[str, dict[str, Any]]], *session_keys: str) -> None:
    for _, kwargs in events:
        for value in kwargs.values():
            text = str(value)
            for session_key in session_keys:
                assert session_key not in text
                assert keys.store_key(session_key) not in text


def test_created(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    key = saved(a=1)
    sent = only(events, "created")
    assert sent["key_hash_prefix"] == prefix(key)
    assert len(sent["key_hash_prefix"]) == 16
    assert sent["reason"] is Reason.CREATED
    assert sent["user_id"] is None
    assert sent["sender"] is type(store())
    assert_no_key_in(events, key)


def test_rotated(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    old = saved(_auth_user_id="7")
    events.clear()
    session = store(old)
    session.cycle_key()
    new = session.session_key
    assert new is not None and new != old
    sent = only(events, "rotated")
    assert sent["old_key_hash_prefix"] == prefix(old)
    assert sent["key_hash_prefix"] == prefix(new)
    assert sent["user_id"] == "7"
    assert sent["reason"] is Reason.ROTATION
    assert_no_key_in(events, old, new)


def test_rotation_of_a_session_never_stored_is_a_creation(
    engine: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    session = store()
    session["a"] = 1
    session.cycle_key()
    assert session.session_key is not None
    sent = only(events, "created")
    assert sent["key_hash_prefix"] == prefix(session.session_key)


def test_a_failed_rotation_ends_the_session(
    engine: str, events: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old record is deleted, then the random source fails (the one seam replaced,
    as in test_threat_rand_failure): the session ended, and says so once."""
    old = saved(_auth_user_id="7")
    events.clear()
    session = store(old)
    session.load()

    def broken(n: int) -> bytes:
        raise OSError("no entropy")

    with monkeypatch.context() as patched, pytest.raises(SessionRotationFailed):
        patched.setattr(random, "_urandom", broken)
        patched.setattr(keys, "_last_draw", None)
        session.cycle_key()
    sent = only(events, "revoked")
    assert (sent["reason"], sent["user_id"]) == (Reason.ROTATION, "7")
    assert sent["key_hash_prefix"] == prefix(old)


def test_logout(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    key = saved(_auth_user_id="7")
    events.clear()
    session = store(key)
    session.load()
    session.flush()
    sent = only(events, "revoked")
    assert sent["key_hash_prefix"] == prefix(key)
    assert sent["reason"] is Reason.LOGOUT
    assert sent["user_id"] == "7"
    assert sent["description"] == "logged out"
    events.clear()
    store(key).delete()  # gone already: nothing ended, nothing sent
    assert events == []


def test_expired_on_load(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    key = saved(a=1)
    events.clear()
    with clock_at(time.time() + 10 * settings.SESSION_COOKIE_AGE):
        assert store(key).load() == {}
    names = [n for n, _ in events]
    assert sorted(names) == ["expired", "rejected"], events
    sent = dict(events)
    assert sent["rejected"]["reason"] is Reason.PAST_DEADLINE
    assert sent["rejected"]["description"] == "past its deadline"
    assert sent["expired"]["where"] == "load"
    assert sent["expired"]["reason"] is Reason.PAST_DEADLINE
    assert sent["expired"]["key_hash_prefix"] == sent["rejected"]["key_hash_prefix"] == prefix(key)
    assert_no_key_in(events, key)


def test_rejected(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    key = saved(a=1)
    events.clear()
    with override_settings(SECRET_KEY="another secret key, not the one that signed it" * 2):
        assert store(key).load() == {}
    sent = only(events, "rejected")
    assert sent["reason"] is Reason.BAD_RECORD
    assert sent["description"] == "bad signature"
    assert sent["key_hash_prefix"] == prefix(key)


def test_conflict_merged(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    key = saved(a=1, _auth_user_id="7")
    first, second = store(key), store(key)
    first.load()
    second.load()
    first["b"] = 2
    first.save()
    events.clear()
    second["c"] = 3
    second.save()
    sent = only(events, "conflict_merged")
    assert sent["key_hash_prefix"] == prefix(key)
    assert sent["reason"] is Reason.CONFLICT
    assert sent["user_id"] == "7"
    assert store(key).load() == {"a": 1, "_auth_user_id": "7", "b": 2, "c": 3}


def test_revoked_with_a_reason(engine: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    key = saved(_auth_user_id="7")
    events.clear()
    assert revoke_sessions([keys.store_key(key)], reason=Reason.ADMIN, user_ids={}) == 1
    sent = only(events, "revoked")
    assert sent["reason"] is Reason.ADMIN
    assert sent["description"] == "ended by an administrator"
    assert sent["key_hash_prefix"] == prefix(key)


def test_revoked_with_a_free_text_reason_keeps_the_text(
    engine: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """Callers used to pass a text: it becomes the description of REVOKED, or of the
    reason it was the text of."""
    first, second = saved(_auth_user_id="7"), saved(_auth_user_id="7")
    events.clear()
    assert revoke_sessions([keys.store_key(first)], reason="suspicious activity") == 1
    assert revoke_sessions([keys.store_key(second)], reason="ended by its user") == 1
    assert [(n, k["reason"], k["description"]) for n, k in events] == [
        ("revoked", Reason.REVOKED, "suspicious activity"),
        ("revoked", Reason.USER, "ended by its user"),
    ]


def test_password_change_revokes_with_its_reason(
    engine: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    keep, other = saved(_auth_user_id="7"), saved(_auth_user_id="7")
    events.clear()
    assert revoke_user_sessions("7", keep=keep, reason=Reason.PASSWORD_CHANGE) == 1
    sent = only(events, "revoked")
    assert (sent["reason"], sent["user_id"]) == (Reason.PASSWORD_CHANGE, "7")
    assert sent["key_hash_prefix"] == prefix(other)


def test_cap_revokes_with_its_reason(events: list[tuple[str, dict[str, Any]]]) -> None:
    with override_settings(HARDENED_SESSIONS={"MAX_SESSIONS_PER_USER": 1}):
        first = saved(_auth_user_id="7")
        events.clear()
        second = saved(_auth_user_id="7")
    names = sorted(n for n, _ in events)
    assert names == ["created", "revoked"], events
    revoked = dict(events)["revoked"]
    assert revoked["reason"] is Reason.CAP
    assert revoked["key_hash_prefix"] == prefix(first)
    assert dict(events)["created"]["key_hash_prefix"] == prefix(second)


def test_sweep_sends_one_signal_per_batch(events: list[tuple[str, dict[str, Any]]]) -> None:
    with clock_at(time.time() - 10 * settings.SESSION_COOKIE_AGE):
        for _ in range(3):
            saved(a=1)
    saved(a=2)  # live: stays
    events.clear()
    assert DBStore.delete_expired(batch_size=2) == 3
    assert [(n, k["count"], k["using"], k["sender"]) for n, k in events] == [
        ("swept", 2, "default", DBStore),
        ("swept", 1, "default", DBStore),
    ]
    events.clear()
    assert DBStore.delete_expired() == 0
    assert events == []


def test_receivers_of_the_first_signature_keep_working(engine: str) -> None:
    """A receiver with the first signature, connected to every signal that names a
    session, gets a str reason and the prefix."""
    seen: list[tuple[str, str]] = []

    def old_style(sender: Any, key_hash_prefix: str, reason: str, **kwargs: Any) -> None:
        assert isinstance(reason, str)
        seen.append((key_hash_prefix, reason.upper()))

    named = [s for name, s in SIGNALS.items() if name != "swept"]
    for signal in named:
        signal.connect(old_style, weak=False, dispatch_uid=f"{__name__}.old_style")
    try:
        key = saved(a=1)
        revoke_sessions([keys.store_key(key)], reason="revoked")
    finally:
        for signal in named:
            signal.disconnect(dispatch_uid=f"{__name__}.old_style")
    assert seen == [(prefix(key), "CREATED"), (prefix(key), "REVOKED")]


def test_a_load_and_a_save_without_events_send_nothing(
    engine: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    key = saved(a=1)
    events.clear()
    session = store(key)
    session["b"] = 2
    session.save()
    assert store(key).load() == {"a": 1, "b": 2}
    assert events == []
