"""Threat: a broken or predictable random source (session keys that can be guessed).

A session key is the whole credential, so it is drawn from the operating
system's random source only, and when that source fails, repeats itself or
keeps returning unusable bytes, no key is issued at all
(``SessionKeyUnavailable``, answered 503): no fallback to a weaker generator,
no endless loop, nothing written to the store.

Where the bytes really come from: ``secrets.token_bytes`` calls
``random.SystemRandom.randbytes``, which calls ``random._urandom``, a name bound
to ``os.urandom`` when :mod:`random` is imported. Patching ``os.urandom`` therefore
tests nothing; these tests replace ``random._urandom``, and one of them pins
that pitfall down.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone

from hardened_sessions import keys, record
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.buffers import RecordBuffer
from hardened_sessions.exceptions import (
    SessionKeyUnavailable,
    SessionRotationFailed,
)
from hardened_sessions.models import HardenedSession
from hardened_sessions.record import Record

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
WELL_FORMED = re.compile(r"[a-z0-9]{32}")
# 252 = 7 * 36: the largest multiple of the alphabet's size that fits in a byte.
UNBIASED_BOUND = 252

on_every_database = pytest.mark.django_db(transaction=True, databases="__all__")


class FakeSource:
    """Stands in for ``random._urandom``: serves ``draw(call_index, n)`` and counts reads."""

    def __init__(self, draw: Callable[[int, int], bytes]) -> None:
        self.draw = draw
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        index = self.calls
        self.calls += 1
        return self.draw(index, n)


def distinct(seed: str) -> Callable[[int, int], bytes]:
    """Deterministic draws, different on every call (a working source, replayable)."""
    return lambda i, n: hashlib.shake_256(f"{seed}:{i}".encode()).digest(n)


def failing(exc: BaseException) -> Callable[[int, int], bytes]:
    def draw(i: int, n: int) -> bytes:
        raise exc

    return draw


@pytest.fixture(autouse=True)
def forget_the_previous_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    # The repeat check compares each read with the previous one, process-wide: start each
    # test from a clean slate so that replayed sources are not mistaken for repeats.
    monkeypatch.setattr(keys, "_last_draw", None)


@pytest.fixture
def use_source(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Callable[[int, int], bytes]], FakeSource]:
    def install(draw: Callable[[int, int], bytes]) -> FakeSource:
        source = FakeSource(draw)
        monkeypatch.setattr(random, "_urandom", source)
        monkeypatch.setattr(keys, "_last_draw", None)
        return source

    return install


def row_count(alias: str) -> int:
    return HardenedSession.objects.using(alias).count()


# ---------------------------------------------------------------------------- where the bytes come from


def test_patching_os_urandom_does_not_reach_key_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(n: int) -> bytes:
        raise OSError("os.urandom patched")

    monkeypatch.setattr(os, "urandom", broken)
    # The pitfall: random bound os.urandom at import, so keys are still drawn...
    assert random._urandom is not os.urandom  # type: ignore[attr-defined]
    assert WELL_FORMED.fullmatch(keys.generate_key())
    # ...while replacing what random really reads does reach them.
    monkeypatch.setattr(random, "_urandom", broken)
    with pytest.raises(SessionKeyUnavailable):
        keys.generate_key()


def test_keys_come_from_the_patched_source(use_source: Callable[..., FakeSource]) -> None:
    source = use_source(distinct("seen"))
    key = keys.generate_key()
    assert source.calls >= 1
    expected = "".join(ALPHABET[b % 36] for b in distinct("seen")(0, 48) if b < UNBIASED_BOUND)[:32]
    assert key == expected


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "exc",
    [OSError(5, "Input/output error"), NotImplementedError("no getrandom")],
    ids=["OSError", "NotImplementedError"],
)
def test_source_raising_means_no_key(
    use_source: Callable[..., FakeSource], exc: BaseException
) -> None:
    use_source(failing(exc))
    with pytest.raises(SessionKeyUnavailable) as info:
        keys.generate_key()
    assert info.value.__cause__ is exc


def test_no_fallback_to_a_weaker_generator(
    use_source: Callable[..., FakeSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    def weak(*args: object, **kwargs: object) -> object:
        raise AssertionError("a non-cryptographic generator was used")

    for name in ("random", "getrandbits", "randbytes", "choice", "choices", "randrange", "sample"):
        monkeypatch.setattr(random, name, weak)
    monkeypatch.setattr(random.Random, "getrandbits", weak)
    monkeypatch.setattr(random.Random, "random", weak)
    use_source(failing(OSError("entropy gone")))
    for _ in range(3):
        with pytest.raises(SessionKeyUnavailable):
            keys.generate_key()


def test_same_draw_twice_in_a_row_means_no_key(use_source: Callable[..., FakeSource]) -> None:
    stuck = bytes(range(1, 49))
    use_source(lambda i, n: (stuck * 2)[:n])
    first = keys.generate_key()
    assert WELL_FORMED.fullmatch(first)
    with pytest.raises(SessionKeyUnavailable, match="same bytes"):
        keys.generate_key()


def test_repeat_within_one_key_means_no_key(use_source: Callable[..., FakeSource]) -> None:
    # Mostly unusable bytes, so the first key needs a second read, which repeats the first.
    draw = bytes([255] * 40 + list(range(8)))
    source = use_source(lambda i, n: (draw * 2)[:n])
    with pytest.raises(SessionKeyUnavailable, match="same bytes"):
        keys.generate_key()
    assert source.calls == 2


@pytest.mark.timeout(10)
def test_source_stuck_on_unusable_bytes_gives_up(use_source: Callable[..., FakeSource]) -> None:
    # Every byte >= 252 (rejected to avoid modulo bias), each read different from the last.
    def high(i: int, n: int) -> bytes:
        return bytes(252 + b % 4 for b in hashlib.shake_256(b"%d" % i).digest(n))

    source = use_source(high)
    with pytest.raises(SessionKeyUnavailable, match="unusable"):
        keys.generate_key()
    assert 1 <= source.calls <= 8


@pytest.mark.timeout(10)
def test_source_stuck_on_one_value_gives_up(use_source: Callable[..., FakeSource]) -> None:
    source = use_source(lambda i, n: b"\xff" * n)
    with pytest.raises(SessionKeyUnavailable):
        keys.generate_key()
    assert source.calls <= 8


@pytest.mark.parametrize("short", [1, 47])
def test_short_read_means_no_key(use_source: Callable[..., FakeSource], short: int) -> None:
    use_source(lambda i, n: distinct("short")(i, n)[: n - short])
    with pytest.raises(SessionKeyUnavailable):
        keys.generate_key()


# ---------------------------------------------------------------------------- the keys themselves


def test_unusable_bytes_are_skipped_not_folded(use_source: Callable[..., FakeSource]) -> None:
    # 252..255 would map to a..d under a plain modulo, doubling their odds.
    draw = bytes([252, 253, 254, 255, 251, 36, 0] + list(range(1, 41)) + [255])
    use_source(
        lambda i, n: (draw + distinct("pad")(i, n))[:n] if i == 0 else distinct("tail")(i, n)
    )
    assert keys.generate_key() == "9a" + ALPHABET[:30]


def test_keys_are_32_characters_of_the_alphabet_and_unique() -> None:
    issued = [keys.generate_key() for _ in range(2000)]
    for key in issued:
        assert WELL_FORMED.fullmatch(key), key
        assert keys.is_well_formed(key)
    assert len(set(issued)) == len(issued)


def test_character_frequencies_show_no_modulo_bias() -> None:
    # 4000 keys = 128,000 characters. For a uniform source the chi-square statistic over
    # 36 characters (35 degrees of freedom) exceeds 100 with probability about 1e-7; a
    # plain ``byte % 36`` (a..d drawn 8/256 of the time instead of 7/256) scores ~250.
    counts = Counter("".join(keys.generate_key() for _ in range(4000)))
    total = sum(counts.values())
    assert set(counts) == set(ALPHABET)
    expected = total / len(ALPHABET)
    chi_square = sum((counts[c] - expected) ** 2 / expected for c in ALPHABET)
    assert chi_square < 100, (chi_square, counts.most_common(6))


def test_a_plain_modulo_would_fail_the_frequency_check() -> None:
    # The control: the same statistic on a biased mapping of real random bytes.
    data = os.urandom(128_000)
    counts = Counter(ALPHABET[b % 36] for b in data)
    expected = len(data) / 36
    chi_square = sum((counts[c] - expected) ** 2 / expected for c in ALPHABET)
    assert chi_square > 100


# ---------------------------------------------------------------------------- the DB engine


@on_every_database
@pytest.mark.parametrize("exc", [OSError, NotImplementedError])
def test_create_with_a_failing_source_writes_nothing(
    db_alias: str, use_source: Callable[..., FakeSource], exc: type[BaseException]
) -> None:
    use_source(failing(exc("no entropy")))
    session = SessionStore()
    session["_auth_user_id"] = "1"
    with pytest.raises(SessionKeyUnavailable):
        session.save()
    assert session.session_key is None
    assert row_count(db_alias) == 0


@on_every_database
def test_existing_session_saves_without_drawing(
    db_alias: str, use_source: Callable[..., FakeSource]
) -> None:
    session = SessionStore()
    session["a"] = 1
    session.save()
    source = use_source(failing(OSError("no entropy")))
    session["b"] = 2
    session.save()
    assert source.calls == 0
    assert SessionStore(session.session_key).load() == {"a": 1, "b": 2}


@on_every_database
def test_rotation_with_a_failing_source_leaves_no_live_key(
    db_alias: str, use_source: Callable[..., FakeSource]
) -> None:
    session = SessionStore()
    session["_auth_user_id"] = "1"
    session.save()
    old_key = session.session_key
    use_source(failing(OSError("no entropy")))
    with pytest.raises(SessionRotationFailed) as info:
        session.cycle_key()
    assert isinstance(info.value.__cause__, SessionKeyUnavailable)
    assert row_count(db_alias) == 0
    assert session.session_key is None
    assert SessionStore(old_key).load() == {}


def _insert_victim(alias: str, session_key: str, marker: int) -> bytes:
    """A real, signed session stored under ``session_key``; returns its stored bytes."""
    store_key = keys.store_key(session_key)
    now = int(timezone.now().timestamp())
    buf = RecordBuffer()
    record.encode(
        Record(data={"victim": marker}, version=1, created=now, activity=now, expiry=now + 3600),
        store_key,
        buf,
        65536,
    )
    raw = buf.getvalue()
    moment = timezone.now()
    HardenedSession.objects.using(alias).create(
        key_hash=store_key,
        data=raw,
        expire_date=moment + timedelta(hours=1),
        created=moment,
        last_activity=moment,
        size=len(raw),
        version=1,
    )
    return raw


def _predict(use_source: Callable[..., FakeSource], seed: str, count: int) -> list[str]:
    source = use_source(distinct(seed))
    predicted = [keys.generate_key() for _ in range(count)]
    # One read per key, so the replay below can be counted in keys.
    assert source.calls == count
    return predicted


@on_every_database
@pytest.mark.parametrize("attempts", [1, 3])
def test_collisions_exhaust_key_attempts_without_overwriting(
    db_alias: str, use_source: Callable[..., FakeSource], attempts: int
) -> None:
    predicted = _predict(use_source, "collide", attempts + 1)
    victims = {key: _insert_victim(db_alias, key, n) for n, key in enumerate(predicted[:attempts])}

    with override_settings(HARDENED_SESSIONS={"KEY_ATTEMPTS": attempts}):
        source = use_source(distinct("collide"))  # replays the same keys
        session = SessionStore()
        session["attacker"] = True
        with pytest.raises(SessionKeyUnavailable):
            session.save()
        assert source.calls == attempts
        assert session.session_key is None
        assert row_count(db_alias) == attempts
        for n, (key, raw) in enumerate(victims.items()):
            row = HardenedSession.objects.using(db_alias).get(pk=keys.store_key(key))
            assert bytes(row.data) == raw
            assert SessionStore(key).load() == {"victim": n}

    with override_settings(HARDENED_SESSIONS={"KEY_ATTEMPTS": attempts + 1}):
        source = use_source(distinct("collide"))
        session = SessionStore()
        session["attacker"] = True
        session.save()
        assert source.calls == attempts + 1
        assert session.session_key == predicted[attempts]
        assert row_count(db_alias) == attempts + 1
        assert SessionStore(predicted[attempts]).load() == {"attacker": True}


class AlwaysTaken(SessionStore):
    """Every key is already taken: counts how often creation is tried."""

    tried: list[str]

    def _write_new(self, store_key: str, data: memoryview, rec: Record) -> None:
        self.tried.append(store_key)
        return None


@pytest.mark.parametrize("attempts", [None, 1, 7])
def test_key_attempts_bounds_creation(attempts: int | None) -> None:
    config = {} if attempts is None else {"KEY_ATTEMPTS": attempts}
    with override_settings(HARDENED_SESSIONS=config):
        session = AlwaysTaken()
        session.tried = []
        with pytest.raises(SessionKeyUnavailable):
            session.save()
    assert len(session.tried) == (attempts or 10)
    assert len(set(session.tried)) == len(session.tried)
    assert session.session_key is None


# ---------------------------------------------------------------------------- through the middleware


def login_like(request: HttpRequest) -> HttpResponse:
    request.session["_auth_user_id"] = "1"
    return HttpResponse("ok")


urlpatterns = [path("set/", login_like)]


@on_every_database
@pytest.mark.urls(__name__)
def test_middleware_answers_503_with_retry_after(
    db_alias: str, use_source: Callable[..., FakeSource]
) -> None:
    use_source(failing(OSError("no entropy")))
    response = Client().get("/set/")
    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert "sessionid" not in response.cookies
    assert row_count(db_alias) == 0
