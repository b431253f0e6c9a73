"""Threat: a misconfiguration that silently weakens sessions.

``HARDENED_SESSIONS`` is validated both at run time (``get_config()`` raises
``ImproperlyConfigured``) and by system checks; Django settings that contradict the
engine, cookie names browsers would refuse, and an SQLite database without the
recommended options are reported at start-up. ``check --deploy`` covers what Django's
``security.W010``–``W015`` cover, since those stay silent without
``django.contrib.sessions``.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from hardened_sessions.conf import get_config
from hardened_sessions.middleware import HardenedSessionMiddleware
from tests.support.routers import SessionsAliasRouter

HARDENED_MIDDLEWARE = "hardened_sessions.middleware.HardenedSessionMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"

# A configuration a careful deployment would use: no hardened_sessions message at all.
HARDENED_DEPLOYMENT: dict[str, Any] = {
    "SESSION_COOKIE_SECURE": True,
    "SESSION_COOKIE_HTTPONLY": True,
    "HARDENED_SESSIONS": {
        "MAX_BYTES": 65536,
        "IDLE_TIMEOUT": 1800,
        "TOUCH_INTERVAL": 60,
        "ABSOLUTE_TIMEOUT": 43200,
        "KEY_ATTEMPTS": 10,
        "FAILURE_VIEW": "tests.test_settings_and_checks.failure_view",
    },
}


def failure_view(request: Any, status: int, reason: str) -> Any:  # pragma: no cover - a path
    raise NotImplementedError


def ids(*, deploy: bool = False) -> list[str]:
    return [message.id for message in run_checks(include_deployment_checks=deploy)]


def ours(*, deploy: bool = False) -> list[str]:
    return [i for i in ids(deploy=deploy) if i and i.startswith("hardened_sessions.")]


# --- get_config -------------------------------------------------------------------------


def test_get_config_defaults() -> None:
    with override_settings(HARDENED_SESSIONS=None):
        config = get_config()
    assert config.max_bytes == 65536
    assert config.idle_timeout is None
    assert config.absolute_timeout is None
    assert config.touch_interval is None
    assert config.key_attempts == 10
    assert config.failure_view is None


def test_get_config_sees_override_settings_at_once() -> None:
    with override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600}):
        assert get_config().idle_timeout == 600
        with override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 900, "TOUCH_INTERVAL": 30}):
            assert get_config().idle_timeout == 900
            assert get_config().touch_interval == 30
        assert get_config().idle_timeout == 600
        assert get_config().touch_interval is None
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": 4096, "KEY_ATTEMPTS": 3}):
        config = get_config()
        assert (config.max_bytes, config.key_attempts) == (4096, 3)
    assert get_config().max_bytes == 65536


# Each value is one mistake; the system check reports it as E001 and get_config() refuses it.
INVALID_CONFIGS: dict[str, Any] = {
    "not-a-dict": [("IDLE_TIMEOUT", 600)],
    "unknown-key": {"IDLE_TIMEOUTS": 600},
    "unknown-lowercase-key": {"max_bytes": 1024},
    "idle-bool": {"IDLE_TIMEOUT": True},
    "absolute-bool": {"ABSOLUTE_TIMEOUT": True},
    "max-bytes-bool": {"MAX_BYTES": True},
    "key-attempts-bool": {"KEY_ATTEMPTS": True},
    "idle-negative": {"IDLE_TIMEOUT": -1},
    "idle-zero": {"IDLE_TIMEOUT": 0},
    "absolute-negative": {"ABSOLUTE_TIMEOUT": -3600},
    "touch-negative": {"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": -1},
    "idle-string": {"IDLE_TIMEOUT": "600"},
    "absolute-string": {"ABSOLUTE_TIMEOUT": "3600"},
    "max-bytes-string": {"MAX_BYTES": "65536"},
    "key-attempts-string": {"KEY_ATTEMPTS": "10"},
    "touch-equal-to-idle": {"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": 600},
    "touch-above-idle": {"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": 601},
    "touch-without-idle": {"TOUCH_INTERVAL": 60},
    "max-bytes-zero": {"MAX_BYTES": 0},
    "max-bytes-negative": {"MAX_BYTES": -1},
    "max-bytes-absurd": {"MAX_BYTES": 2**40},
    "key-attempts-zero": {"KEY_ATTEMPTS": 0},
    "key-attempts-negative": {"KEY_ATTEMPTS": -5},
    "failure-view-not-a-path": {"FAILURE_VIEW": 42},
}


@pytest.mark.parametrize("name", list(INVALID_CONFIGS))
def test_get_config_rejects_invalid_settings(name: str) -> None:
    with (
        override_settings(HARDENED_SESSIONS=INVALID_CONFIGS[name]),
        pytest.raises(ImproperlyConfigured),
    ):
        get_config()
    # And the next valid configuration is picked up again.
    assert get_config().max_bytes == 65536


@pytest.mark.parametrize("name", list(INVALID_CONFIGS))
def test_invalid_settings_are_e001(name: str) -> None:
    with override_settings(HARDENED_SESSIONS=INVALID_CONFIGS[name]):
        found = ours()
    assert "hardened_sessions.E001" in found


@pytest.mark.parametrize(
    "config",
    [
        None,
        {},
        {"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": 599},
        {"MAX_BYTES": 4096, "KEY_ATTEMPTS": 1, "ABSOLUTE_TIMEOUT": 60},
        HARDENED_DEPLOYMENT["HARDENED_SESSIONS"],
    ],
    ids=["none", "empty", "touch-just-below-idle", "small", "everything"],
)
def test_valid_settings_are_accepted(config: Any) -> None:
    with override_settings(HARDENED_SESSIONS=config):
        assert "hardened_sessions.E001" not in ours()
        get_config()


def test_e001_names_the_problem() -> None:
    with override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUTS": 600}):
        messages = [m for m in run_checks() if m.id == "hardened_sessions.E001"]
    assert len(messages) == 1
    assert "IDLE_TIMEOUTS" in messages[0].msg


# --- Django settings that contradict the engine ----------------------------------------


@pytest.mark.parametrize(
    "serializer",
    [
        "django.contrib.sessions.serializers.PickleSerializer",
        "myproject.serializers.MsgPackSerializer",
    ],
)
def test_non_json_serializer_is_e002(serializer: str) -> None:
    with override_settings(SESSION_SERIALIZER=serializer):
        assert "hardened_sessions.E002" in ours()


def test_json_serializer_is_no_e002() -> None:
    with override_settings(SESSION_SERIALIZER="django.contrib.sessions.serializers.JSONSerializer"):
        assert "hardened_sessions.E002" not in ours()


def test_save_every_request_with_touch_interval_is_e003() -> None:
    touch = {"IDLE_TIMEOUT": 600, "TOUCH_INTERVAL": 60}
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True, HARDENED_SESSIONS=touch):
        assert "hardened_sessions.E003" in ours()
    with override_settings(
        SESSION_SAVE_EVERY_REQUEST=True, HARDENED_SESSIONS={"IDLE_TIMEOUT": 600}
    ):
        assert "hardened_sessions.E003" not in ours()
    with override_settings(SESSION_SAVE_EVERY_REQUEST=False, HARDENED_SESSIONS=touch):
        assert "hardened_sessions.E003" not in ours()


# --- cookie names and flags ---------------------------------------------------------------

HOST = "__Host-sessionid"
SECURE = "__Secure-sessionid"


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ({"SESSION_COOKIE_NAME": HOST, "SESSION_COOKIE_SECURE": False}, "E004"),
        (
            {
                "SESSION_COOKIE_NAME": HOST,
                "SESSION_COOKIE_SECURE": True,
                "SESSION_COOKIE_DOMAIN": "example.com",
            },
            "E004",
        ),
        (
            {
                "SESSION_COOKIE_NAME": HOST,
                "SESSION_COOKIE_SECURE": True,
                "SESSION_COOKIE_PATH": "/app",
            },
            "E004",
        ),
        ({"SESSION_COOKIE_NAME": SECURE, "SESSION_COOKIE_SECURE": False}, "E005"),
    ],
    ids=["host-without-secure", "host-with-domain", "host-with-path", "secure-without-secure"],
)
def test_cookie_prefix_browsers_would_refuse_is_an_error(
    cookie: dict[str, Any], expected: str
) -> None:
    with override_settings(**cookie):
        assert f"hardened_sessions.{expected}" in ours()


@pytest.mark.parametrize(
    "cookie",
    [
        {"SESSION_COOKIE_NAME": HOST, "SESSION_COOKIE_SECURE": True},
        {
            "SESSION_COOKIE_NAME": SECURE,
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_PATH": "/app",
        },
        {"SESSION_COOKIE_NAME": "sessionid", "SESSION_COOKIE_SECURE": False},
    ],
    ids=["host-done-right", "secure-done-right", "no-prefix"],
)
def test_valid_cookie_prefixes_are_accepted(cookie: dict[str, Any]) -> None:
    with override_settings(**cookie):
        found = ours()
    assert "hardened_sessions.E004" not in found
    assert "hardened_sessions.E005" not in found


@pytest.mark.parametrize(
    ("name", "expected"),
    [("__host-sessionid", "E004"), ("__HOST-sessionid", "E004"), ("__secure-sessionid", "E005")],
)
def test_cookie_prefix_check_ignores_case(name: str, expected: str) -> None:
    with override_settings(SESSION_COOKIE_NAME=name, SESSION_COOKIE_SECURE=False):
        assert f"hardened_sessions.{expected}" in ours()


@pytest.mark.parametrize("samesite", ["Sometimes", "lax; Secure", True, 1])
def test_bad_samesite_is_e006(samesite: Any) -> None:
    with override_settings(SESSION_COOKIE_SAMESITE=samesite):
        assert "hardened_sessions.E006" in ours()


@pytest.mark.parametrize("samesite", ["Lax", "Strict", "None", "lax", "strict", False])
def test_good_samesite_is_no_e006(samesite: Any) -> None:
    with override_settings(SESSION_COOKIE_SAMESITE=samesite):
        assert "hardened_sessions.E006" not in ours()


# --- middleware ------------------------------------------------------------------------------


def _with_middleware(replacement: str | None) -> list[str]:
    middleware = [m for m in settings.MIDDLEWARE if m != HARDENED_MIDDLEWARE]
    if replacement is not None:
        middleware.insert(0, replacement)
    return middleware


def test_hardened_engine_with_djangos_session_middleware_is_w001() -> None:
    with override_settings(MIDDLEWARE=_with_middleware(DJANGO_MIDDLEWARE)):
        assert "hardened_sessions.W001" in ours()


def test_hardened_engine_with_hardened_middleware_is_no_w001() -> None:
    assert HARDENED_MIDDLEWARE in settings.MIDDLEWARE
    assert "hardened_sessions.W001" not in ours()


class ProjectSessionMiddleware(HardenedSessionMiddleware):
    """A project's own subclass, as admin.E410 also accepts."""


def test_hardened_engine_with_a_subclass_of_the_hardened_middleware_is_no_w001() -> None:
    path = f"{__name__}.ProjectSessionMiddleware"
    with override_settings(MIDDLEWARE=_with_middleware(path)):
        assert "hardened_sessions.W001" not in ours()


def test_a_projects_subclass_of_a_hardened_engine_without_the_middleware_is_w001() -> None:
    # Told by the engine's class, not by its module path.
    with override_settings(
        SESSION_ENGINE="tests.support.engine_custom_hardened",
        MIDDLEWARE=_with_middleware(DJANGO_MIDDLEWARE),
    ):
        assert "hardened_sessions.W001" in ours()


def test_djangos_own_engine_with_djangos_middleware_is_no_w001() -> None:
    with override_settings(
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        MIDDLEWARE=_with_middleware(DJANGO_MIDDLEWARE),
    ):
        assert "hardened_sessions.W001" not in ours()


# --- SQLite options (W030) ------------------------------------------------------------------

RECOMMENDED = dict(settings.DATABASES["default"]["OPTIONS"])
SQLITE_ALIAS = "sessions_sqlite"


def _route_sessions_to(
    monkeypatch: pytest.MonkeyPatch, engine: str, options: dict[str, Any] | None
) -> None:
    """Route the sessions to an extra alias whose settings the checks read.

    Only ``connections.settings`` (what Django builds from ``DATABASES``) gains the alias;
    no connection is ever opened to it, and ``DATABASES`` itself is left alone.
    """
    config: dict[str, Any] = {"ENGINE": engine, "NAME": "/nonexistent/sessions.sqlite3"}
    if options is not None:
        config["OPTIONS"] = options
    monkeypatch.setitem(connections.settings, SQLITE_ALIAS, config)


def _w030(alias: str = SQLITE_ALIAS) -> list[str]:
    with override_settings(DATABASE_ROUTERS=[SessionsAliasRouter(alias)]):
        return [
            m.msg
            for m in run_checks(include_deployment_checks=True)
            if m.id == "hardened_sessions.W030"
        ]


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in RECOMMENDED.items() if k != key}


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        (None, "WAL"),
        ({}, "IMMEDIATE"),
        (_without("init_command"), "WAL"),
        ({**RECOMMENDED, "init_command": "PRAGMA journal_mode=DELETE;"}, "WAL"),
        (_without("transaction_mode"), "IMMEDIATE"),
        ({**RECOMMENDED, "transaction_mode": "DEFERRED"}, "IMMEDIATE"),
        (_without("timeout"), "timeout"),
    ],
    ids=[
        "no-options",
        "empty-options",
        "no-init-command",
        "rollback-journal",
        "no-transaction-mode",
        "deferred",
        "no-timeout",
    ],
)
def test_sessions_on_sqlite_without_recommended_options_is_w030(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any] | None, mentions: str
) -> None:
    _route_sessions_to(monkeypatch, "django.db.backends.sqlite3", options)
    messages = _w030()
    assert len(messages) == 1
    assert SQLITE_ALIAS in messages[0]
    assert mentions in messages[0]


def test_sessions_on_sqlite_with_recommended_options_is_no_w030(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _route_sessions_to(monkeypatch, "django.db.backends.sqlite3", dict(RECOMMENDED))
    assert _w030() == []


def test_w030_follows_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    # The routed alias lacks the options; "default" has them. Only routing finds the problem.
    _route_sessions_to(monkeypatch, "django.db.backends.sqlite3", {})
    assert _w030(SQLITE_ALIAS)
    assert _w030("default") == []


def test_sessions_on_another_engine_is_no_w030(monkeypatch: pytest.MonkeyPatch) -> None:
    _route_sessions_to(monkeypatch, "django.db.backends.postgresql", {})
    assert _w030() == []


def test_test_settings_database_is_no_w030() -> None:
    assert "hardened_sessions.W030" not in ours()


# --- deployment checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"SESSION_COOKIE_SECURE": False}, "W010"),
        ({"SESSION_COOKIE_HTTPONLY": False}, "W013"),
        ({"HARDENED_SESSIONS": {"IDLE_TIMEOUT": 1800}}, "W020"),
        ({"HARDENED_SESSIONS": None}, "W020"),
    ],
    ids=["not-secure", "not-httponly", "no-absolute-timeout", "no-hardened-settings"],
)
def test_deploy_warnings(changes: dict[str, Any], expected: str) -> None:
    with override_settings(**{**HARDENED_DEPLOYMENT, **changes}):
        deploy = ours(deploy=True)
        plain = ours()
    assert deploy.count(f"hardened_sessions.{expected}") == 1
    # Only the deployment run reports it.
    assert f"hardened_sessions.{expected}" not in plain
    # And only it: the other settings are hardened.
    assert [i for i in deploy if i.startswith("hardened_sessions.W0")] == [
        f"hardened_sessions.{expected}"
    ]


def test_cookie_deploy_warnings_follow_the_middleware_over_a_stock_engine() -> None:
    # The middleware sets the cookie whatever the engine, and Django's own W010/W013 stay
    # silent without its app and middleware; W020 (ABSOLUTE_TIMEOUT) is the engine's.
    insecure = {"SESSION_COOKIE_SECURE": False, "SESSION_COOKIE_HTTPONLY": False}
    stock = "django.contrib.sessions.backends.signed_cookies"
    with override_settings(**insecure, SESSION_ENGINE=stock, HARDENED_SESSIONS=None):
        found = set(ours(deploy=True))
    assert {"hardened_sessions.W010", "hardened_sessions.W013"} <= found
    assert "hardened_sessions.W020" not in found
    with override_settings(
        **insecure, SESSION_ENGINE=stock, MIDDLEWARE=_with_middleware(DJANGO_MIDDLEWARE)
    ):
        assert ours(deploy=True) == []


def test_hardened_deployment_has_no_hardened_sessions_message() -> None:
    with override_settings(**HARDENED_DEPLOYMENT):
        assert ours(deploy=True) == []


def test_ours_fire_where_djangos_own_session_warnings_stay_silent() -> None:
    insecure = {"SESSION_COOKIE_SECURE": False, "SESSION_COOKIE_HTTPONLY": False}
    djangos = {f"security.W0{n}" for n in range(10, 16)}
    assert "django.contrib.sessions" not in settings.INSTALLED_APPS
    with override_settings(**insecure):
        found = set(ids(deploy=True))
    assert not found & djangos, "Django's own session checks fire after all"
    assert {"hardened_sessions.W010", "hardened_sessions.W013"} <= found

    # Control: Django's checks do fire once its middleware is there, so the silence above
    # is the configuration's, not this test's.
    with override_settings(**insecure, MIDDLEWARE=_with_middleware(DJANGO_MIDDLEWARE)):
        assert set(ids(deploy=True)) & djangos


# --- the test settings themselves --------------------------------------------------------------


def test_test_settings_pass_manage_py_check() -> None:
    out = StringIO()
    call_command("check", stdout=out, stderr=StringIO())
    assert [m for m in run_checks() if m.is_serious()] == []
    assert ours() == []


@pytest.mark.parametrize("name", [":memory:", "file:sessions?mode=memory&cache=shared"])
def test_an_in_memory_sqlite_database_is_no_w030(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """One process owns an in-memory database: the options for several processes (WAL
    in particular, which an in-memory database cannot use) do not apply."""
    _route_sessions_to(monkeypatch, "django.db.backends.sqlite3", None)
    monkeypatch.setitem(connections.settings[SQLITE_ALIAS], "NAME", name)
    assert _w030() == []
