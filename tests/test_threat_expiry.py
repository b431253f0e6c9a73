"""Threat: a session that outlives its deadlines (stolen cookie, forgotten login).

A record past any of its deadlines (Django's expiry or ``set_expiry``, the idle
timeout, the absolute timeout: the earliest wins) loads as no session, whatever
the store says. The row's ``expire_date`` column is pushed far into the future by
hand in these tests, so they prove that the check reads the signed record and not
the column (the DB engine's stand-in for a store TTL).

Time is controlled by replacing the clock the package reads
(``hardened_sessions.backends.base.time``): records are saved under a clock set in
the past, then loaded with the real one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone

from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import session_rejected
from tests.support.clock import Clock, clock_at

DB = pytest.mark.django_db(transaction=True, databases="__all__")
FAR_FUTURE = datetime(2999, 1, 1, tzinfo=UTC)
TWO_WEEKS = 14 * 24 * 3600


# --- views for the middleware tests (this module is their URLconf) -----------------


def write_view(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse("written")


def read_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(repr(request.session.get("n")))


urlpatterns = [path("write/", write_view), path("read/", read_view)]


# --- helpers -------------------------------------------------------------------------


def real_now() -> int:
    return int(time.time())


def store_key(session_key: str) -> str:
    return hashlib.sha256(session_key.encode("ascii")).hexdigest()


def save_new(
    data: dict[str, Any] | None = None, *, at: float | None = None, expiry: Any = None
) -> str:
    """Create a session holding ``data`` (saved at ``at`` if given) and return its key."""

    def _save() -> str:
        session = SessionStore()
        session.update(data if data is not None else {"who": "alice"})
        if expiry is not None:
            session.set_expiry(expiry)
        session.save()
        assert session.session_key is not None
        return session.session_key

    if at is None:
        return _save()
    with clock_at(at):
        return _save()


def row_exists(alias: str, session_key: str) -> bool:
    return HardenedSession.objects.using(alias).filter(pk=store_key(session_key)).exists()


def push_column_far_away(alias: str, session_key: str) -> None:
    """Make the row's ``expire_date`` column say "alive for centuries" (the record is untouched)."""
    updated = (
        HardenedSession.objects.using(alias)
        .filter(pk=store_key(session_key))
        .update(expire_date=FAR_FUTURE)
    )
    assert updated == 1


def row_version(alias: str, session_key: str) -> int:
    return (
        HardenedSession.objects.using(alias)
        .filter(pk=store_key(session_key))
        .values_list("version", flat=True)
        .get()
    )


def loads(session_key: str) -> dict[str, Any]:
    return SessionStore(session_key).load()


@contextmanager
def rejections() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    session_rejected.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        session_rejected.disconnect(receiver)


# --- each deadline on its own ---------------------------------------------------------


def _past_datetime() -> Any:
    return timezone.now() - timedelta(seconds=120)


def _past_timedelta() -> Any:
    return timedelta(seconds=-120)


@DB
@pytest.mark.parametrize(
    "expiry_factory",
    [_past_datetime, _past_timedelta, lambda: -120],
    ids=["past-datetime", "negative-timedelta", "negative-seconds"],
)
def test_set_expiry_in_the_past_kills_the_session(db_alias: str, expiry_factory: Any) -> None:
    key = save_new({"who": "alice"}, expiry=expiry_factory())
    push_column_far_away(db_alias, key)
    assert loads(key) == {}


@DB
def test_set_expiry_in_the_future_keeps_the_session(db_alias: str) -> None:
    # Control for the test above: the same flow with a future expiry loads.
    key = save_new({"who": "alice"}, expiry=timezone.now() + timedelta(hours=1))
    assert loads(key)["who"] == "alice"


@DB
def test_set_expiry_seconds_elapsed_kills_the_session(db_alias: str) -> None:
    now = real_now()
    dead = save_new({"who": "alice"}, at=now - 360, expiry=300)
    alive = save_new({"who": "bob"}, at=now - 240, expiry=300)
    push_column_far_away(db_alias, dead)
    assert loads(dead) == {}
    assert loads(alive)["who"] == "bob"


@DB
@override_settings(SESSION_COOKIE_AGE=300)
def test_session_cookie_age_elapsed_kills_the_session(db_alias: str) -> None:
    now = real_now()
    dead = save_new({"who": "alice"}, at=now - 360)
    alive = save_new({"who": "bob"}, at=now - 240)
    push_column_far_away(db_alias, dead)
    assert loads(dead) == {}
    assert loads(alive)["who"] == "bob"


@DB
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_idle_timeout_elapsed_kills_the_session(db_alias: str) -> None:
    now = real_now()
    dead = save_new({"who": "alice"}, at=now - 660)
    alive = save_new({"who": "bob"}, at=now - 540)
    push_column_far_away(db_alias, dead)
    assert loads(dead) == {}
    assert loads(alive)["who"] == "bob"


@DB
@override_settings(HARDENED_SESSIONS={"ABSOLUTE_TIMEOUT": 1000, "IDLE_TIMEOUT": 300})
def test_absolute_timeout_kills_a_session_kept_active(db_alias: str) -> None:
    """Saved or touched every 200 s, never idle, the session still dies 1000 s after creation."""
    start = real_now() - 1100
    key = save_new({"n": 0}, at=start)
    expected = 0
    for step, offset in enumerate((200, 400, 600, 800, 950)):
        with clock_at(start + offset):
            session = SessionStore(key)
            assert session.get("n") == expected, f"dead too early at +{offset}s"
            if step % 2 == 0:
                expected += 1
                session["n"] = expected
                session.save()
            else:
                session.touch()
            assert session.session_key == key
    with clock_at(start + 999):
        assert loads(key) != {}, "the absolute deadline came early"
    # Now (start + 1100): the idle deadline (start + 1250) and Django's expiry (two weeks)
    # are ahead; only the absolute deadline (start + 1000) has passed.
    push_column_far_away(db_alias, key)
    assert loads(key) == {}


# --- the earliest deadline wins -------------------------------------------------------

EARLIEST = 300
LATER, LATEST = 3000, 6000

EARLIEST_CASES = {
    "cookie-age": (
        {"SESSION_COOKIE_AGE": EARLIEST},
        {"IDLE_TIMEOUT": LATER, "ABSOLUTE_TIMEOUT": LATEST},
        None,
    ),
    "set-expiry": ({}, {"IDLE_TIMEOUT": LATER, "ABSOLUTE_TIMEOUT": LATEST}, EARLIEST),
    "idle": ({}, {"IDLE_TIMEOUT": EARLIEST, "ABSOLUTE_TIMEOUT": LATEST}, None),
    "absolute": ({}, {"IDLE_TIMEOUT": LATER, "ABSOLUTE_TIMEOUT": EARLIEST}, None),
}


@DB
@pytest.mark.parametrize("case", list(EARLIEST_CASES))
def test_the_earliest_deadline_wins(db_alias: str, case: str) -> None:
    django_settings, hardened, expiry = EARLIEST_CASES[case]
    with override_settings(**django_settings, HARDENED_SESSIONS=hardened):
        now = real_now()
        dead = save_new({"who": "alice"}, at=now - EARLIEST - 60, expiry=expiry)
        alive = save_new({"who": "bob"}, at=now - EARLIEST + 60, expiry=expiry)
        push_column_far_away(db_alias, dead)
        push_column_far_away(db_alias, alive)
        assert loads(dead) == {}
        assert loads(alive)["who"] == "bob"


# --- timeouts configured (or shortened) after the record was written -------------------


@DB
@pytest.mark.parametrize(
    ("before", "after", "age"),
    [
        ({}, {"ABSOLUTE_TIMEOUT": 1000}, 1100),
        ({"ABSOLUTE_TIMEOUT": 86400}, {"ABSOLUTE_TIMEOUT": 1000}, 1100),
        ({}, {"IDLE_TIMEOUT": 600}, 700),
        ({"IDLE_TIMEOUT": 86400}, {"IDLE_TIMEOUT": 600}, 700),
    ],
    ids=["absolute-set", "absolute-shortened", "idle-set", "idle-shortened"],
)
def test_timeout_set_after_the_save_still_applies(
    db_alias: str, before: dict[str, Any], after: dict[str, Any], age: int
) -> None:
    """An operator who sets or shortens a timeout (after an incident, say) ends the
    sessions already older than it: the settings define a session as dead past them."""
    with override_settings(HARDENED_SESSIONS=before):
        key = save_new({"who": "alice"}, at=real_now() - age)
    push_column_far_away(db_alias, key)
    with override_settings(HARDENED_SESSIONS=after):
        assert loads(key) == {}


# --- what happens to a dead record -----------------------------------------------------


@DB
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_dead_record_is_deleted_logged_and_signalled(
    db_alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = save_new({"who": "alice"}, at=real_now() - 700)
    push_column_far_away(db_alias, key)
    caplog.clear()
    with rejections() as seen, caplog.at_level(logging.DEBUG, logger="hardened_sessions"):
        assert loads(key) == {}

    assert not row_exists(db_alias, key), "the dead record was left in the store"

    assert len(seen) == 1
    assert "deadline" in seen[0]["reason"].lower()
    prefix = seen[0]["key_hash_prefix"]
    assert prefix and store_key(key).startswith(prefix) and len(prefix) < 64

    records = [r for r in caplog.records if r.name == "hardened_sessions"]
    assert records, "the rejection was not logged on 'hardened_sessions'"
    for record in caplog.records:
        message = record.getMessage()
        assert key not in message
        assert store_key(key) not in message


@DB
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_next_save_after_a_dead_record_issues_a_fresh_key(db_alias: str) -> None:
    key = save_new({"who": "alice", "role": "admin"}, at=real_now() - 700)
    push_column_far_away(db_alias, key)

    session = SessionStore(key)
    assert "role" not in session
    session["who"] = "mallory"
    session.save()

    assert session.session_key is not None
    assert session.session_key != key
    assert not row_exists(db_alias, key), "a record was written back under the dead key"
    assert loads(session.session_key) == {"who": "mallory"}


@DB
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_exists_is_false_for_an_expired_record(db_alias: str) -> None:
    now = real_now()
    dead = save_new(at=now - 700)
    alive = save_new(at=now - 500)
    push_column_far_away(db_alias, dead)
    assert row_exists(db_alias, dead)
    assert SessionStore().exists(dead) is False
    assert SessionStore().exists(alive) is True


@DB
@pytest.mark.urls(__name__)
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_dead_cookie_through_the_middleware_is_no_session(db_alias: str) -> None:
    client = Client()
    with clock_at(real_now() - 700):
        assert client.get("/write/").status_code == 200
    old_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    push_column_far_away(db_alias, old_key)

    assert client.get("/read/").content == b"None"
    assert not row_exists(db_alias, old_key)

    response = client.get("/write/")
    assert response.status_code == 200
    new_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert new_key != old_key
    assert loads(new_key) == {"n": 1}


# --- the clock is not trusted to move forward -----------------------------------------


@DB
@override_settings(HARDENED_SESSIONS={"ABSOLUTE_TIMEOUT": 1000})
def test_clock_jumping_backwards_does_not_extend_the_absolute_deadline(db_alias: str) -> None:
    start = real_now() - 1100
    key = save_new({"n": 0}, at=start)
    with clock_at(start + 500):
        session = SessionStore(key)
        session["n"] = 1
        session.save()
    # The clock jumps back a day; the session is saved (and touched) there.
    with clock_at(start - 86400):
        session = SessionStore(key)
        assert session["n"] == 1
        session["n"] = 2
        session.save()
        assert session.session_key == key
        touched = SessionStore(key)
        assert touched["n"] == 2
        touched.touch()
    # created stayed at `start`: the deadline is start + 1000, neither earlier...
    with clock_at(start + 999):
        assert loads(key) == {"n": 2}
    # ...nor later.
    push_column_far_away(db_alias, key)
    assert loads(key) == {}


# --- TOUCH_INTERVAL: activity writes, through the middleware --------------------------


def _read(client: Client, clock: Clock, at: float) -> None:
    clock.now = at
    response = client.get("/read/")
    assert response.status_code == 200
    assert response.content == b"1", "the session did not survive"
    # The idle timeout is enforced on the server: an activity touch sets no cookie.
    assert settings.SESSION_COOKIE_NAME not in response.cookies


@DB
@pytest.mark.urls(__name__)
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": 60})
def test_touch_interval_bounds_activity_writes(db_alias: str) -> None:
    client = Client()
    start = real_now()
    with clock_at(start) as clock:
        assert client.get("/write/").status_code == 200
        key = client.cookies[settings.SESSION_COOKIE_NAME].value
        version = row_version(db_alias, key)

        for offset in (1, 30, 59):
            _read(client, clock, start + offset)
        assert row_version(db_alias, key) == version, "written within the touch interval"

        _read(client, clock, start + 61)
        assert row_version(db_alias, key) == version + 1, "activity not recorded after the interval"
        _read(client, clock, start + 61)
        _read(client, clock, start + 90)
        _read(client, clock, start + 119)
        assert row_version(db_alias, key) == version + 1, "written twice in one interval"

        _read(client, clock, start + 122)
        assert row_version(db_alias, key) == version + 2

        # Touches are activity: reading every 100 s keeps the session past IDLE_TIMEOUT.
        for offset in range(222, 1500, 100):
            _read(client, clock, start + offset)
        assert row_exists(db_alias, key)


@DB
@pytest.mark.urls(__name__)
@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_without_touch_interval_every_request_touches(db_alias: str) -> None:
    client = Client()
    start = real_now()
    with clock_at(start) as clock:
        assert client.get("/write/").status_code == 200
        key = client.cookies[settings.SESSION_COOKIE_NAME].value
        version = row_version(db_alias, key)
        for n, offset in enumerate((1, 2, 3, 10), start=1):
            _read(client, clock, start + offset)
            assert row_version(db_alias, key) == version + n


@DB
@pytest.mark.urls(__name__)
@override_settings(HARDENED_SESSIONS={})
def test_without_idle_timeout_no_request_touches(db_alias: str) -> None:
    client = Client()
    start = real_now()
    with clock_at(start) as clock:
        assert client.get("/write/").status_code == 200
        key = client.cookies[settings.SESSION_COOKIE_NAME].value
        version = row_version(db_alias, key)
        for offset in (1, 61, 3600, 86400, TWO_WEEKS - 3600):
            _read(client, clock, start + offset)
        assert row_version(db_alias, key) == version
