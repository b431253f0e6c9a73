"""The db engine inside a caller's transaction (``ATOMIC_REQUESTS``, ``atomic()``).

A load is one ``SELECT`` everywhere, in a transaction or not: a user's
``assertNumQueries`` test must not count savepoints around reads, and docs/engines.rst's
"a load ... is one ``SELECT``" must hold. Writes take no savepoint either where their failure
answers 503 anyway; a create whose fresh key collides with a stored one (the normal,
retried outcome) must leave the caller's transaction usable, on PostgreSQL too, where
an error inside a transaction poisons it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def _stored(data: dict[str, Any]) -> str:
    session = SessionStore()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


def _sql(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries]


def _savepoints(statements: list[str]) -> list[str]:
    return [s for s in statements if "SAVEPOINT" in s.upper()]


@pytest.fixture
def in_transaction(db_alias: str) -> Iterator[None]:
    """An open transaction on the sessions' database for the whole test."""
    with transaction.atomic(using=db_alias):
        assert connections[db_alias].in_atomic_block
        yield


def _captured(alias: str) -> CaptureQueriesContext:
    return CaptureQueriesContext(connections[alias])


def test_a_load_in_a_transaction_is_one_select(db_alias: str, in_transaction: None) -> None:
    key = _stored({"cart": 3})
    with _captured(db_alias) as queries:
        assert SessionStore(key).load() == {"cart": 3}
    statements = _sql(queries)
    assert len(statements) == 1, statements
    assert statements[0].lstrip().upper().startswith("SELECT")


def test_exists_in_a_transaction_is_one_select(db_alias: str, in_transaction: None) -> None:
    key = _stored({"cart": 3})
    with _captured(db_alias) as queries:
        assert SessionStore().exists(key) is True
    statements = _sql(queries)
    assert len(statements) == 1, statements


@pytest.mark.parametrize("operation", ["create", "save", "delete"])
def test_a_write_in_a_transaction_is_one_statement(
    db_alias: str, in_transaction: None, operation: str
) -> None:
    key = _stored({"cart": 3})
    session = SessionStore(key)
    assert session.load() == {"cart": 3}
    with _captured(db_alias) as queries:
        if operation == "create":
            fresh = SessionStore()
            fresh["cart"] = 1
            fresh.save()
        elif operation == "save":
            session["cart"] = 4
            session.save()
        else:
            session.delete()
    statements = _sql(queries)
    assert _savepoints(statements) == []
    assert len(statements) == 1, statements


def test_a_colliding_create_leaves_the_callers_transaction_usable(
    db_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _stored({"owner": "first"})
    fresh = keys.generate_key()
    draws = iter([taken, fresh])
    monkeypatch.setattr(keys, "generate_key", lambda: next(draws))

    with transaction.atomic(using=db_alias):
        with CaptureQueriesContext(connections[db_alias]) as queries:
            session = SessionStore()
            session["owner"] = "second"
            session.save()
        assert session.session_key == fresh
        # The transaction is still usable after the collision (PostgreSQL would refuse
        # every further statement of a poisoned one).
        assert HardenedSession.objects.using(db_alias).count() == 2
    assert len(_sql(queries)) == 2, _sql(queries)

    assert SessionStore(taken).load() == {"owner": "first"}
    assert SessionStore(fresh).load() == {"owner": "second"}


def test_a_conflicting_save_in_a_transaction_still_merges(db_alias: str) -> None:
    key = _stored({"a": 1})
    stale = SessionStore(key)
    stale.load()
    other = SessionStore(key)
    other["b"] = 2
    other.save()
    with transaction.atomic(using=db_alias):
        stale["c"] = 3
        stale.save()
    assert SessionStore(key).load() == {"a": 1, "b": 2, "c": 3}
