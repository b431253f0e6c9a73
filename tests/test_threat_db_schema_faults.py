"""Threat: the session table refuses a write, or is not there at all.

A project may add a trigger or a foreign key that refuses to delete a session row (an
audit rule, a table of its own pointing at the sessions). A delete that the database
refuses is a store failure like any other: ``cycle_key`` (Django's ``login()``) fails
closed with ``SessionRotationFailed`` and the middleware answers 503, never a 500 and
never a rotation that left the old key live while reporting success.

A missing table (migrations not applied) is no "retry shortly": it is logged as an
ERROR on the ``hardened_sessions`` logger that says to run ``manage.py migrate``
(the request itself is still answered 503).

The refusal is real: a trigger on the test database raises on DELETE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client, override_settings

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.exceptions import SessionRotationFailed, SessionStoreUnavailable
from hardened_sessions.models import HardenedSession
from tests.support import views_http
from tests.support.views_http import URLCONF, assert_cookie_expired

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TABLE = HardenedSession._meta.db_table
PASSWORD = "correct horse battery staple"
REFUSAL = "sessions are kept for audit"

TRIGGERS: dict[str, tuple[list[str], list[str]]] = {
    "sqlite": (
        [
            f"CREATE TRIGGER hs_refuse_delete BEFORE DELETE ON {TABLE} "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
        ],
        ["DROP TRIGGER hs_refuse_delete"],
    ),
    "postgresql": (
        [
            "CREATE FUNCTION hs_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'integrity_constraint_violation'; "
            "END $$",
            f"CREATE TRIGGER hs_refuse_delete BEFORE DELETE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION hs_refuse_delete()",
        ],
        [f"DROP TRIGGER hs_refuse_delete ON {TABLE}", "DROP FUNCTION hs_refuse_delete()"],
    ),
    "mysql": (
        [
            f"CREATE TRIGGER hs_refuse_delete BEFORE DELETE ON {TABLE} FOR EACH ROW "
            f"SIGNAL SQLSTATE '23000' SET MESSAGE_TEXT = '{REFUSAL}'"
        ],
        ["DROP TRIGGER hs_refuse_delete"],
    ),
}


@pytest.fixture
def deletes_refused(db_alias: str) -> Iterator[str]:
    """A trigger on the sessions table that raises on every DELETE."""
    connection = connections[db_alias]
    create, drop = TRIGGERS[connection.vendor]
    with connection.cursor() as cursor:
        for statement in create:
            cursor.execute(statement)
    try:
        yield db_alias
    finally:
        with connection.cursor() as cursor:
            for statement in drop:
                cursor.execute(statement)


def _stored(data: dict[str, Any]) -> str:
    session = SessionStore()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


def _rows(alias: str) -> set[str]:
    return set(HardenedSession.objects.using(alias).values_list("pk", flat=True))


def test_a_refused_delete_fails_the_rotation_closed(deletes_refused: str) -> None:
    key = _stored({"cart": 3})
    session = SessionStore(key)
    assert session.load() == {"cart": 3}

    with pytest.raises(SessionRotationFailed) as caught:
        session.cycle_key()

    assert isinstance(caught.value.__cause__, SessionStoreUnavailable)
    assert session.rotation_failed
    assert _rows(deletes_refused) == {keys.store_key(key)}  # no second live key
    assert SessionStore(key).load() == {"cart": 3}


@pytest.mark.parametrize("operation", ["flush", "delete"])
def test_a_refused_delete_is_a_store_failure(deletes_refused: str, operation: str) -> None:
    key = _stored({"cart": 3})
    session = SessionStore(key)
    session.load()

    with pytest.raises(SessionStoreUnavailable):
        getattr(session, operation)()

    assert session.store_failure is not None
    assert _rows(deletes_refused) == {keys.store_key(key)}


def test_a_refused_delete_at_login_is_a_503(deletes_refused: str) -> None:
    get_user_model().objects.create_user("alice", password=PASSWORD)
    client = Client(raise_request_exception=False)
    with override_settings(ROOT_URLCONF=URLCONF):
        views_http.observed.clear()
        assert client.get("/set/?value=before-login").status_code == 200
        before = client.cookies[settings.SESSION_COOKIE_NAME].value
        response = client.post("/login/", {"username": "alice", "password": PASSWORD})

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert_cookie_expired(response)  # a failed rotation ends the session in the browser
    assert _rows(deletes_refused) == {keys.store_key(before)}  # no second live key


# --- migrations not applied ------------------------------------------------------------


@pytest.fixture
def table_missing(db_alias: str) -> Iterator[str]:
    """The sessions table is not there (renamed away for the test, then put back)."""
    connection = connections[db_alias]
    hidden = f"{TABLE}_hidden"
    with connection.schema_editor() as editor:
        editor.alter_db_table(HardenedSession, TABLE, hidden)
    try:
        yield db_alias
    finally:
        connection.close()  # PostgreSQL: nothing of an aborted transaction survives
        with connection.schema_editor() as editor:
            editor.alter_db_table(HardenedSession, hidden, TABLE)


@pytest.mark.parametrize("operation", ["load", "create"])
def test_a_missing_table_says_run_migrate(
    table_missing: str, operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hardened_sessions")
    with pytest.raises(SessionStoreUnavailable):
        if operation == "load":
            SessionStore(keys.generate_key()).load()
        else:
            session = SessionStore()
            session["cart"] = 1
            session.save()

    errors = [
        r for r in caplog.records if r.name == "hardened_sessions" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    message = errors[0].getMessage()
    assert "manage.py migrate" in message
    assert repr(table_missing) in message
    assert "retry" not in message.lower()
