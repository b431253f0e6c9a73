"""The Redis per-user index must not grow with every login that ever ended.

It was a plain set that only readers pruned: 20,000 logins that had ended (logged out,
rotated) left 20,000 members, and a password change, which revokes the user's other
sessions inside its request, read every one of them, a round trip each (1.9 s).

Now the index is a sorted set scored by each record's expiry: writes trim expired
members, and each login drops gone records among a few members picked at random, so
the set stays near the user's live sessions. Listing and revoking cost a few round trips
and one command per live session, counted here with Redis's own ``INFO commandstats``
and with a relay that counts the client's writes, not with wall time.

The index of earlier builds (a plain set under another key) keeps working: its live
sessions are listed and revoked, and it is emptied into the new one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.backends.cache import SessionStore
from tests.support.faults import FaultProxy
from tests.support.servers import (
    RawCache,
    Server,
    cache_settings,
    raw_redis,
    servers_for,
    sessions_cache,
    variant_cache,
)

pytestmark = pytest.mark.django_db

ENGINE = "hardened_sessions.backends.cache"
ENDED_LOGINS = 20_000
LIVE = 3


@pytest.fixture(params=["django-redis", "django-rediscache"])
def redis_cache(request: pytest.FixtureRequest) -> Iterator[RawCache]:
    variant: str = request.param
    with variant_cache(variant, request) as alias, override_settings(SESSION_ENGINE=ENGINE):
        yield RawCache(variant, servers_for(variant, request), alias)


def _login(user: Any, **data: Any) -> SessionStore:
    session = SessionStore()
    session.update({"_auth_user_id": str(user.pk), **data})
    session.save()
    return session


def _index(raw: RawCache, user: Any) -> str:
    return str(raw.cache.make_key(f"hardened_sessions:by-user:{user.pk}"))


def _legacy_index(raw: RawCache, user: Any) -> str:
    return str(raw.cache.make_key(f"hardened_sessions:user:{user.pk}"))


def _redis(raw: RawCache) -> Any:
    assert raw.redis_server is not None
    return raw_redis(raw.redis_server)


def _index_size(client: Any, raw: RawCache, user: Any) -> int:
    """Members of the user's index, in whichever shape it has."""
    return int(client.zcard(_index(raw, user))) + int(client.scard(_legacy_index(raw, user)))


def _commands(client: Any) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


@pytest.mark.slow
def test_twenty_thousand_ended_logins_leave_the_index_at_the_live_sessions(
    redis_cache: RawCache, redis_server: Server, django_user_model: Any
) -> None:
    raw = redis_cache
    # The store code is the same on both backends: the full count on one keeps the run short.
    ended_logins = ENDED_LOGINS if raw.variant == "django-redis" else ENDED_LOGINS // 10
    user = django_user_model.objects.create_user("many-logins", password="x")
    live = [_login(user, device=n) for n in range(LIVE)]
    for n in range(ended_logins):
        session = _login(user, n=n)
        if n % 10 == 0:
            session.cycle_key()  # a rotation ends the old key...
        session.flush()  # ...and a logout the session
    client = _redis(raw)
    try:
        size = _index_size(client, raw, user)
        # Each login checks INDEX_SAMPLE members: what is left is a handful, not 20,000.
        assert size <= LIVE + 10, size
        assert {k.decode() for k in client.zrange(_index(raw, user), 0, -1)} >= {
            keys.store_key(s.session_key) for s in live
        }

        # Revoking: commands and round trips bounded by the live sessions, not the history.
        config = cache_settings(raw.variant, redis=redis_server)
        proxy = FaultProxy(redis_server)
        try:
            config["LOCATION"] = proxy.as_server().url
            with sessions_cache(config, SESSION_ENGINE=ENGINE):
                client.config_resetstat()
                ended = hardened_sessions.revoke_user_sessions(user, keep=live[0].session_key)
                calls = _commands(client)
        finally:
            proxy.close()
    finally:
        client.close()
    assert ended == LIVE - 1
    calls = {name: n for name, n in calls.items() if not name.startswith("cmdstat_config")}
    print(
        f"\n{raw.variant}: {ended_logins} ended logins, index {size} members; revoking "
        f"{ended}: {sum(calls.values())} commands, {proxy.writes} writes: {calls}"
    )
    assert sum(calls.values()) <= 20 + 5 * size, calls
    assert calls.get("cmdstat_get", 0) <= size
    # One write for the index, one for the records, one for the deletes, one to prune;
    # the rest is the new connections' handshakes (8 in all with redis-py 8.1).
    assert proxy.writes <= 10, proxy.writes
    assert [s.key_hash for s in hardened_sessions.user_sessions(user)] == [
        keys.store_key(live[0].session_key)
    ]


def test_expired_members_leave_the_index_at_the_next_write(
    redis_cache: RawCache, django_user_model: Any
) -> None:
    raw = redis_cache
    user = django_user_model.objects.create_user("short-lived", password="x")
    for n in range(50):
        session = SessionStore()
        session.update({"_auth_user_id": str(user.pk), "n": n})
        session.set_expiry(1)
        session.save()
    client = _redis(raw)
    try:
        assert client.zcard(_index(raw, user)) == 50
        time.sleep(3.1)  # the records expired (TTL 1 s; members scored a second later)
        survivor = _login(user)
        assert client.zrange(_index(raw, user), 0, -1) == [
            keys.store_key(survivor.session_key).encode()
        ]
        assert client.ttl(_index(raw, user)) > 0  # the index expires with its sessions
    finally:
        client.close()


def _as_earlier_build(raw: RawCache, user: Any, sessions: list[SessionStore]) -> None:
    """Move these sessions' index entries to the index of earlier builds (a set with the
    longest session's TTL, as those builds kept it)."""
    client = _redis(raw)
    try:
        members = [keys.store_key(s.session_key) for s in sessions]
        client.zrem(_index(raw, user), *members)
        client.sadd(_legacy_index(raw, user), *members, "0" * 64)  # and one long gone
        client.expire(_legacy_index(raw, user), 1209600)
    finally:
        client.close()


def test_sessions_indexed_by_an_earlier_build_are_listed_revoked_and_moved_over(
    redis_cache: RawCache, django_user_model: Any
) -> None:
    raw = redis_cache
    user = django_user_model.objects.create_user("upgraded", password="x")
    old = [_login(user, device=n) for n in range(3)]
    _as_earlier_build(raw, user, old)
    new = _login(user, device=3)  # a login after the upgrade: no WRONGTYPE, both indexed

    listed = {s.key_hash for s in hardened_sessions.user_sessions(user)}
    assert listed == {keys.store_key(s.session_key) for s in [*old, new]}
    client = _redis(raw)
    try:
        assert client.exists(_legacy_index(raw, user)) == 0  # emptied into the new index
        assert client.zcard(_index(raw, user)) == 4
    finally:
        client.close()

    assert hardened_sessions.revoke_user_sessions(user, keep=new.session_key) == 3
    assert all(SessionStore(s.session_key).load() == {} for s in old)
    assert SessionStore(new.session_key)["device"] == 3


def test_a_revocation_right_after_the_upgrade_ends_the_earlier_builds_sessions(
    redis_cache: RawCache, django_user_model: Any
) -> None:
    raw = redis_cache
    user = django_user_model.objects.create_user("revoked-at-once", password="x")
    old = [_login(user, device=n) for n in range(3)]
    _as_earlier_build(raw, user, old)
    # An earlier-build server, still running, indexes another session meanwhile.
    straggler = _login(user, device=9)
    _as_earlier_build(raw, user, [straggler])

    assert hardened_sessions.revoke_user_sessions(user) == 4
    assert all(SessionStore(s.session_key).load() == {} for s in [*old, straggler])
    assert hardened_sessions.user_sessions(user) == []
    client = _redis(raw)
    try:
        assert client.exists(_legacy_index(raw, user), _index(raw, user)) == 0
    finally:
        client.close()


def hashed_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION that hides the key (the index can't name a member's record)."""
    return key_prefix + ":" + hashlib.sha256(f"{version}:{key}".encode()).hexdigest()


def test_a_key_function_that_hashes_keys_still_lists_and_revokes(
    redis_server: Server, django_user_model: Any
) -> None:
    config = cache_settings("django-rediscache", redis=redis_server)
    config["KEY_FUNCTION"] = hashed_key
    config["KEY_PREFIX"] += "-hashed"
    with sessions_cache(config, SESSION_ENGINE=ENGINE):
        user = django_user_model.objects.create_user("hashed", password="x")
        sessions = [_login(user, n=n) for n in range(3)]
        sessions[2].flush()
        listed = {s.key_hash for s in hardened_sessions.user_sessions(user)}
        assert listed == {keys.store_key(s.session_key) for s in sessions[:2]}
        assert hardened_sessions.revoke_user_sessions(user, keep=sessions[0].session_key) == 1
        assert SessionStore(sessions[1].session_key).load() == {}
        assert SessionStore(sessions[0].session_key)["n"] == 0
    redis_server.flush(config["KEY_PREFIX"])
