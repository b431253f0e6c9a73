"""Threat: a cookie attribute injected, or the cookie broken, through a setting.

Django writes ``SESSION_COOKIE_NAME``, ``SESSION_COOKIE_PATH`` and
``SESSION_COOKIE_DOMAIN`` into the ``Set-Cookie`` header as they are: a path of
``"/;Domain=evil.example"`` widens the cookie to another site, a CR/LF makes every
response that sets or deletes the cookie a 500 (or a header injection behind a server
that does not check), a space or a quote makes parsers drop the attribute or the
whole cookie. Such values are system-check errors (``hardened_sessions.E101`` name,
``E102`` path, ``E103`` domain, ``E006`` SameSite, ``E104`` age), and
``HardenedSessionMiddleware`` refuses the first four at run time too, with
``ImproperlyConfigured``, whether or not the checks ran: no response ever carries an
injected attribute.

A ``,`` in the path is allowed by RFC 6265 and emitted verbatim by Django, but it is
where parsers that split a folded ``Set-Cookie`` header cut it: refused too (E102).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import Client, override_settings

from hardened_sessions.conf import MAX_TIMEOUT, cookie_problems
from hardened_sessions.middleware import HardenedSessionMiddleware
from tests.support.views_http import URLCONF, session_cookie, set_cookie_headers

pytestmark = pytest.mark.django_db(transaction=True)

BAD_NAMES: dict[str, Any] = {
    "space": "session id",
    "crlf": "sessionid\r\nX-Injected: 1",
    "lf-set-cookie": "sessionid\nSet-Cookie: admin=1",
    "semicolon": "sessionid;Domain=evil.example",
    "comma": "session,id",
    "equals": "session=id",
    "colon": "session:id",
    "quote": 'session"id',
    "slash": "session/id",
    "tab": "session\tid",
    "nul": "session\x00id",
    "del": "session\x7fid",
    "non-ascii": "sessión",
    "empty": "",
    "none": None,
    "int": 42,
}
GOOD_NAMES = ["sessionid", "__Host-sid", "__Secure-sid", "my_session.id-2", "a!#$%&'*+-.^_`|~z"]

BAD_PATHS: dict[str, Any] = {
    "domain-injection": "/;Domain=evil.example",
    "secure-dropped": "/app; Secure",
    "trailing-semicolon": "/app;",
    "comma": "/a,b",
    "space": "/a b",
    "crlf": "/app\r\nX-Injected: 1",
    "nul": "/a\x00",
    "del": "/a\x7f",
    "tab": "/a\tb",
    "quote": '/a"b',
    "backslash": "/a\\b",
    "non-ascii": "/café",
    "relative": "app/",
    "empty": "",
    "none": None,
    "too-long": "/" + "a" * 1024,
}
GOOD_PATHS = ["/", "/app/", "/app-1/~x/", "/a:b@c/", "/%20space/", "/[v1]/{x}/"]

BAD_DOMAINS: dict[str, Any] = {
    "secure-injection": "example.com;Secure",
    "comma": "example.com,evil.example",
    "space": "exa mple.com",
    "crlf": "example.com\r\nX-Injected: 1",
    "dot-only": ".",
    "empty-label": "a..example.com",
    "leading-hyphen": "-example.com",
    "trailing-hyphen": "example-.com",
    "trailing-dot": "example.com.",
    "non-ascii": "exämple.com",
    "port": "example.com:8000",
    "ipv6": "[::1]",
    "long-label": "a" * 64 + ".com",
    "underscore": "my_host.example",
    "int": 42,
}
GOOD_DOMAINS = [
    None,
    "",
    "example.com",
    ".example.com",
    "localhost",
    "xn--bcher-kva.ch",
    "10.0.0.1",
]

BAD_AGES: dict[str, Any] = {
    "zero": 0,
    "negative": -1,
    "bool": True,
    "string": "3600",
    "float": 1.5,
    "none": None,
    "overflow": 10**12,
}
GOOD_AGES = [1, 1209600, MAX_TIMEOUT]


def _ours() -> list[str]:
    return [m.id for m in run_checks() if m.id and m.id.startswith("hardened_sessions.")]


# --- the system checks ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_bad_cookie_name_is_e101(name: str) -> None:
    with override_settings(SESSION_COOKIE_NAME=BAD_NAMES[name]):
        assert "hardened_sessions.E101" in _ours()


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_cookie_name_is_no_e101(name: str) -> None:
    with override_settings(SESSION_COOKIE_NAME=name, SESSION_COOKIE_SECURE=True):
        assert "hardened_sessions.E101" not in _ours()


@pytest.mark.parametrize("path", list(BAD_PATHS))
def test_bad_cookie_path_is_e102(path: str) -> None:
    with override_settings(SESSION_COOKIE_PATH=BAD_PATHS[path]):
        assert "hardened_sessions.E102" in _ours()


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_good_cookie_path_is_no_e102(path: str) -> None:
    with override_settings(SESSION_COOKIE_PATH=path):
        assert "hardened_sessions.E102" not in _ours()


@pytest.mark.parametrize("domain", list(BAD_DOMAINS))
def test_bad_cookie_domain_is_e103(domain: str) -> None:
    with override_settings(SESSION_COOKIE_DOMAIN=BAD_DOMAINS[domain]):
        assert "hardened_sessions.E103" in _ours()


@pytest.mark.parametrize("domain", GOOD_DOMAINS)
def test_good_cookie_domain_is_no_e103(domain: str | None) -> None:
    with override_settings(SESSION_COOKIE_DOMAIN=domain):
        assert "hardened_sessions.E103" not in _ours()


@pytest.mark.parametrize("age", list(BAD_AGES))
def test_bad_cookie_age_is_e104(age: str) -> None:
    with override_settings(SESSION_COOKIE_AGE=BAD_AGES[age]):
        assert "hardened_sessions.E104" in _ours()


@pytest.mark.parametrize("age", GOOD_AGES)
def test_good_cookie_age_is_no_e104(age: int) -> None:
    with override_settings(SESSION_COOKIE_AGE=age):
        assert "hardened_sessions.E104" not in _ours()


def test_a_bad_name_does_not_crash_the_prefix_checks() -> None:
    # E004/E005 read the name as text; a name that is not text is E101, not a traceback.
    with override_settings(SESSION_COOKIE_NAME=None, SESSION_COOKIE_PATH=None):
        found = _ours()
    assert {"hardened_sessions.E101", "hardened_sessions.E102"} <= set(found)


def test_the_checks_name_the_setting_and_the_value() -> None:
    with override_settings(SESSION_COOKIE_PATH="/;Domain=evil.example"):
        (problem,) = [p for p in cookie_problems() if p.id == "hardened_sessions.E102"]
    assert "SESSION_COOKIE_PATH" in problem.msg
    assert "'/;Domain=evil.example'" in problem.msg


def test_django_emits_a_comma_in_the_path_verbatim() -> None:
    # Why E102 decides on "," itself: Django passes it through as it is.
    response = HttpResponse()
    response.set_cookie("sessionid", "v", path="/a,b")
    assert "Path=/a,b" in set_cookie_headers(response)[0]


# --- at run time ------------------------------------------------------------------------------

# One setting at a time that would inject or break an attribute, and what it would inject.
INJECTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "path-domain": ({"SESSION_COOKIE_PATH": "/;Domain=evil.example"}, "evil.example"),
    "path-crlf": ({"SESSION_COOKIE_PATH": "/\r\nX-Injected: 1"}, "X-Injected"),
    "domain-samesite": ({"SESSION_COOKIE_DOMAIN": "example.com; SameSite=None"}, "SameSite=None"),
    "name-crlf": ({"SESSION_COOKIE_NAME": "sid\r\nX-Injected: 1"}, "X-Injected"),
    "name-attribute": ({"SESSION_COOKIE_NAME": "sid;Domain=evil.example"}, "evil.example"),
    "samesite": ({"SESSION_COOKIE_SAMESITE": "Lax; Domain=evil.example"}, "evil.example"),
}
ENGINES = {
    "hardened-db": "hardened_sessions.backends.db",
    "hardened-cache": "hardened_sessions.backends.cache",
    "stock-signed-cookies": "django.contrib.sessions.backends.signed_cookies",
}


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    with override_settings(SESSION_ENGINE=ENGINES[request.param], ROOT_URLCONF=URLCONF):
        yield request.param


@pytest.mark.parametrize("injection", list(INJECTIONS))
def test_the_middleware_refuses_to_start(engine: str, injection: str) -> None:
    changes, _ = INJECTIONS[injection]
    silenced = ["hardened_sessions.E101", "hardened_sessions.E102", "hardened_sessions.E103"]
    with (
        override_settings(**changes, SILENCED_SYSTEM_CHECKS=[*silenced, "hardened_sessions.E006"]),
        pytest.raises(ImproperlyConfigured) as raised,
    ):
        Client().get("/set/", {"value": "1"})
    assert next(iter(changes)) in str(raised.value)


@pytest.mark.parametrize("injection", list(INJECTIONS))
def test_the_refusal_comes_when_the_middleware_is_built(engine: str, injection: str) -> None:
    # At start-up (the WSGI/ASGI application is built), not at the first response.
    changes, _ = INJECTIONS[injection]
    with override_settings(**changes), pytest.raises(ImproperlyConfigured):
        HardenedSessionMiddleware(lambda request: HttpResponse())


@pytest.mark.parametrize("injection", list(INJECTIONS))
@pytest.mark.parametrize("view", ["/set/", "/flush/"])
def test_no_response_carries_an_injected_attribute(engine: str, injection: str, view: str) -> None:
    """Settings changed under a running middleware: the responses that would set or
    delete the cookie fail (500) without any Set-Cookie header."""
    changes, marker = INJECTIONS[injection]
    client = Client(raise_request_exception=False)
    started = client.get("/set/", {"value": "1"})  # builds the middleware on good settings
    assert started.status_code == 200
    assert session_cookie(started) is not None

    with override_settings(**changes):
        response = client.get(view, {"value": "2"})

    emitted = [*(f"{h}: {v}" for h, v in response.items()), *set_cookie_headers(response)]
    assert not [line for line in emitted if marker in line], "an attribute was injected"
    assert set_cookie_headers(response) == []
    assert response.status_code == 500


def test_good_settings_are_emitted_as_configured(engine: str) -> None:
    with override_settings(
        SESSION_COOKIE_NAME="__Secure-sid",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=".testserver.example",
        SESSION_COOKIE_SECURE=True,
    ):
        response = Client().get("/set/", {"value": "1"})
    (header,) = set_cookie_headers(response)
    assert header.startswith("__Secure-sid=")
    attributes = [part.strip() for part in header.split(";")[1:]]
    assert "Path=/" in attributes
    assert "Domain=.testserver.example" in attributes
    assert "Secure" in attributes
