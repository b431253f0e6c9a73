"""Threat: hostile cookie values and session fixation through chosen keys.

The session cookie is attacker-controlled input. A value that is not exactly a
key this package issues (32 characters of ``[a-z0-9]``) must never reach the
store: no read, no write, no delete, no query at all (so no injection, no
collation or trailing-space tricks, no look-alike that a database folds onto a
real key), and it is treated as no session. A well-formed key that the store
does not know gets nothing created under it (an attacker cannot plant a key
and have the victim's session saved there). The raw key lives only in the
cookie and in memory: stores and logs see its SHA-256 at most.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from hardened_sessions import keys
from hardened_sessions.backends.base import Token
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import session_rejected

WELL_FORMED = re.compile(r"[a-z0-9]{32}")

on_every_database = pytest.mark.django_db(transaction=True, databases="__all__")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def well_formed(value: object) -> bool:
    """The oracle, written independently of the package's own check."""
    return isinstance(value, str) and WELL_FORMED.fullmatch(value) is not None


def key_of(session: SessionStore) -> str:
    """The session's key, which must be one this package issues."""
    key = session.session_key
    assert key is not None and well_formed(key), key
    return key


class RecordingStore(SessionStore):
    """Records every store primitive it is asked for; ``offline`` keeps it off the database."""

    offline = False

    def __init__(self, session_key: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        super().__init__(session_key)

    def _read(self, store_key: str) -> Any:
        self.calls.append(("read", store_key))
        return None if self.offline else super()._read(store_key)

    def _read_for_update(self, store_key: str) -> Any:
        self.calls.append(("read_for_update", store_key))
        return None if self.offline else super()._read_for_update(store_key)

    def _write_new(self, store_key: str, data: memoryview, rec: Any) -> Any:
        self.calls.append(("write_new", store_key))
        return Token(rec.version) if self.offline else super()._write_new(store_key, data, rec)

    def _write_update(self, store_key: str, data: memoryview, rec: Any, token: Any) -> Any:
        self.calls.append(("write_update", store_key))
        if self.offline:
            return Token(rec.version)
        return super()._write_update(store_key, data, rec, token)

    def _remove(self, store_key: str) -> bool:
        self.calls.append(("remove", store_key))
        return False if self.offline else super()._remove(store_key)


class OfflineStore(RecordingStore):
    offline = True


@contextmanager
def no_queries() -> Iterator[None]:
    """Fail unless no query at all reaches any configured database."""
    with ExitStack() as stack:
        captured = {
            alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
            for alias in settings.DATABASES
        }
        yield
    issued = {alias: [q["sql"] for q in c.captured_queries] for alias, c in captured.items()}
    assert all(not sqls for sqls in issued.values()), issued


def exercise_without_store(store_class: type[RecordingStore], bad: Any) -> RecordingStore:
    """Every entry point that takes a cookie value; returns the store for its calls."""
    session = store_class(bad)
    assert session.load() == {}
    assert session.session_key is None  # treated as no session: the next save draws a key
    assert session.exists(bad) is False
    assert session.get("_auth_user_id") is None
    assert "_auth_user_id" not in session
    session.delete(bad)
    session.delete()
    store_class(bad).flush()
    store_class(bad).touch()
    async_session = store_class(bad)
    assert async_to_sync(async_session.aload)() == {}
    assert async_to_sync(async_session.aexists)(bad) is False
    async_to_sync(async_session.adelete)(bad)
    assert async_session.calls == []
    assert session.calls == []
    return session


def assert_fresh_key_on_save(session: RecordingStore, bad: Any) -> str:
    session["after"] = 1
    session.save()
    new_key = key_of(session)
    assert new_key != bad
    assert session.calls == [("write_new", keys.store_key(new_key))]
    return new_key


# ---------------------------------------------------------------------------- near misses

NEAR_MISSES = {
    "31 characters": "a" * 31,
    "33 characters": "a" * 33,
    "64 characters": "a" * 64,
    "empty": "",
    "8 characters": "abcdefgh",
    "one uppercase": "A" + "a" * 31,
    "all uppercase": "A" * 32,
    "cyrillic a look-alike": "\u0430" + "a" * 31,
    "fullwidth a": "\uff41" + "a" * 31,
    "fullwidth digit": "\uff10" + "a" * 31,
    "arabic-indic digit": "\u0663" + "a" * 31,
    "superscript two": "\u00b2" + "a" * 31,
    "dotless i": "\u0131" + "a" * 31,
    "long s": "\u017f" + "a" * 31,
    "kelvin sign": "\u212a" + "a" * 31,
    "combining accent": "a" * 31 + "\u0301",
    "lone surrogate": "\ud800" + "a" * 31,
    "NUL inside": "a" * 15 + "\x00" + "a" * 16,
    "NUL at the end": "a" * 31 + "\x00",
    "NUL appended": "a" * 32 + "\x00",
    "leading space": " " + "a" * 31,
    "trailing space": "a" * 31 + " ",
    "space appended": "a" * 32 + " ",
    "newline appended": "a" * 32 + "\n",
    "newline at the end": "a" * 31 + "\n",
    "tab": "a" * 31 + "\t",
    "non-breaking space": "a" * 31 + "\u00a0",
    "SQL quote": "' OR '1'='1' -- " + "a" * 16,
    "SQL comment": "a" * 30 + "--",
    "LIKE wildcard %": "%" * 32,
    "LIKE wildcard _": "_" * 32,
    "regex dot star": ".*" * 16,
    "regex anchors": "^" + "a" * 30 + "$",
    "path traversal": "../" * 10 + "aa",
    "hex of a store key": "0" * 64,
    "semicolon": "a" * 31 + ";",
    "url-encoded": "%61" * 10 + "aa",
}


@pytest.mark.parametrize("bad", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_miss_never_reaches_the_store(bad: str) -> None:
    # No database marker: any query would also fail the test.
    assert not well_formed(bad)
    session = exercise_without_store(OfflineStore, bad)
    assert_fresh_key_on_save(session, bad)


@pytest.mark.parametrize("bad", [b"a" * 32, 12345678901234567890123456789012, ["a" * 32], None])
def test_values_that_are_not_text_never_reach_the_store(bad: Any) -> None:
    session = OfflineStore()
    assert session.exists(bad) is False
    session.delete(bad)
    assert session.calls == []


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    bad=st.text(max_size=80)
    | st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz0123456789ABZ_ \n\x00\u0430", min_size=30, max_size=34
    )
)
def test_arbitrary_text_never_reaches_the_store(bad: str) -> None:
    if well_formed(bad):
        return  # the strategy can hit a real key shape; those are covered elsewhere
    session = exercise_without_store(OfflineStore, bad)
    assert_fresh_key_on_save(session, bad)


def _variants(key: str) -> dict[str, str]:
    letter = next(i for i, c in enumerate(key) if c.isalpha())  # no letter at all: p ~ 2e-18
    return {
        "uppercase": key.upper(),
        "one letter uppercase": key[:letter] + key[letter].upper() + key[letter + 1 :],
        "one short": key[:-1],
        "one long": key + "a",
        "trailing space": key + " ",
        "leading space": " " + key,
        "trailing newline": key + "\n",
        "trailing NUL": key + "\x00",
        "fullwidth first": chr(ord(key[0]) + 0xFEE0) + key[1:],
        "last as fullwidth": key[:-1] + chr(ord(key[-1]) + 0xFEE0),
        "LIKE prefix": key[:-1] + "%",
        "LIKE any char": key[:-1] + "_",
    }


@on_every_database
def test_near_misses_of_a_real_key_reach_no_database(db_alias: str) -> None:
    owner = SessionStore()
    owner["_auth_user_id"] = "1"
    owner.save()
    real = key_of(owner)
    before = list(HardenedSession.objects.using(db_alias).values_list("key_hash", "data"))

    for name, bad in _variants(real).items():
        assert not well_formed(bad), name
        with no_queries():
            exercise_without_store(RecordingStore, bad)
        session = RecordingStore(bad)
        new_key = assert_fresh_key_on_save(session, bad)
        assert new_key != real, name
        assert not HardenedSession.objects.using(db_alias).filter(pk=sha256(bad)).exists()
        assert SessionStore(new_key).load() == {"after": 1}

    # The real session was neither read into another one, nor deleted, nor changed.
    after = dict(HardenedSession.objects.using(db_alias).values_list("key_hash", "data"))
    for key_hash, data in before:
        assert bytes(after[key_hash]) == bytes(data)
    assert len(after) == 1 + len(_variants(real))
    assert SessionStore(real).load() == {"_auth_user_id": "1"}


@on_every_database
@pytest.mark.parametrize("bad", ["%" * 32, "_" * 32, "' OR '1'='1' -- " + "a" * 16, "a" * 32 + " "])
def test_wildcard_keys_delete_nothing(db_alias: str, bad: str) -> None:
    victim = SessionStore()
    victim["keep"] = True
    victim.save()
    with no_queries():
        SessionStore().delete(bad)
        SessionStore(bad).flush()
    assert SessionStore(victim.session_key).load() == {"keep": True}


# ---------------------------------------------------------------------------- unknown keys


@on_every_database
def test_unknown_key_gets_no_record(db_alias: str) -> None:
    unknown = keys.generate_key()
    session = RecordingStore(unknown)
    assert session.load() == {}
    assert not session.exists(unknown)
    session["_auth_user_id"] = "1"  # what a login after a fixation attempt would store
    session.save()
    assert key_of(session) != unknown
    assert ("write_new", keys.store_key(unknown)) not in session.calls
    assert not any(op.startswith("write") and h == sha256(unknown) for op, h in session.calls)
    hashes = set(HardenedSession.objects.using(db_alias).values_list("key_hash", flat=True))
    assert hashes == {keys.store_key(key_of(session))}
    assert sha256(unknown) not in hashes


@on_every_database
@pytest.mark.parametrize(
    "how", ["save", "save without load", "modified save", "cycle_key", "touch", "asave"]
)
def test_no_path_creates_a_record_under_an_unknown_key(db_alias: str, how: str) -> None:
    unknown = keys.generate_key()
    session = SessionStore(unknown)
    if how == "save":
        session["x"] = 1
        session.save()
    elif how == "save without load":
        session.save()
    elif how == "modified save":
        session.modified = True
        session.save(must_create=False)
    elif how == "cycle_key":
        session["x"] = 1
        session.cycle_key()
    elif how == "touch":
        with override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600}):
            session.touch()
    else:
        session["x"] = 1
        async_to_sync(session.asave)()
    if how != "touch":  # a touch of a session with no record writes nothing at all
        assert well_formed(session.session_key)
        assert session.session_key != unknown
    assert not HardenedSession.objects.using(db_alias).filter(pk=sha256(unknown)).exists()
    assert not SessionStore().exists(unknown)


@on_every_database
def test_many_unknown_keys_create_no_records_for_them(db_alias: str) -> None:
    unknowns = [keys.generate_key() for _ in range(20)]
    issued = []
    for unknown in unknowns:
        session = SessionStore(unknown)
        session["x"] = 1
        session.save()
        issued.append(key_of(session))
    hashes = set(HardenedSession.objects.using(db_alias).values_list("key_hash", flat=True))
    assert hashes == {sha256(k) for k in issued}
    assert not hashes & {sha256(k) for k in unknowns}


# ---------------------------------------------------------------------------- the raw key stays out of the store and the logs


def _every_value(alias: str) -> Iterator[tuple[str, bytes]]:
    connection = connections[alias]
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if value is None:
                        continue
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        yield table, bytes(value)
                    else:
                        yield table, str(value).encode("utf-8")


@on_every_database
def test_raw_key_never_stored_or_logged(db_alias: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hardened_sessions")
    caplog.set_level(logging.DEBUG, logger="django.security")
    rejected: list[dict[str, Any]] = []

    def on_rejected(**kwargs: Any) -> None:
        rejected.append(kwargs)

    session_rejected.connect(on_rejected)
    try:
        seen_keys: list[str] = []
        with override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600}):
            session = SessionStore()
            session["_auth_user_id"] = "42"
            session.save()
            seen_keys.append(key_of(session))
            session["cart"] = [1, 2]
            session.save()
            other = SessionStore(session.session_key)
            other["theme"] = "dark"
            other.save()
            session["cart"] = [1, 2, 3]
            session.save()  # version conflict: read, merge, write (logged at debug)
            session.touch()
            session.cycle_key()
            seen_keys.append(key_of(session))

            # A rejected record (logged on django.security) and a rotation of a revoked one.
            victim = SessionStore()
            victim["x"] = 1
            victim.save()
            seen_keys.append(key_of(victim))
            HardenedSession.objects.using(db_alias).filter(
                pk=keys.store_key(key_of(victim))
            ).update(data=b"hs1:{}." + b"A" * 43)
            assert SessionStore(victim.session_key).load() == {}
            gone = SessionStore()
            gone["x"] = 1
            gone.save()
            seen_keys.append(key_of(gone))
            SessionStore().delete(gone.session_key)
            gone.cycle_key()
            seen_keys.append(key_of(gone))

        live = set(HardenedSession.objects.using(db_alias).values_list("key_hash", flat=True))
        assert keys.store_key(seen_keys[1]) in live
        assert live <= {sha256(k) for k in seen_keys}

        for table, value in _every_value(db_alias):
            for key in seen_keys:
                assert key.encode() not in value, f"raw session key stored in {table}"

        messages = [r.getMessage() for r in caplog.records]
        assert any(r.name.startswith("django.security") for r in caplog.records)
        assert rejected
        for key in seen_keys:
            for text in messages + [repr(kwargs) for kwargs in rejected]:
                assert key not in text
                # At most a short prefix of the hash, never the whole store key.
                assert keys.store_key(key) not in text
    finally:
        session_rejected.disconnect(on_rejected)
