"""The engines build a session without Django's ``SessionBase.__init__`` (which imports
the serializer on every request); they must still carry everything it sets."""

from __future__ import annotations

import pytest
from django.contrib.sessions.backends.base import SessionBase
from django.test import override_settings

from hardened_sessions.backends import cache, cached_db, db


@pytest.mark.parametrize("engine", [db, cache, cached_db], ids=["db", "cache", "cached_db"])
def test_a_new_session_has_every_attribute_sessionbase_sets(engine: object) -> None:
    key = "k" * 32
    stock = SessionBase(key)
    ours = engine.SessionStore(key)  # type: ignore[attr-defined]
    for name, value in vars(stock).items():
        assert getattr(ours, name) == value, name
    assert ours.session_key == key
    assert not ours.accessed and not ours.modified


@override_settings(SESSION_SERIALIZER="django.core.signing.JSONSerializer")
def test_the_serializer_is_the_setting_and_may_be_replaced() -> None:
    from django.core.signing import JSONSerializer

    session = db.SessionStore()
    assert session.serializer is JSONSerializer
    session.serializer = str  # type: ignore[assignment]
    assert session.serializer is str
