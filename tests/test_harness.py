"""Self-tests of the test harness itself (settings, fixtures, router); no package code."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import connections, router

from tests.conftest import configured_databases, require_server


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_db_alias_reaches_its_own_database(db_alias: str) -> None:
    user_model = get_user_model()
    user = user_model.objects.db_manager(db_alias).create_user("harness", password="x")
    assert user._state.db == db_alias
    assert user_model.objects.using(db_alias).filter(username="harness").count() == 1
    content_type = ContentType.objects.db_manager(db_alias).get_for_model(user_model)
    assert content_type.app_label == "auth"

    vendor = connections[db_alias].vendor
    expected = {"default": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}[db_alias]
    assert vendor == expected
    test_name = settings.DATABASES[db_alias]["TEST"]["NAME"]
    assert connections[db_alias].settings_dict["NAME"].endswith(test_name)


@pytest.mark.django_db(databases=configured_databases())
def test_db_alias_routes_only_the_sessions_app(db_alias: str) -> None:
    session_model = SimpleNamespace(_meta=SimpleNamespace(app_label="hardened_sessions"))
    assert router.db_for_write(session_model) == db_alias
    assert router.db_for_read(session_model) == db_alias
    assert router.db_for_write(get_user_model()) == "default"
    assert ContentType.objects.db_manager(db_alias).get_for_model(ContentType).model == (
        "contenttype"
    )


def test_sqlite_runs_with_the_recommended_options() -> None:
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in options["init_command"]
    # A file, never Django's in-memory default.
    assert settings.DATABASES["default"]["TEST"]["NAME"].endswith(".sqlite3")


@pytest.mark.django_db
def test_sqlite_connection_is_in_wal_mode() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0].lower() == "wal"
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 1  # NORMAL


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("1", "fail"), ("", "skip")])
def test_require_server_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="needs a test server"):
        require_server("example", "needs a test server")
