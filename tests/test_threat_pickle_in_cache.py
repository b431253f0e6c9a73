"""Threat: a pickle planted in the session cache runs code when a session is loaded.

Whoever can write to the cache (a shared Redis, an exposed memcached port, another
application on the same server) can store a pickle under a session's key; Django's
cache backends unpickle what they read, so loading that session would run the
attacker's code. The cache engines must read their records as plain bytes, never
through the cache's serializer, and write signed ``hs1:`` records, not pickles.

Every test runs on each ``session_cache`` variant (``locmem``, ``django-redis``,
``django-rediscache``, ``pymemcache``: see ``tests/support/servers.py``) and, where the
cache engine's behaviour is in question, on both engines that use a cache.

The planted payload is harmless but real: unpickling it calls :func:`detonate`,
which writes a marker file. The control test shows that the stock cache API does
run it, so the engines' tests prove something.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.test import override_settings

from hardened_sessions import record
from hardened_sessions.backends.cache import SessionStore as CacheStore
from hardened_sessions.backends.cached_db import SessionStore as CachedDBStore
from hardened_sessions.buffers import RecordBuffer
from hardened_sessions.keys import generate_key, store_key
from hardened_sessions.stores import store_for_cache
from hardened_sessions.stores.memcached import _expire
from tests.support.servers import (
    CACHE_VARIANTS,
    RawCache,
    Server,
    cache_settings,
    memcached_ttl,
    raw_redis,
    sessions_cache,
)

ENGINES = {"cache": CacheStore, "cached_db": CachedDBStore}
THIRTY_DAYS = 30 * 24 * 3600

# Paths of the marker files that unpickling the payload wrote (in this process).
DETONATIONS: list[str] = []


def detonate(marker: str) -> str:
    """What the planted pickle runs when it is unpickled."""
    DETONATIONS.append(marker)
    Path(marker).write_text("the planted pickle ran\n", encoding="utf-8")
    return "pwned"


class Payload:
    """Unpickles into a call of :func:`detonate` (in the wild: ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (detonate, (self.marker,))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "detonated"
    DETONATIONS.clear()
    yield path
    DETONATIONS.clear()


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way in to the unpickler raises, and is recorded (in case it is swallowed)."""
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"pickle.{name} was called")

        return refused

    monkeypatch.setattr(pickle, "loads", refuse("loads"))
    monkeypatch.setattr(pickle, "load", refuse("load"))
    monkeypatch.setattr(pickle, "Unpickler", refuse("Unpickler"))
    return calls


def engine_param() -> Any:
    return pytest.mark.parametrize(
        "engine",
        [
            pytest.param("cache", id="cache"),
            pytest.param(
                "cached_db", id="cached_db", marks=pytest.mark.django_db(transaction=True)
            ),
        ],
    )


def full_key(raw: RawCache, session_key: str) -> str:
    """The session's key in the cache, computed independently of the engine."""
    digest = hashlib.sha256(session_key.encode("ascii")).hexdigest()
    return str(caches[raw.alias].make_key("hardened_sessions:" + digest))


def saved_session(engine: str, data: dict[str, Any]) -> Any:
    """A session saved by ``engine`` and, for cached_db, loaded once so that the cache
    holds its copy."""
    session = ENGINES[engine]()
    session.update(data)
    session.save()
    if engine == "cached_db":
        reloaded = ENGINES[engine](session.session_key)
        assert reloaded.load() == data
    return session


# --- the control: the planted value is a live exploit for the stock cache API -----------


def test_the_planted_pickle_runs_code_through_the_stock_cache_api(
    raw_session_cache: RawCache, marker: Path
) -> None:
    key = full_key(raw_session_cache, generate_key())
    raw_session_cache.set(key, pickle.dumps(Payload(marker)), pickled=True)
    name = key.split(":", 2)[2]  # the key before the cache's KEY_PREFIX and VERSION

    assert caches[raw_session_cache.alias].get(name) == "pwned"
    assert marker.exists()
    assert [str(marker)] == DETONATIONS


# --- the engines never unpickle -----------------------------------------------------------


@engine_param()
def test_loading_a_session_whose_record_is_a_pickle_runs_nothing(
    engine: str,
    raw_session_cache: RawCache,
    marker: Path,
    no_unpickling: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = saved_session(engine, {"user": "alice"})
    key = full_key(raw_session_cache, session.session_key)
    raw_session_cache.set(key, pickle.dumps(Payload(marker)), pickled=True)

    victim = ENGINES[engine](session.session_key)
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        assert victim.load() == {}

    assert not marker.exists()
    assert DETONATIONS == []
    assert no_unpickling == []
    suspicious = [r for r in caplog.records if r.name == "django.security.SuspiciousSession"]
    assert suspicious, "a planted record must be logged as suspicious"
    assert all(session.session_key not in r.getMessage() for r in caplog.records)
    # Treated as no session: no key kept, and the next save issues a fresh one.
    assert victim.session_key is None
    victim["user"] = "mallory"
    victim.save()
    assert victim.session_key != session.session_key
    assert not marker.exists()


@engine_param()
def test_a_pickle_under_an_unknown_key_is_never_unpickled(
    engine: str,
    raw_session_cache: RawCache,
    marker: Path,
    no_unpickling: list[str],
) -> None:
    session_key = generate_key()
    raw_session_cache.set(full_key(raw_session_cache, session_key), pickle.dumps(Payload(marker)))

    victim = ENGINES[engine](session_key)
    assert victim.exists(session_key) is False
    assert victim.load() == {}
    assert not marker.exists()
    assert no_unpickling == []


def test_the_store_computes_the_same_key(raw_session_cache: RawCache) -> None:
    session_key = generate_key()
    store = store_for_cache(raw_session_cache.alias)
    assert store._key(store_key(session_key)) == full_key(raw_session_cache, session_key)  # type: ignore[attr-defined]


# --- what the engines write ---------------------------------------------------------------


@engine_param()
def test_engines_write_signed_hs1_records_never_pickles(
    engine: str, raw_session_cache: RawCache, no_unpickling: list[str]
) -> None:
    session = saved_session(engine, {"user": "alice", "n": [1, 2, 3]})
    key = full_key(raw_session_cache, session.session_key)
    value = raw_session_cache.get(key)

    assert value is not None
    assert value.startswith(record.PREFIX)
    assert not value.startswith(b"\x80"), "a pickle (protocol 2+) header"
    decoded = record.decode(value, store_key(session.session_key), 65536)
    assert decoded.data == {"user": "alice", "n": [1, 2, 3]}
    # A dump of the cache yields no usable cookie.
    assert session.session_key.encode() not in value
    assert session.session_key not in key
    assert no_unpickling == []


@engine_param()
def test_records_are_stored_under_the_caches_prefix_and_version(
    engine: str, raw_session_cache: RawCache
) -> None:
    before = set(raw_session_cache.keys())
    session = saved_session(engine, {"user": "alice"})
    prefix, version = raw_session_cache.prefix, raw_session_cache.version
    digest = store_key(session.session_key)

    expected = f"{prefix}:{version}:hardened_sessions:{digest}"
    assert full_key(raw_session_cache, session.session_key) == expected
    # The one entry the session added, under the cache's own KEY_PREFIX and VERSION.
    assert set(raw_session_cache.keys()) - before == {expected}


def _deadline_cases() -> list[Any]:
    return [
        pytest.param({}, None, settings.SESSION_COOKIE_AGE, id="cookie-age"),
        pytest.param({}, 300, 300, id="set_expiry"),
        pytest.param({"IDLE_TIMEOUT": 120}, None, 120, id="idle-timeout"),
        pytest.param({"IDLE_TIMEOUT": 120, "ABSOLUTE_TIMEOUT": 60}, 300, 60, id="absolute"),
    ]


@engine_param()
@pytest.mark.parametrize(("hardened", "expiry", "expected"), _deadline_cases())
def test_entries_expire_at_the_records_earliest_deadline(
    engine: str,
    raw_session_cache: RawCache,
    hardened: dict[str, int],
    expiry: int | None,
    expected: int,
) -> None:
    with override_settings(HARDENED_SESSIONS=hardened):
        session = ENGINES[engine]()
        session["user"] = "alice"
        if expiry is not None:
            session.set_expiry(expiry)
        session.save()
        if engine == "cached_db":
            ENGINES[engine](session.session_key).load()
        key = full_key(raw_session_cache, session.session_key)
        ttl = raw_session_cache.ttl(key)
        rec = record.decode(
            raw_session_cache.get(key) or b"", store_key(session.session_key), 65536
        )

        assert rec.deadline - int(time.time()) == pytest.approx(expected, abs=2)
        assert ttl == pytest.approx(rec.deadline - time.time(), abs=2)

        # A later save moves the entry's expiry with the record's new deadline.
        if engine == "cache":
            later = ENGINES[engine](session.session_key)
            later["seen"] = True
            later.save()
            rec2 = record.decode(
                raw_session_cache.get(key) or b"", store_key(session.session_key), 65536
            )
            assert rec2.version == rec.version + 1
            assert raw_session_cache.ttl(key) == pytest.approx(rec2.deadline - time.time(), abs=2)


# --- memcached: TTLs above 30 days --------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "sent"),
    [
        pytest.param(1, 1, id="one-second"),
        pytest.param(0, 1, id="zero-is-one-second-not-forever"),
        pytest.param(-10, 1, id="negative-is-one-second"),
        pytest.param(2.9, 2, id="fraction-truncated"),
        pytest.param(3600, 3600, id="hour"),
        pytest.param(THIRTY_DAYS - 1, THIRTY_DAYS - 1, id="under-30-days"),
        pytest.param(THIRTY_DAYS, THIRTY_DAYS, id="exactly-30-days-relative"),
        pytest.param(THIRTY_DAYS + 1, 1_700_000_000 + THIRTY_DAYS + 1, id="over-30-days-absolute"),
        pytest.param(365 * 86400, 1_700_000_000 + 365 * 86400, id="a-year-absolute"),
    ],
)
def test_memcached_expire_sends_long_ttls_as_timestamps(
    monkeypatch: pytest.MonkeyPatch, ttl: float, sent: int
) -> None:
    import hardened_sessions.stores.memcached as memcached_store

    monkeypatch.setattr(memcached_store.time, "time", lambda: 1_700_000_000.25)
    assert _expire(ttl) == sent  # type: ignore[arg-type]


@engine_param()
def test_memcached_keeps_a_session_longer_than_30_days(
    engine: str, memcached_servers: list[Server], request: pytest.FixtureRequest
) -> None:
    sixty_days = 60 * 86400
    with sessions_cache(cache_settings("pymemcache", memcached=memcached_servers)) as alias:
        raw = RawCache("pymemcache", {"memcached": memcached_servers}, alias)
        session = ENGINES[engine]()
        session["user"] = "alice"
        session.set_expiry(sixty_days)
        session.save()
        if engine == "cached_db":
            ENGINES[engine](session.session_key).load()
        key = full_key(raw, session.session_key)

        # A relative TTL over 30 days would be read as a timestamp in 1970: gone at once.
        assert raw.get(key) is not None
        left = next(t for s in memcached_servers if (t := memcached_ttl(s, key)) is not None)
        assert left == pytest.approx(sixty_days, abs=5)
        fresh = CacheStore(session.session_key)
        assert fresh.load() == {"user": "alice", "_session_expiry": sixty_days}


# --- reads come from the primary -------------------------------------------------------------


def _signed(session_key: str, data: dict[str, Any], version: int) -> bytes:
    now = int(time.time())
    rec = record.Record(data=data, version=version, created=now, activity=now, expiry=now + 600)
    buf = RecordBuffer()
    record.encode(rec, store_key(session_key), buf, 65536)
    return buf.getvalue()


@pytest.mark.parametrize("variant", ["django-redis", "django-rediscache"])
def test_redis_reads_come_from_the_primary_never_a_replica(
    variant: str, redis_server: Server, second_redis_server: Server
) -> None:
    config = cache_settings(variant, redis=redis_server)
    # The second server plays a replica that lags behind (here: holds other data).
    if variant == "django-redis":
        config["LOCATION"] = [redis_server.url, second_redis_server.url]
    else:
        config["LOCATION"] = f"{redis_server.url},{second_redis_server.url}"
    with sessions_cache(config) as alias:
        redis_server.flush(CACHE_VARIANTS[variant][0])
        second_redis_server.flush()
        cache = caches[alias]
        session = CacheStore()
        session["role"] = "user"
        session.save()
        key = str(cache.make_key("hardened_sessions:" + store_key(session.session_key)))

        replica = raw_redis(second_redis_server)
        try:
            # A stale copy on the replica: validly signed for this very key.
            replica.set(key, _signed(session.session_key, {"role": "admin"}, 99), ex=600)
            # The cache's own reads would go to the replica: the setup means something.
            cache.set("probe", "from-primary")
            replica.set(str(cache.make_key("probe")), pickle.dumps("from-replica"))
            assert cache.get("probe") == "from-replica"

            assert CacheStore(session.session_key).load() == {"role": "user"}

            # Writes go to the primary only.
            later = CacheStore(session.session_key)
            later["role"] = "auditor"
            later.save()
            assert CacheStore(session.session_key).load() == {"role": "auditor"}
            assert record.peek_version(replica.get(key)) == 99
        finally:
            replica.close()
            second_redis_server.flush()
            redis_server.flush(CACHE_VARIANTS[variant][0])
