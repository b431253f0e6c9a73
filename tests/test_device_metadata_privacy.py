"""Device metadata keeps only what ``DEVICE_METADATA`` asks for, for ``METADATA_RETENTION``.

``DEVICE_METADATA`` is ``False``, ``True`` (``{"IP": "network", "USER_AGENT": "raw"}``) or
``{"IP": "full" | "network" | None, "USER_AGENT": "raw" | "parsed" | None}``: what lands
in the row is read from the table itself, on each database and on the db and cached_db
engines, for IPv4, IPv6, IPv4-mapped and malformed addresses. ``METADATA_RETENTION``:
the sweep clears the metadata of sessions not written for longer, and keeps the sessions.
``"parsed"`` without ua-parser installed is the system check error E020.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import include, path
from django.utils import timezone

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.conf import get_config, validate
from hardened_sessions.device import (
    USER_AGENT_MAX,
    check_user_agent_parser,
    parse_user_agent,
    stored_ip,
    stored_user_agent,
)
from hardened_sessions.models import HardenedSession

COOKIE = settings.SESSION_COOKIE_NAME
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Gecko/20100101 Firefox/120.0"


def count(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


urlpatterns = [
    path("count/", count),
    path("accounts/", include("django.contrib.auth.urls")),
    path("sessions/", include("hardened_sessions.urls")),
]


# --- what each choice keeps (no database) ---------------------------------------------


@pytest.mark.parametrize(
    ("address", "full", "network"),
    [
        ("203.0.113.9", "203.0.113.9", "203.0.113.0"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        # An IPv4 client on a dual-stack socket: truncated as IPv4, never as IPv6 (/48 of
        # ::ffff:a.b.c.d would be the whole address).
        ("::ffff:203.0.113.9", "203.0.113.9", "203.0.113.0"),
        ("::FFFF:cb00:7109", "203.0.113.9", "203.0.113.0"),
        ("2002:cb00:7109:1234::1", "2002:cb00:7109:1234::1", "203.0.113.0"),  # 6to4
        ("fe80::1%eth0", None, "fe80::"),
        ("", None, None),
        ("203.0.113.9:4321", None, None),
        ("unix:/run/app.sock", None, None),
        ("203.0.113.009", None, None),  # leading zeros: octal to some parsers
        (" 203.0.113.9", None, None),
        ("203.0.113.9/24", None, None),
        ("garbage", None, None),
    ],
)
def test_stored_ip(address: str, full: str | None, network: str | None) -> None:
    assert stored_ip(address, "full") == full
    assert stored_ip(address, "network") == network
    assert stored_ip(address, None) is None


def test_stored_ip_takes_only_strings() -> None:
    assert stored_ip(None, "full") is None
    assert stored_ip(3405803785, "network") is None  # ipaddress would take an int


def test_stored_user_agent_raw_is_bounded() -> None:
    assert stored_user_agent(FIREFOX, "raw") == FIREFOX
    assert stored_user_agent("x" * 1000, "raw") == "x" * USER_AGENT_MAX
    assert stored_user_agent(FIREFOX, None) == ""
    assert stored_user_agent("", "raw") == ""
    assert stored_user_agent(None, "raw") == ""
    assert stored_user_agent("Evil\x00Browser/1\r\n", "raw") == "EvilBrowser/1"


def test_stored_user_agent_parsed_keeps_browser_and_os_only() -> None:
    assert stored_user_agent(FIREFOX, "parsed") == "Firefox 120 / Windows 10"
    assert parse_user_agent("no browser at all") == ""
    # A crafted header cannot fill the column through the parsed parts.
    long = f"Mozilla/5.0 (Windows NT 10.0) Firefox/{'9' * 500}"
    assert len(parse_user_agent(long)) <= USER_AGENT_MAX


def test_parsed_without_the_parser_keeps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ua_parser", None)  # import ua_parser: ImportError
    assert stored_user_agent(FIREFOX, "parsed") == ""


# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ip", "agent"),
    [
        (False, None, None),
        (True, "network", "raw"),
        ({"IP": "full", "USER_AGENT": "parsed"}, "full", "parsed"),
        ({"IP": None, "USER_AGENT": "raw"}, None, "raw"),
        ({"IP": None, "USER_AGENT": None}, None, None),
    ],
)
def test_device_metadata_choices(value: Any, ip: str | None, agent: str | None) -> None:
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": value}):
        config = get_config()
    assert (config.device_ip, config.device_user_agent) == (ip, agent)
    assert config.device_metadata is bool(ip or agent)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"DEVICE_METADATA": "yes"}, "must be True, False or a dict"),
        ({"DEVICE_METADATA": 1}, "must be True, False or a dict"),
        ({"DEVICE_METADATA": {"IP": "full"}}, "exactly the keys 'IP' and 'USER_AGENT'"),
        (
            {"DEVICE_METADATA": {"IP": "full", "USER_AGENT": None, "OS": "x"}},
            "exactly the keys",
        ),
        ({"DEVICE_METADATA": {"IP": "/24", "USER_AGENT": None}}, "['IP'] must be one of"),
        ({"DEVICE_METADATA": {"IP": ["full"], "USER_AGENT": None}}, "['IP'] must be one of"),
        ({"DEVICE_METADATA": {"IP": None, "USER_AGENT": True}}, "['USER_AGENT'] must be one"),
        ({"METADATA_RETENTION": 0}, "'METADATA_RETENTION'] must be None or a number"),
        ({"METADATA_RETENTION": 3600.0}, "'METADATA_RETENTION'] must be None or a number"),
        ({"METADATA_RETENTION": True}, "'METADATA_RETENTION'] must be None or a number"),
    ],
)
def test_bad_settings_are_refused(setting: dict[str, Any], message: str) -> None:
    problems = validate(setting)
    assert len(problems) == 1 and message in problems[0], problems
    with override_settings(HARDENED_SESSIONS=setting):
        errors = [m for m in run_checks() if m.id == "hardened_sessions.E001"]
        assert [m.msg for m in errors] == problems
        with pytest.raises(ImproperlyConfigured, match="HARDENED_SESSIONS"):
            get_config()


def test_good_retention_is_accepted() -> None:
    assert validate({"METADATA_RETENTION": 30 * 24 * 3600, "DEVICE_METADATA": True}) == []
    assert validate({"METADATA_RETENTION": None}) == []


PARSED = {"DEVICE_METADATA": {"IP": None, "USER_AGENT": "parsed"}}


def test_parsed_without_the_parser_is_a_check_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with override_settings(HARDENED_SESSIONS=PARSED):
        assert check_user_agent_parser() == []
        monkeypatch.setitem(sys.modules, "ua_parser", None)
        errors = [m for m in run_checks() if m.id == "hardened_sessions.E020"]
        assert len(errors) == 1
        assert "ua-parser" in errors[0].msg
        assert "django-hardened-sessions[useragent]" in (errors[0].hint or "")
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True}):
        assert check_user_agent_parser() == []  # raw needs no parser


# --- what lands in the row -----------------------------------------------------------


@pytest.fixture(params=["db", "cached_db"])
def engine(request: pytest.FixtureRequest, db_alias: str) -> Iterator[str]:
    """The model-backed engines, through the middleware; cached_db over a LocMemCache."""
    overrides: dict[str, Any] = {"ROOT_URLCONF": __name__}
    if request.param == "cached_db":
        overrides.update(
            CACHES={
                "default": settings.CACHES["default"],
                "sessions": {"BACKEND": LOCMEM, "LOCATION": f"device-{db_alias}"},
            },
            SESSION_CACHE_ALIAS="sessions",
            SESSION_ENGINE="hardened_sessions.backends.cached_db",
        )
    with override_settings(**overrides):
        yield settings.SESSION_ENGINE


def _visit(remote_addr: str, agent: str = FIREFOX, client: Client | None = None) -> Client:
    client = client or Client(REMOTE_ADDR=remote_addr, HTTP_USER_AGENT=agent)
    response = client.get("/count/")
    assert response.status_code == 200
    return client


def _row(alias: str, client: Client) -> Any:
    key = client.cookies[COOKIE].value
    return HardenedSession.objects.using(alias).get(pk=keys.store_key(key))


ADDRESSES = [
    ("198.51.100.77", "198.51.100.77", "198.51.100.0"),
    ("2001:db8:abcd:12::1", "2001:db8:abcd:12::1", "2001:db8:abcd::"),
    ("::ffff:198.51.100.77", "198.51.100.77", "198.51.100.0"),
    ("not-an-address", None, None),
]


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize(("address", "full", "network"), ADDRESSES)
def test_true_keeps_the_network_and_the_raw_agent(
    db_alias: str, engine: str, address: str, full: str | None, network: str | None
) -> None:
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True}):
        client = _visit(address, "y" * 400)
    row = _row(db_alias, client)
    assert (row.ip_address, row.user_agent) == (network, "y" * USER_AGENT_MAX)


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize(("address", "full", "network"), ADDRESSES)
def test_full_keeps_the_address_and_parsed_the_browser(
    db_alias: str, engine: str, address: str, full: str | None, network: str | None
) -> None:
    with override_settings(
        HARDENED_SESSIONS={"DEVICE_METADATA": {"IP": "full", "USER_AGENT": "parsed"}}
    ):
        client = _visit(address)
    row = _row(db_alias, client)
    assert (row.ip_address, row.user_agent) == (full, "Firefox 120 / Windows 10")
    assert "Gecko" not in row.user_agent


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize(
    "setting", [False, {"IP": None, "USER_AGENT": None}], ids=["false", "none-none"]
)
def test_nothing_kept(db_alias: str, engine: str, setting: Any) -> None:
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": setting}):
        client = _visit("198.51.100.77")
    row = _row(db_alias, client)
    assert (row.ip_address, row.user_agent) == (None, "")
    assert b"198.51.100" not in bytes(row.data) and b"Firefox" not in bytes(row.data)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_nul_in_the_user_agent_does_not_break_the_save(db_alias: str, engine: str) -> None:
    # PostgreSQL refuses NUL in text: the session could not be saved at all.
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True}):
        client = _visit("198.51.100.77", "Evil\x00Browser/1")
    assert _row(db_alias, client).user_agent == "EvilBrowser/1"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_each_part_can_be_left_out(db_alias: str, engine: str) -> None:
    with override_settings(
        HARDENED_SESSIONS={"DEVICE_METADATA": {"IP": None, "USER_AGENT": "raw"}}
    ):
        client = _visit("198.51.100.77")
    assert (_row(db_alias, client).ip_address, _row(db_alias, client).user_agent) == (None, FIREFOX)
    with override_settings(
        HARDENED_SESSIONS={"DEVICE_METADATA": {"IP": "network", "USER_AGENT": None}}
    ):
        _visit("198.51.100.77", client=client)  # the next write replaces what was kept
    row = _row(db_alias, client)
    assert (row.ip_address, row.user_agent) == ("198.51.100.0", "")


# --- METADATA_RETENTION ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_retention_clears_old_metadata_and_keeps_the_session(db_alias: str, engine: str) -> None:
    setting = {"DEVICE_METADATA": True, "METADATA_RETENTION": 3600}
    with override_settings(HARDENED_SESSIONS=setting):
        old = _visit("198.51.100.77")
        fresh = _visit("203.0.113.5")
        expired = _visit("192.0.2.1")
        HardenedSession.objects.using(db_alias).filter(pk=_row(db_alias, old).pk).update(
            last_activity=timezone.now() - timedelta(seconds=3601)
        )
        HardenedSession.objects.using(db_alias).filter(pk=_row(db_alias, expired).pk).update(
            expire_date=timezone.now() - timedelta(seconds=1)
        )
        expired_pk = keys.store_key(expired.cookies[COOKIE].value)

        deleted = SessionStore.delete_expired(using=db_alias)

        assert deleted == 1
        assert not HardenedSession.objects.using(db_alias).filter(pk=expired_pk).exists()
        row = _row(db_alias, old)
        assert (row.ip_address, row.user_agent) == (None, "")
        row = _row(db_alias, fresh)
        assert (row.ip_address, row.user_agent) == ("203.0.113.0", FIREFOX)
        # The session lives on, and its next write records the device again.
        assert old.get("/count/").content == b"2"
        row = _row(db_alias, old)
        assert (row.ip_address, row.user_agent) == ("198.51.100.0", FIREFOX)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_without_retention_the_sweep_keeps_metadata(db_alias: str, engine: str) -> None:
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True}):
        client = _visit("198.51.100.77")
        HardenedSession.objects.using(db_alias).filter(pk=_row(db_alias, client).pk).update(
            last_activity=timezone.now() - timedelta(days=3650)
        )
        SessionStore.delete_expired(using=db_alias)
    assert _row(db_alias, client).ip_address == "198.51.100.0"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_retention_sweeps_in_bounded_batches(db_alias: str) -> None:
    setting = {"DEVICE_METADATA": {"IP": "full", "USER_AGENT": "raw"}, "METADATA_RETENTION": 60}
    with override_settings(HARDENED_SESSIONS=setting, ROOT_URLCONF=__name__):
        clients = [_visit(f"198.51.100.{n}") for n in range(5)]
        HardenedSession.objects.using(db_alias).update(
            last_activity=timezone.now() - timedelta(seconds=61)
        )
        SessionStore.delete_expired(batch_size=2, using=db_alias)
    rows = HardenedSession.objects.using(db_alias)
    assert rows.count() == 5
    assert not rows.filter(ip_address__isnull=False).exists()
    assert not rows.exclude(user_agent="").exists()
    with override_settings(ROOT_URLCONF=__name__):
        assert [c.get("/count/").content for c in clients] == [b"2"] * 5


# --- the "your sessions" page -----------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_sessions_page_shows_the_parsed_browser(db_alias: str, engine: str) -> None:
    get_user_model().objects.create_user("alice", password="pw-alice")
    setting = {"DEVICE_METADATA": {"IP": "network", "USER_AGENT": "parsed"}}
    with override_settings(HARDENED_SESSIONS=setting):
        client = Client(REMOTE_ADDR="2001:db8:abcd:12::1", HTTP_USER_AGENT=FIREFOX)
        response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
        assert response.status_code == 302
        page = client.get("/sessions/").content.decode()
    assert "Firefox 120 / Windows 10" in page
    assert "2001:db8:abcd::" in page
    assert "Gecko" not in page and "2001:db8:abcd:12::1" not in page
