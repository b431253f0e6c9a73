"""Threat: sessions that grow without bound (memory and storage exhaustion).

A client that can make the application put more and more into its session (a
cart, a search history, form state) must hit ``MAX_BYTES``: the save is refused
with ``SessionTooLarge`` before anything reaches the store, the record already
stored stays as it was, and a record over the bound found in the store (written
under a higher limit, or by someone with write access) is never decoded.

The bound applies to the exact bytes stored: a record exactly at the limit is
accepted, one byte more is refused.
"""

from __future__ import annotations

import logging
from typing import Any
from unittest import mock

import pytest
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from hardened_sessions import keys, record
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.buffers import RecordBuffer
from hardened_sessions.exceptions import HardenedSessionError, SessionTooLarge
from hardened_sessions.models import HardenedSession
from hardened_sessions.record import Record
from tests.support.helpers import buffer_array

NOW = 1_700_000_000
STORE_KEY = "0" * 64

on_every_database = pytest.mark.django_db(transaction=True, databases="__all__")


def limit(max_bytes: int) -> override_settings:
    return override_settings(HARDENED_SESSIONS={"MAX_BYTES": max_bytes})


def make_record(data: dict[str, Any]) -> Record:
    return Record(data=data, version=1, created=NOW, activity=NOW, expiry=NOW + 1_209_600)


def encoded_size(data: dict[str, Any]) -> int:
    buf = RecordBuffer()
    return record.encode(make_record(data), STORE_KEY, buf, 1 << 24)


def rows(alias: str) -> list[tuple[str, bytes, int, int]]:
    return [
        (key_hash, bytes(data), size, version)
        for key_hash, data, size, version in HardenedSession.objects.using(alias)
        .order_by("pk")
        .values_list("key_hash", "data", "size", "version")
    ]


def stored_row(alias: str, session: SessionStore) -> HardenedSession:
    assert session.session_key is not None
    return HardenedSession.objects.using(alias).get(pk=keys.store_key(session.session_key))


# ---------------------------------------------------------------------------- the codec


def test_encode_refuses_a_record_over_the_limit_and_writes_nothing() -> None:
    data = {"blob": "x" * 1000}
    size = encoded_size(data)
    buf = RecordBuffer()
    with (
        mock.patch.object(record, "_signature", wraps=record._signature) as signature,
        pytest.raises(SessionTooLarge) as info,
    ):
        record.encode(make_record(data), STORE_KEY, buf, 512)
    exc = info.value
    assert (exc.size, exc.limit) == (size, 512)
    assert isinstance(exc, SuspiciousOperation)
    assert isinstance(exc, HardenedSessionError)
    assert str(size) in str(exc) and "512" in str(exc)
    assert len(buf) == 0
    assert not any(buffer_array(buf))
    # Refused before the signature is even computed.
    signature.assert_not_called()


def test_encode_appends_nothing_to_a_buffer_in_use() -> None:
    buf = RecordBuffer()
    buf.write(b"earlier")
    with pytest.raises(SessionTooLarge):
        record.encode(make_record({"blob": "x" * 1000}), STORE_KEY, buf, 512)
    assert buf.getvalue() == b"earlier"


@pytest.mark.parametrize("extra", [0, 1, 2, 1000])
def test_codec_limit_is_exact(extra: int) -> None:
    data = {"blob": "y" * 300}
    size = encoded_size(data)
    buf = RecordBuffer()
    assert record.encode(make_record(data), STORE_KEY, buf, size) == size
    assert len(buf) == size
    if extra:
        with pytest.raises(SessionTooLarge) as info:
            record.encode(make_record(data), STORE_KEY, RecordBuffer(), size - extra)
        assert (info.value.size, info.value.limit) == (size, size - extra)


def test_decode_refuses_a_stored_record_over_the_limit() -> None:
    buf = RecordBuffer()
    size = record.encode(make_record({"blob": "z" * 500}), STORE_KEY, buf, 1 << 20)
    raw = buf.getvalue()
    assert record.decode(raw, STORE_KEY, size).data == {"blob": "z" * 500}
    with pytest.raises(record.CorruptRecord, match="MAX_BYTES"):
        record.decode(raw, STORE_KEY, size - 1)


# ---------------------------------------------------------------------------- the DB engine


@on_every_database
def test_oversize_new_session_writes_nothing(db_alias: str) -> None:
    session = SessionStore()
    session["blob"] = "x" * 70_000
    with pytest.raises(SessionTooLarge) as info:
        session.save()
    assert info.value.limit == 65536
    assert info.value.size > 70_000
    assert rows(db_alias) == []
    assert session.session_key is None


@on_every_database
def test_oversize_save_leaves_the_stored_record_intact(db_alias: str) -> None:
    with limit(1024):
        session = SessionStore()
        session["cart"] = ["book"]
        session.save()
        key = session.session_key
        before = rows(db_alias)
        assert len(before) == 1

        session["cart"] = ["book"] * 500
        with pytest.raises(SessionTooLarge) as info:
            session.save()
        assert info.value.limit == 1024
        assert rows(db_alias) == before
        assert session.session_key == key

        # A second attempt (a retry, the middleware's own save) changes nothing either.
        with pytest.raises(SessionTooLarge):
            session.save()
        assert rows(db_alias) == before

        assert SessionStore(key).load() == {"cart": ["book"]}

        # The store is not left in a broken state: a save within the limit works.
        session["cart"] = ["book", "pen"]
        session.save()
        assert SessionStore(key).load() == {"cart": ["book", "pen"]}


@on_every_database
def test_oversize_merge_after_a_concurrent_save_leaves_the_stored_record_intact(
    db_alias: str,
) -> None:
    with limit(2048):
        first = SessionStore()
        first["a"] = "x" * 900
        first.save()
        key = first.session_key
        second = SessionStore(key)
        second["b"] = "y" * 900
        second.save()  # within the limit on its own
        before = rows(db_alias)

        # Each change fits on its own record, but not merged onto the other's.
        first["c"] = "z" * 900
        with pytest.raises(SessionTooLarge):
            first.save()
        assert rows(db_alias) == before
        assert SessionStore(key).load() == {"a": "x" * 900, "b": "y" * 900}


@on_every_database
def test_stored_record_over_the_limit_loads_as_no_session(
    db_alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = SessionStore()
    session["blob"] = "x" * 2000
    session.save()
    key = session.session_key
    before = rows(db_alias)

    caplog.set_level(logging.WARNING, logger="django.security.SuspiciousSession")
    with limit(1024):
        loaded = SessionStore(key)
        assert loaded.load() == {}
        assert not loaded.exists(key)
        assert any(
            r.name == "django.security.SuspiciousSession" and "MAX_BYTES" in r.getMessage()
            for r in caplog.records
        )
        assert rows(db_alias) == before

        loaded["fresh"] = 1
        loaded.save()
        assert loaded.session_key not in (None, key)
        assert keys.is_well_formed(loaded.session_key)
    # The old record was not overwritten with the new session's data.
    assert (before[0][0], before[0][1]) in {(r[0], r[1]) for r in rows(db_alias)}
    assert SessionStore(loaded.session_key).load() == {"fresh": 1}


@on_every_database
def test_stored_size_is_exactly_the_stored_bytes(db_alias: str) -> None:
    session = SessionStore()
    session["blob"] = "q" * 400
    session.save()
    row = stored_row(db_alias, session)
    assert row.size == len(bytes(row.data))
    assert bytes(row.data).startswith(record.PREFIX)

    session["blob"] = "q" * 401
    session.save()
    row = stored_row(db_alias, session)
    assert row.size == len(bytes(row.data))


@on_every_database
def test_db_limit_is_exact(db_alias: str) -> None:
    data = {"blob": "w" * 500}
    probe = SessionStore()
    probe.update(data)
    probe.save()
    size = stored_row(db_alias, probe).size

    with limit(size):
        at_limit = SessionStore()
        at_limit.update(data)
        at_limit.save()
        row = stored_row(db_alias, at_limit)
        assert row.size == len(bytes(row.data)) == size

        count = len(rows(db_alias))
        over = SessionStore()
        over["blob"] = "w" * 501
        with pytest.raises(SessionTooLarge) as info:
            over.save()
        # What would have been stored: exactly one byte more than the accepted record.
        assert (info.value.size, info.value.limit) == (size + 1, size)
        assert len(rows(db_alias)) == count

        # The same holds for an update of an existing record.
        before = rows(db_alias)
        at_limit["blob"] = "w" * 501
        with pytest.raises(SessionTooLarge) as info:
            at_limit.save()
        assert (info.value.size, info.value.limit) == (size + 1, size)
        assert rows(db_alias) == before

    with limit(size - 1):
        refused = SessionStore()
        refused.update(data)
        with pytest.raises(SessionTooLarge) as info:
            refused.save()
        assert (info.value.size, info.value.limit) == (size, size - 1)


@on_every_database
def test_oversize_rotation_leaves_the_stored_record_intact(db_alias: str) -> None:
    with limit(1024):
        session = SessionStore()
        session["cart"] = ["book"]
        session.save()
        key = session.session_key
        before = rows(db_alias)
        session["cart"] = ["book"] * 500
        with pytest.raises(HardenedSessionError):  # SessionTooLarge or SessionRotationFailed
            session.cycle_key()
        assert rows(db_alias) == before, "the refused rotation deleted the stored record"
        assert SessionStore(key).load() == {"cart": ["book"]}


# ---------------------------------------------------------------------------- through the middleware


def grow(request: HttpRequest) -> HttpResponse:
    request.session["blob"] = "x" * int(request.GET["n"])
    return HttpResponse("ok")


def read(request: HttpRequest) -> HttpResponse:
    return HttpResponse(repr(sorted(request.session.keys())))


urlpatterns = [path("grow/", grow), path("read/", read)]


@on_every_database
@pytest.mark.urls(__name__)
def test_middleware_answers_400_and_logs_an_oversize_save(
    db_alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="django.security.SessionTooLarge")
    client = Client()
    response = client.get("/grow/", {"n": 100})
    assert response.status_code == 200
    key = response.cookies["sessionid"].value
    before = rows(db_alias)

    with limit(1024):
        response = client.get("/grow/", {"n": 5000})
    assert response.status_code == 400
    assert "sessionid" not in response.cookies
    assert any(r.name == "django.security.SessionTooLarge" for r in caplog.records)
    assert rows(db_alias) == before
    assert SessionStore(key).load() == {"blob": "x" * 100}


@on_every_database
@pytest.mark.urls(__name__)
def test_middleware_serves_an_oversize_stored_record_as_no_session(db_alias: str) -> None:
    client = Client()
    response = client.get("/grow/", {"n": 3000})
    assert response.status_code == 200
    with limit(1024):
        response = client.get("/read/")
    assert response.status_code == 200
    assert response.content == b"[]"
