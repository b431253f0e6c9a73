"""Threat: a deleted session comes back under a new key from the object that deleted it.

``SessionStore.delete()`` (a view's own logout, ``request.session.delete()``) reports
success once the record is gone, but the object keeps its key and its dict. If the
object then dropped its record but kept the data, the next save (the middleware
saves a modified session) would find no record and create one under a fresh key,
with everything the deleted session held (``_auth_user_id`` included): the
logout undone under a new cookie. Stock Django's db engine refuses that save
(``UpdateError``, "session deleted"); so does this package, on every engine: a
session deleted under a request is never saved again by it. ``flush()`` (what
``django.contrib.auth.logout()`` calls) empties the dict and drops the key, so the
next save starts a new, empty session, as in Django.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.sessions.backends.base import UpdateError
from django.test import override_settings

from hardened_sessions.backends.cache import SessionStore as CacheStore
from hardened_sessions.backends.cached_db import SessionStore as CachedDBStore
from hardened_sessions.backends.db import SessionStore as DBStore
from hardened_sessions.keys import store_key
from hardened_sessions.models import HardenedSession
from tests.support.servers import CACHE_VARIANTS, variant_cache

pytestmark = pytest.mark.django_db(transaction=True)

ENGINES = {"cache": CacheStore, "cached_db": CachedDBStore}


ENGINE_PARAMS = ["db"] + [f"{e}-{v}" for e in ENGINES for v in CACHE_VARIANTS]


@pytest.fixture(params=ENGINE_PARAMS)
def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The db engine, then the cache engines on each cache configuration."""
    name, _, variant = request.param.partition("-")
    if name == "db":
        yield DBStore
        return
    with variant_cache(variant, request):
        yield ENGINES[name]


def logged_in(engine: Any) -> str:
    session = engine()
    session.update({"_auth_user_id": "7", "sudo": True})
    session.save()
    key: str = session.session_key
    return key


def live_sessions(engine: Any, session_key: str, attempts: list[str | None]) -> dict[str, Any]:
    """What each key the object ever held still loads, by a fresh object."""
    return {
        k: dict(engine(k).items())
        for k in {session_key, *(a for a in attempts if a)}
        if engine(k).exists(k)
    }


@pytest.mark.parametrize("change", [True, False], ids=["changed", "unchanged"])
def test_a_save_after_delete_never_stores_the_deleted_data_again(engine: Any, change: bool) -> None:
    key = logged_in(engine)
    request = engine(key)
    assert request["_auth_user_id"] == "7"  # loaded

    request.delete()  # reported: the session is gone
    assert not engine(key).exists(key)
    if change:
        request["cart"] = 1  # the view goes on using the session
    with pytest.raises(UpdateError):
        request.save()

    assert live_sessions(engine, key, [request.session_key]) == {}
    assert request.session_key in (key, None)


def test_a_touch_after_delete_fails_too(engine: Any) -> None:
    key = logged_in(engine)
    request = engine(key)
    assert request["_auth_user_id"] == "7"
    request.delete()
    with (
        override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600}),
        pytest.raises(UpdateError),
    ):
        request.touch()
    assert live_sessions(engine, key, [request.session_key]) == {}


def test_a_save_after_flush_starts_an_empty_session(engine: Any) -> None:
    key = logged_in(engine)
    request = engine(key)
    assert request["_auth_user_id"] == "7"
    request.flush()
    request["cart"] = 1
    request.save()

    assert request.session_key not in (key, None)
    assert live_sessions(engine, key, [request.session_key]) == {request.session_key: {"cart": 1}}


def test_delete_by_another_request_then_save_raises(engine: Any) -> None:
    key = logged_in(engine)
    request = engine(key)
    assert request["_auth_user_id"] == "7"
    engine(key).delete()  # logged out elsewhere
    request["cart"] = 1
    with pytest.raises(UpdateError):
        request.save()
    assert live_sessions(engine, key, [request.session_key]) == {}
    if engine is DBStore:
        assert not HardenedSession.objects.filter(pk=store_key(key)).exists()
