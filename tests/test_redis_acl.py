"""The Redis commands docs/engines.rst lists for an ACL user are all the cache engine needs.

A Redis user allowed exactly those commands (on every key) runs a session through its
whole life on each Redis backend: create (with the per-user index), load, save, a
conflicting save, rotation, revocation of the user's other sessions (one of them indexed
as earlier builds did), logout, and a save after the server forgot its scripts. A
command missing from that list fails here with NOPERM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.backends.cache import SessionStore
from tests.support.servers import Server, cache_settings, raw_redis, sessions_cache

ENGINE = "hardened_sessions.backends.cache"
USER = "hs-sessions-acl-test"
PASSWORD = "hs-acl-test-password"
# The list in docs/engines.rst ("With Redis ACLs, the sessions' user needs ...").
COMMANDS = [
    "get",
    "set",
    "del",
    "exists",
    "getrange",
    "rename",
    "expire",
    "ttl",
    "time",
    "zadd",
    "zrange",
    "zrem",
    "zremrangebyscore",
    "zcard",
    "smembers",
    "srem",
    "evalsha",
    "script|load",
]


@pytest.fixture
def acl_user(redis_server: Server) -> Iterator[str]:
    admin = raw_redis(redis_server)
    try:
        admin.execute_command(
            "ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "-@all",
            *(f"+{command}" for command in COMMANDS),
        )  # fmt: skip
        yield f"redis://{USER}:{PASSWORD}@{redis_server.address}/0"
    finally:
        admin.execute_command("ACL", "DELUSER", USER)
        admin.close()


@pytest.mark.parametrize("variant", ["django-redis", "django-rediscache"])
@pytest.mark.django_db
def test_a_session_lives_its_whole_life_as_the_readme_acl_user(
    variant: str, acl_user: str, redis_server: Server, django_user_model: Any
) -> None:
    config = cache_settings(variant, redis=redis_server)
    config["LOCATION"] = acl_user
    with sessions_cache(config), override_settings(SESSION_ENGINE=ENGINE):
        user = django_user_model.objects.create_user("acl-alice", password="x")
        sessions = []
        for device in range(3):
            session = SessionStore()
            session.update({"_auth_user_id": str(user.pk), "device": device})
            session.save()
            sessions.append(session)
        first = sessions[0]
        assert first.session_key is not None

        stale = SessionStore(first.session_key)
        assert stale["device"] == 0
        first["step"] = 1
        first.save()
        stale["other"] = 2
        stale.save()  # a version conflict: merged
        assert dict(SessionStore(first.session_key).items()) == {
            "_auth_user_id": str(user.pk),
            "device": 0,
            "step": 1,
            "other": 2,
        }

        admin = raw_redis(redis_server)
        try:
            admin.script_flush()
        finally:
            admin.close()
        first["step"] = 2
        first.save()

        first.cycle_key()
        assert SessionStore(first.session_key)["step"] == 2

        # One session indexed as earlier builds did (a plain set): read and moved over.
        from django.core.cache import caches

        cache = caches["sessions"]
        legacy = str(cache.make_key(f"hardened_sessions:user:{user.pk}"))
        index = str(cache.make_key(f"hardened_sessions:by-user:{user.pk}"))
        member = keys.store_key(sessions[2].session_key)
        admin = raw_redis(redis_server)
        try:
            admin.zrem(index, member)
            admin.sadd(legacy, member)
        finally:
            admin.close()

        assert hardened_sessions.revoke_user_sessions(user, keep=first.session_key) == 2
        assert len(hardened_sessions.user_sessions(user)) == 1

        first.flush()
        assert hardened_sessions.user_sessions(user) == []
