"""Threat: lost updates between concurrent requests on one session.

Two requests load the same session before either saves. A plain read-modify-write
engine lets the later save write its stale copy back: a flag the earlier request
removed (a 2FA or sudo grant revoked) comes back, and the earlier request's other
changes vanish. The contract (docs/design.rst, "concurrent requests on one session"): each save
applies only the keys its request changed or deleted onto the latest stored record,
through a version-checked write retried within ``KEY_ATTEMPTS``; and a save from a
request that started before a logout, revoke or rotation raises Django's
``UpdateError`` instead of bringing the session back.

Every test runs the DB engine on SQLite, PostgreSQL and MariaDB and checks the rows
actually stored: the signed record (decoded and verified) and its ``version`` column,
which goes up by one on every write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
from django.contrib.sessions.backends.base import UpdateError
from django.db import connections
from django.test import override_settings

from hardened_sessions import keys, record
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.conf import get_config
from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.models import HardenedSession
from tests.support.helpers import new_session

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

THREAD_TIMEOUT = 60.0


# --------------------------------------------------------------------------- helpers


def stored(alias: str, session_key: str) -> tuple[dict[str, Any], int]:
    """The session dict of the stored row and its version column.

    The record is verified (signature over the store key) and its embedded version must
    agree with the column, so a row that was written half-way would show here.
    """
    row = HardenedSession.objects.using(alias).get(pk=keys.store_key(session_key))
    rec = record.decode(bytes(row.data), row.pk, get_config().max_bytes)
    assert rec.version == row.version
    return rec.data, row.version


def stored_hashes(alias: str) -> set[str]:
    return set(HardenedSession.objects.using(alias).values_list("pk", flat=True))


def request_on(session_key: str) -> SessionStore:
    """A request's session object, loaded (as the request's first access would)."""
    session = SessionStore(session_key)
    assert dict(session.items()), "the session did not load"
    return session


def run_in_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Run each target in its own thread (each with its own DB connections)."""
    errors: list[BaseException] = []

    def runner(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return errors


# --------------------------------------------------------------------------- (a) a removed flag stays removed


def _del(session: SessionStore, key: str) -> None:
    del session[key]


def _pop(session: SessionStore, key: str) -> None:
    session.pop(key)


@pytest.mark.parametrize("remove", [_del, _pop], ids=["del", "pop"])
@pytest.mark.parametrize("flag", ["otp_verified", "sudo_until"])
def test_flag_removed_by_one_request_is_not_restored_by_a_stale_save(
    db_alias: str, flag: str, remove: Callable[[SessionStore, str], None]
) -> None:
    key = new_session(SessionStore, {"user": "alice", flag: 1700000000, "theme": "light"})
    a = request_on(key)
    b = request_on(key)  # stale from here on: it still holds the flag

    remove(a, flag)
    a.save()
    assert stored(db_alias, key) == ({"user": "alice", "theme": "light"}, 2)

    b["theme"] = "dark"
    b.save()

    assert stored(db_alias, key) == ({"user": "alice", "theme": "dark"}, 3)
    assert flag not in SessionStore(key)  # what the next request sees
    assert a.session_key == b.session_key == key
    assert stored_hashes(db_alias) == {keys.store_key(key)}


# --------------------------------------------------------------------------- (b) disjoint changes


def test_disjoint_changes_of_two_requests_both_survive(db_alias: str) -> None:
    key = new_session(SessionStore, {"keep": "me", "x": 1, "y": 2})
    a = request_on(key)
    b = request_on(key)

    a["from_a"] = "A"
    del a["x"]
    a.save()
    b["from_b"] = "B"
    del b["y"]
    b.save()

    assert stored(db_alias, key) == ({"keep": "me", "from_a": "A", "from_b": "B"}, 3)


# --------------------------------------------------------------------------- (c) same key: last writer wins


def _set_first(session: SessionStore) -> None:
    session["color"] = "red"


def _set_second(session: SessionStore) -> None:
    session["color"] = "blue"


def _delete(session: SessionStore) -> None:
    del session["color"]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (_set_first, _set_second, {"other": 1, "color": "blue"}),
        (_delete, _set_second, {"other": 1, "color": "blue"}),
        (_set_first, _delete, {"other": 1}),
    ],
    ids=["set-then-set", "delete-then-set", "set-then-delete"],
)
def test_same_key_changed_by_both_requests_last_writer_wins(
    db_alias: str,
    first: Callable[[SessionStore], None],
    second: Callable[[SessionStore], None],
    expected: dict[str, Any],
) -> None:
    key = new_session(SessionStore, {"other": 1, "color": "green"})
    a = request_on(key)
    b = request_on(key)

    first(a)
    a.save()
    second(b)
    b.save()  # no error: a conflict on the same key is not a failure

    assert stored(db_alias, key) == (expected, 3)


# --------------------------------------------------------------------------- (d) nested mutation


def test_nested_mutation_marked_modified_counts_as_a_change(db_alias: str) -> None:
    key = new_session(
        SessionStore,
        {"cart": ["apple"], "prefs": {"lang": "en"}, "otp_verified": True, "user": "alice"},
    )
    a = request_on(key)
    b = request_on(key)

    del a["otp_verified"]
    a.save()

    # Mutations inside values the dict already holds: only session.modified says so.
    b["cart"].append("pear")
    b["prefs"]["lang"] = "fr"
    b.modified = True
    b.save()

    assert stored(db_alias, key) == (
        {"cart": ["apple", "pear"], "prefs": {"lang": "fr"}, "user": "alice"},
        3,
    )


# --------------------------------------------------------------------------- (e) clear() in a stale request


def test_clear_in_a_stale_request_removes_everything_it_had_loaded(db_alias: str) -> None:
    key = new_session(SessionStore, {"user": "alice", "otp_verified": True, "cart": ["apple"]})
    a = request_on(key)
    b = request_on(key)

    a["cart"] = ["apple", "pear"]  # another request changes a key b had loaded
    a.save()

    b.clear()
    b["fresh"] = "start"
    b.save()

    data, version = stored(db_alias, key)
    assert version == 3
    assert data.get("fresh") == "start"
    assert not {"user", "otp_verified", "cart"} & set(data), data
    assert stored_hashes(db_alias) == {keys.store_key(key)}


# --------------------------------------------------------------------------- (f) never resurrect


def _logout(session: SessionStore) -> None:
    session.flush()


def _revoke(session: SessionStore) -> None:
    session.delete()


def _rotate(session: SessionStore) -> None:
    session.cycle_key()


def _save_change(session: SessionStore) -> None:
    session["after"] = "logout"
    session.save()


def _touch(session: SessionStore) -> None:
    session.touch()


@pytest.mark.parametrize("stale_write", [_save_change, _touch], ids=["save", "touch"])
@pytest.mark.parametrize("end", [_logout, _revoke, _rotate], ids=["flush", "delete", "cycle_key"])
def test_stale_save_after_logout_or_rotation_raises_and_creates_no_row(
    db_alias: str,
    end: Callable[[SessionStore], None],
    stale_write: Callable[[SessionStore], None],
) -> None:
    key = new_session(SessionStore, {"user": "alice", "otp_verified": True})
    old_hash = keys.store_key(key)
    a = request_on(key)
    b = request_on(key)

    end(a)
    if a.session_key is not None and a.session_key != key:  # rotated
        new_hash = keys.store_key(a.session_key)
        expected_rows = {new_hash}
        expected_new = stored(db_alias, a.session_key)
    else:
        expected_rows = set()
        expected_new = None
    assert stored_hashes(db_alias) == expected_rows

    with pytest.raises(UpdateError):
        stale_write(b)

    assert old_hash not in stored_hashes(db_alias)
    assert stored_hashes(db_alias) == expected_rows
    if expected_new is not None:
        # The rotated session is untouched by the stale request (same data, same version).
        assert stored(db_alias, a.session_key) == expected_new
        assert expected_new[0] == {"user": "alice", "otp_verified": True}


# --------------------------------------------------------------------------- (g) memory follows the merge


def test_merged_save_brings_the_other_requests_changes_into_memory(db_alias: str) -> None:
    key = new_session(SessionStore, {"user": "alice", "otp_verified": True, "shared": 0})
    a = request_on(key)
    b = request_on(key)

    del a["otp_verified"]
    a["from_a"] = "A"
    a["shared"] = 1
    a.save()

    b["from_b"] = "B"
    b.save()

    data, version = stored(db_alias, key)
    assert data == {"user": "alice", "shared": 1, "from_a": "A", "from_b": "B"}
    assert version == 3
    assert dict(b.items()) == data
    assert "otp_verified" not in b

    # The next save of the same request diffs against the truth: nothing comes back.
    b["again"] = True
    b.save()
    assert stored(db_alias, key) == ({**data, "again": True}, 4)


# --------------------------------------------------------------------------- (h) N stale requests


@pytest.mark.parametrize("n_requests", [8])
def test_many_stale_requests_saving_at_once_all_survive(db_alias: str, n_requests: int) -> None:
    # All but one of these saves meet a newer version and take the merge path, which on
    # SQLite is serialised by the IMMEDIATE transaction of the recommended OPTIONS.
    key = new_session(SessionStore, {"user": "alice"})
    loaded = threading.Barrier(n_requests, timeout=THREAD_TIMEOUT)

    def request(i: int) -> None:
        session = request_on(key)
        loaded.wait()  # every request has read version 1 before any saves
        session[f"t{i}"] = i
        session.save()
        assert session.session_key == key

    errors = run_in_threads([lambda i=i: request(i) for i in range(n_requests)])

    assert errors == []
    data, version = stored(db_alias, key)
    assert data == {"user": "alice", **{f"t{i}": i for i in range(n_requests)}}
    assert version == 1 + n_requests
    assert stored_hashes(db_alias) == {keys.store_key(key)}


# --------------------------------------------------------------------------- the retry bound


class OvertakenOnEveryMerge(SessionStore):
    """A request whose every merge attempt is overtaken by another request's save.

    The one seam replaced is the conflict guard (the transaction in which the engine
    row-locks the record for the merge): with it in place the other save waits for
    the lock, so an endless run of conflicts cannot happen for real, and the bound on
    the retries could not be observed.
    """

    def __init__(self, session_key: str, *, overtakes: int) -> None:
        super().__init__(session_key)
        self.overtakes_left = overtakes
        self.overtaken = 0

    def _conflict_guard(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def _read_for_update(self, store_key: str) -> Any:
        found = self._read(store_key)
        if self.overtakes_left:
            self.overtakes_left -= 1
            self.overtaken += 1
            other = SessionStore(self.session_key)
            other[f"other{self.overtaken}"] = self.overtaken
            other.save()
        return found


@pytest.mark.parametrize("attempts", [1, 3])
def test_endless_conflicts_give_up_after_key_attempts_without_writing(
    db_alias: str, attempts: int
) -> None:
    key = new_session(SessionStore, {"user": "alice"})
    with override_settings(HARDENED_SESSIONS={"KEY_ATTEMPTS": attempts}):
        stale = OvertakenOnEveryMerge(key, overtakes=attempts + 5)
        assert dict(stale.items()) == {"user": "alice"}
        first = request_on(key)
        first["first"] = True
        first.save()  # so the stale save starts with a conflict

        stale["mine"] = "lost"
        with pytest.raises(SessionStoreUnavailable):
            stale.save()

    assert stale.overtaken == attempts
    data, version = stored(db_alias, key)
    assert data == {
        "user": "alice",
        "first": True,
        **{f"other{n}": n for n in range(1, attempts + 1)},
    }
    assert version == 2 + attempts
