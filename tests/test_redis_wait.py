"""``REDIS_WAIT_REPLICAS``: a session write that replicas did not confirm is a 503.

Redis acknowledges a write before any replica holds it; a failover can then drop it
(``tests/test_failover_sentinel.py`` shows it happen). With the setting, every write of
a session record (create, save, delete: so logout, rotation and revoke) is followed by
``WAIT`` on the same connection, and fewer confirmations than asked fail the operation
closed. Here the servers have no replica at all, so every write must fail, reads not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from hardened_sessions.backends.cache import SessionStore
from hardened_sessions.conf import validate
from hardened_sessions.exceptions import SessionStoreUnavailable
from tests.support.servers import Server, cache_settings, sessions_cache
from tests.support.servers_scaleout import RedisClusterHandle

ENGINE = "hardened_sessions.backends.cache"
WAIT = {"REDIS_WAIT_REPLICAS": 1, "REDIS_WAIT_TIMEOUT_MS": 50}


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"REDIS_WAIT_REPLICAS": -1}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_REPLICAS": True}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_REPLICAS": "1"}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_REPLICAS": 101}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_TIMEOUT_MS": 0}, "REDIS_WAIT_TIMEOUT_MS"),  # Redis: wait forever
        ({"REDIS_WAIT_TIMEOUT_MS": 60_001}, "REDIS_WAIT_TIMEOUT_MS"),
        ({"REDIS_WAIT_TIMEOUT_MS": 1.5}, "REDIS_WAIT_TIMEOUT_MS"),
    ],
)
def test_bad_wait_settings_are_refused(settings: dict[str, Any], problem: str) -> None:
    problems = validate(settings)
    assert len(problems) == 1 and problem in problems[0]


def test_good_wait_settings_pass() -> None:
    assert validate({"REDIS_WAIT_REPLICAS": 0}) == []
    assert validate({"REDIS_WAIT_REPLICAS": 2, "REDIS_WAIT_TIMEOUT_MS": 1}) == []


@pytest.fixture(params=["django-redis", "django-rediscache"])
def redis_sessions(request: pytest.FixtureRequest, redis_server: Server) -> Iterator[str]:
    with sessions_cache(cache_settings(request.param, redis=redis_server), SESSION_ENGINE=ENGINE):
        yield request.param


def _existing() -> str:
    session = SessionStore()
    session["n"] = 1
    session.save()
    assert session.session_key is not None
    return session.session_key


def test_without_replicas_every_session_write_fails_closed(redis_sessions: str) -> None:
    key = _existing()  # written without WAIT
    with override_settings(HARDENED_SESSIONS=WAIT):
        assert SessionStore(key)["n"] == 1  # reads never wait
        fresh = SessionStore()
        fresh["n"] = 0
        with pytest.raises(SessionStoreUnavailable):
            fresh.save()
        session = SessionStore(key)
        session["n"] = 2
        with pytest.raises(SessionStoreUnavailable):
            session.save()
        with pytest.raises(SessionStoreUnavailable):
            SessionStore(key).delete()
    # The writes did run on the primary (only their replication is unconfirmed: the
    # outcome is unknown, hence the 503); the connections went back clean, so the next
    # commands get their own replies.
    other = _existing()
    for _ in range(3):
        assert SessionStore(key).load() == {}
        assert SessionStore(other)["n"] == 1


def test_with_enough_replicas_confirmed_the_writes_go_through(redis_sessions: str) -> None:
    # WAIT 0 replicas: Redis answers at once; the setting's own path, with no replica.
    key = _existing()
    with override_settings(HARDENED_SESSIONS={"REDIS_WAIT_REPLICAS": 0}):
        session = SessionStore(key)
        session["n"] = 3
        session.save()
        assert SessionStore(key)["n"] == 3
        SessionStore(key).delete()
        assert SessionStore(key).load() == {}


def test_on_redis_cluster_every_session_write_waits_too(redis_cluster: RedisClusterHandle) -> None:
    from django.core.cache import caches

    config = {
        "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
        "LOCATION": redis_cluster.urls,
        "KEY_PREFIX": "hs-wait",
        "OPTIONS": {"socket_timeout": 5},
    }
    redis_cluster.flush()
    try:
        with sessions_cache(config, SESSION_ENGINE=ENGINE) as alias:
            try:
                keys = [_existing() for _ in range(6)]  # in several slots
                with override_settings(HARDENED_SESSIONS=WAIT):
                    fresh = SessionStore()
                    fresh["n"] = 0
                    with pytest.raises(SessionStoreUnavailable):
                        fresh.save()
                    for key in keys:
                        assert SessionStore(key)["n"] == 1
                        session = SessionStore(key)
                        session["n"] = 2
                        with pytest.raises(SessionStoreUnavailable):
                            session.save()
                        with pytest.raises(SessionStoreUnavailable):
                            SessionStore(key).delete()
            finally:
                caches[alias].close_client()
    finally:
        redis_cluster.flush()
