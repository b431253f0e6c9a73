"""One name for a session everywhere a person meets it: its 16-hex-digit handle.

A superuser logs in through the admin's login page; the handle of that session is then
read from the "your sessions" page, the admin's changelist (the column, the change link,
the action checkbox), the admin's change page, the signals (``key_hash_prefix`` of
``session_created``/``session_rotated``/``session_revoked``, ``session_handle`` of
``session_new_device``), the admin log, and ``hash_prefix`` (what log messages name a
session by): all the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import include, path

from hardened_sessions import keys
from hardened_sessions.admin import row_id
from hardened_sessions.backends.base import hash_prefix
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import (
    session_created,
    session_new_device,
    session_revoked,
    session_rotated,
)
from hardened_sessions.views_sessions import handle_of
from tests.support.urls_admin import urlpatterns as admin_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

COOKIE = settings.SESSION_COOKIE_NAME
CHANGELIST = "/admin/hardened_sessions/hardenedsession/"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)

urlpatterns = [*admin_urlpatterns, path("sessions/", include("hardened_sessions.urls"))]

_HANDLE = r"([0-9a-f]+)"


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(
        ROOT_URLCONF=__name__,
        STATIC_URL="/static/",
        HARDENED_SESSIONS={"DEVICE_METADATA": True},
    ):
        yield


@pytest.fixture
def root() -> Any:
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")


@pytest.fixture
def signals() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name, signal in (
        ("created", session_created),
        ("rotated", session_rotated),
        ("revoked", session_revoked),
        ("new_device", session_new_device),
    ):

        def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, kwargs))

        receivers[signal] = receiver
        signal.connect(receiver)
    yield seen
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def log_in(agent: str) -> Client:
    client = Client(REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT=agent)
    response = client.post(
        "/admin/login/", {"username": "root", "password": "pw-root", "next": "/admin/"}
    )
    assert response.status_code == 302, response.status_code
    return client


def one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, found)
    value: str = found[0]
    return value


def test_one_handle_everywhere(root: Any, signals: list[tuple[str, dict[str, Any]]]) -> None:
    log_in(FIREFOX)
    signals.clear()
    client = log_in(CHROME)  # another browser: a new device
    key_hash = keys.store_key(client.cookies[COOKIE].value)

    # "Your sessions": the row marked as this browser's.
    page = client.get("/sessions/").content.decode()
    on_page = one(r'<tr class="hs-session current" data-handle="' + _HANDLE + '">', page)

    # The admin's changelist: the column, the change link and the checkbox of that row.
    changelist = client.get(CHANGELIST).content.decode()
    rows = re.findall(r"<tr>(.*?)</tr>", changelist, re.S)
    mine = [row for row in rows if f"/{on_page}/change/" in row]
    assert len(mine) == 1
    in_column = one(r'class="field-key_prefix">(?:<a [^>]*>)?' + _HANDLE + "…", mine[0])
    in_link = one(CHANGELIST + _HANDLE + "/change/", mine[0])
    in_checkbox = one(r'name="_selected_action" value="' + _HANDLE + '"', mine[0])

    # The admin's change page: its title and breadcrumbs.
    change = client.get(f"{CHANGELIST}{on_page}/change/").content.decode()
    in_title = one(r"<title>" + _HANDLE + r"… \| ", change)
    # Django up to 6.0 separates breadcrumbs with "&rsaquo;"; 6.1 puts each in an <li>.
    in_breadcrumbs = one(
        r'(?:&rsaquo; |<li aria-current="page">)' + _HANDLE + "…(?:\n|</li>)", change
    )

    # The signals of the login.
    started = [kw["key_hash_prefix"] for name, kw in signals if name in ("created", "rotated")]
    new_device = [kw["session_handle"] for name, kw in signals if name == "new_device"]

    # The session revoked in the admin from another session: its revocation signal and
    # the admin log name it alike.
    other = log_in(FIREFOX)
    response = other.post(
        "/admin/hardened_sessions/hardenedsession/",
        {"action": "revoke_selected", "_selected_action": [on_page], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    revoked = [kw["key_hash_prefix"] for name, kw in signals if name == "revoked"]
    logged = LogEntry.objects.get()

    handle = handle_of(key_hash)
    assert len(handle) == 16
    assert handle == row_id(HardenedSession(key_hash=key_hash)) == hash_prefix(key_hash)
    assert [
        on_page,
        in_column,
        in_link,
        in_checkbox,
        in_title,
        in_breadcrumbs,
        *started[-1:],
        *new_device,
        *revoked,
        logged.object_id,
    ] == [handle] * 10
    assert logged.object_repr == f"{handle}…"
