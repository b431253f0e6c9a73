"""``session_new_device``: a login from a device none of the user's other live sessions has.

Through Django's test client, the real middleware and ``auth.login()``, on the db engine
on each database and on cached_db. "The same device" is the same browser family and
operating system family (parsed from the user agent when ua-parser is installed, else
the raw header), and the same IP network (``/24``, ``/48``) when the address is kept. A
user's first live session is no new device; ended sessions do not count; the handle the
signal carries is the row id the sessions page shows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model, login
from django.core.checks import run_checks
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.test import Client, override_settings
from django.urls import include, path

from hardened_sessions import keys
from hardened_sessions.device import same_device
from hardened_sessions.signals import session_new_device
from hardened_sessions.views_sessions import handle_of

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

COOKIE = settings.SESSION_COOKIE_NAME
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"

FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Gecko/20100101 Firefox/120.0"
# The same browser on the same system, a month later: another major version.
FIREFOX_WINDOWS_NEWER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"

HOME = "198.51.100.7"
HOME_OTHER_HOST = "198.51.100.200"  # the same /24
ELSEWHERE = "203.0.113.9"


def sign_in(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponseBadRequest("no")
    login(request, user)
    return HttpResponse("signed in")


def sign_out(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import logout

    logout(request)
    return HttpResponse("signed out")


urlpatterns = [
    path("sign-in/", sign_in),
    path("sign-out/", sign_out),
    path("sessions/", include("hardened_sessions.urls")),
]


@pytest.fixture(params=["db", "cached_db"])
def engine(request: pytest.FixtureRequest, db_alias: str) -> Iterator[str]:
    overrides: dict[str, Any] = {"ROOT_URLCONF": __name__}
    if request.param == "cached_db":
        overrides.update(
            CACHES={
                "default": settings.CACHES["default"],
                "sessions": {"BACKEND": LOCMEM, "LOCATION": f"new-device-{db_alias}"},
            },
            SESSION_CACHE_ALIAS="sessions",
            SESSION_ENGINE="hardened_sessions.backends.cached_db",
        )
    else:
        overrides["SESSION_ENGINE"] = "hardened_sessions.backends.db"
    with override_settings(**overrides):
        yield settings.SESSION_ENGINE


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice")


@pytest.fixture
def sent() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    session_new_device.connect(receiver)
    yield received
    session_new_device.disconnect(receiver)


def logged_in(address: str, agent: str) -> Client:
    client = Client(REMOTE_ADDR=address, HTTP_USER_AGENT=agent)
    response = client.post("/sign-in/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 200
    return client


def handle(client: Client) -> str:
    return handle_of(keys.store_key(client.cookies[COOKIE].value))


KEEP_ALL = {"DEVICE_METADATA": {"IP": "network", "USER_AGENT": "raw"}}
KEEP_FULL_PARSED = {"DEVICE_METADATA": {"IP": "full", "USER_AGENT": "parsed"}}
NO_IP = {"DEVICE_METADATA": {"IP": None, "USER_AGENT": "raw"}}


@pytest.mark.parametrize(
    "setting", [KEEP_ALL, KEEP_FULL_PARSED], ids=["network-raw", "full-parsed"]
)
def test_first_session_is_no_new_device(
    engine: str, alice: Any, sent: list[dict[str, Any]], setting: dict[str, Any]
) -> None:
    with override_settings(HARDENED_SESSIONS=setting):
        logged_in(HOME, FIREFOX_WINDOWS)
    assert sent == []


@pytest.mark.parametrize(
    "setting", [KEEP_ALL, KEEP_FULL_PARSED], ids=["network-raw", "full-parsed"]
)
def test_same_device_sends_nothing(
    engine: str, alice: Any, sent: list[dict[str, Any]], setting: dict[str, Any]
) -> None:
    with override_settings(HARDENED_SESSIONS=setting):
        logged_in(HOME, FIREFOX_WINDOWS)
        # Another host of the same network, a newer version of the same browser.
        logged_in(HOME_OTHER_HOST, FIREFOX_WINDOWS_NEWER)
        logged_in(HOME, FIREFOX_WINDOWS)
    assert sent == []


@pytest.mark.parametrize(
    "setting", [KEEP_ALL, KEEP_FULL_PARSED], ids=["network-raw", "full-parsed"]
)
@pytest.mark.parametrize("agent", [CHROME_WINDOWS, FIREFOX_LINUX], ids=["browser", "os"])
def test_new_browser_or_system_is_a_new_device(
    engine: str, alice: Any, sent: list[dict[str, Any]], setting: dict[str, Any], agent: str
) -> None:
    with override_settings(HARDENED_SESSIONS=setting):
        logged_in(HOME, FIREFOX_WINDOWS)
        new = logged_in(HOME, agent)
    assert len(sent) == 1
    event = sent[0]
    assert event["user"] == alice
    assert event["session_handle"] == handle(new)
    assert len(event["session_handle"]) == 16
    assert event["request"].META["HTTP_USER_AGENT"] == agent
    assert event["sender"].__module__ == engine


@pytest.mark.parametrize(
    "setting", [KEEP_ALL, KEEP_FULL_PARSED], ids=["network-raw", "full-parsed"]
)
def test_new_network_is_a_new_device_when_the_address_is_kept(
    engine: str, alice: Any, sent: list[dict[str, Any]], setting: dict[str, Any]
) -> None:
    with override_settings(HARDENED_SESSIONS=setting):
        logged_in(HOME, FIREFOX_WINDOWS)
        new = logged_in(ELSEWHERE, FIREFOX_WINDOWS)
    assert [event["session_handle"] for event in sent] == [handle(new)]


def test_network_is_ignored_when_the_address_is_not_kept(
    engine: str, alice: Any, sent: list[dict[str, Any]]
) -> None:
    with override_settings(HARDENED_SESSIONS=NO_IP):
        logged_in(HOME, FIREFOX_WINDOWS)
        logged_in(ELSEWHERE, FIREFOX_WINDOWS)
        assert sent == []
        new = logged_in(ELSEWHERE, CHROME_WINDOWS)
    assert [event["session_handle"] for event in sent] == [handle(new)]


def test_ended_sessions_do_not_count(engine: str, alice: Any, sent: list[dict[str, Any]]) -> None:
    with override_settings(HARDENED_SESSIONS=KEEP_ALL):
        laptop = logged_in(HOME, FIREFOX_WINDOWS)
        logged_in(ELSEWHERE, CHROME_WINDOWS)  # the phone: a new device
        assert len(sent) == 1
        assert laptop.post("/sign-out/").status_code == 200
        # The laptop's session ended: only the phone's is live, so the laptop is new again.
        again = logged_in(HOME, FIREFOX_WINDOWS)
    assert [event["session_handle"] for event in sent[1:]] == [handle(again)]


def test_nothing_is_sent_without_device_metadata(
    engine: str, alice: Any, sent: list[dict[str, Any]]
) -> None:
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": False}):
        logged_in(HOME, FIREFOX_WINDOWS)
        logged_in(ELSEWHERE, CHROME_WINDOWS)
    assert sent == []


def test_handle_is_the_row_id_on_the_sessions_page(
    engine: str, alice: Any, sent: list[dict[str, Any]]
) -> None:
    with override_settings(HARDENED_SESSIONS=KEEP_ALL):
        logged_in(HOME, FIREFOX_WINDOWS)
        new = logged_in(ELSEWHERE, CHROME_WINDOWS)
        page = new.get("/sessions/")
    assert page.status_code == 200
    current = [entry.handle for entry in page.context["sessions"] if entry.current]
    assert [event["session_handle"] for event in sent] == current
    assert f'data-handle="{current[0]}"' in page.content.decode()


def test_a_failing_store_does_not_break_the_login(
    engine: str, alice: Any, sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hardened_sessions import revoke

    def broken(user: Any) -> list[Any]:
        raise RuntimeError("store down")

    with override_settings(HARDENED_SESSIONS=KEEP_ALL):
        logged_in(HOME, FIREFOX_WINDOWS)
        monkeypatch.setattr(revoke, "user_sessions", broken)
        logged_in(ELSEWHERE, CHROME_WINDOWS)
    assert sent == []


# --- what "the same device" means (no database) ---------------------------------------


@pytest.mark.django_db(databases=[])
def test_same_device_rules() -> None:
    raw = {"IP": "network", "USER_AGENT": "raw"}
    # Parsed: browser and system families, the majors dropped.
    assert same_device(
        ("198.51.100.0", FIREFOX_WINDOWS), ("198.51.100.0", FIREFOX_WINDOWS_NEWER), raw
    )
    assert not same_device(("198.51.100.0", FIREFOX_WINDOWS), ("198.51.100.0", CHROME_WINDOWS), raw)
    assert not same_device(("198.51.100.0", FIREFOX_WINDOWS), ("203.0.113.0", FIREFOX_WINDOWS), raw)
    parsed = {"IP": "full", "USER_AGENT": "parsed"}
    # Full addresses compare by their network.
    assert same_device(
        ("198.51.100.7", "Firefox 120 / Windows 10"),
        ("198.51.100.200", "Firefox 121 / Windows 10"),
        parsed,
    )
    assert not same_device(
        ("198.51.100.7", "Firefox 120 / Windows 10"),
        ("198.51.100.7", "Chrome 120 / Windows 10"),
        parsed,
    )
    no_ip = {"IP": None, "USER_AGENT": "raw"}
    assert same_device((None, FIREFOX_WINDOWS), (None, FIREFOX_WINDOWS_NEWER), no_ip)


@pytest.mark.django_db(databases=[])
def test_raw_agents_compare_whole_without_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ua_parser", None)  # import ua_parser: ImportError
    raw = {"IP": None, "USER_AGENT": "raw"}
    assert same_device((None, FIREFOX_WINDOWS), (None, FIREFOX_WINDOWS), raw)
    assert not same_device((None, FIREFOX_WINDOWS), (None, FIREFOX_WINDOWS_NEWER), raw)


# --- the cache engine keeps no device metadata: W403 -----------------------------------


@pytest.mark.django_db(databases=[])
def test_cache_engine_with_device_metadata_is_w403() -> None:
    with override_settings(
        SESSION_ENGINE="hardened_sessions.backends.cache",
        HARDENED_SESSIONS={"DEVICE_METADATA": True},
    ):
        warnings = [m for m in run_checks() if m.id == "hardened_sessions.W403"]
    assert len(warnings) == 1
    assert "session_new_device" in warnings[0].msg
    with override_settings(
        SESSION_ENGINE="hardened_sessions.backends.cache",
        HARDENED_SESSIONS={"DEVICE_METADATA": False},
    ):
        assert not [m for m in run_checks() if m.id == "hardened_sessions.W403"]
    with override_settings(HARDENED_SESSIONS={"DEVICE_METADATA": True}):
        assert not [m for m in run_checks() if m.id == "hardened_sessions.W403"]
