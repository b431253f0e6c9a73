"""``HardenedSessionMiddleware`` over an engine that is not hardened.

A project may keep Django's own engines (``signed_cookies``, ``file``, the stock
``cache``) or one of its own built on ``SessionBase`` while it installs the middleware,
for instance half-way through adopting the package. Over such an engine the middleware
answers exactly as Django's ``SessionMiddleware`` does: same status, same
``Set-Cookie`` attributes, same ``Vary`` and ``Cache-Control``, request after request.
(It used to ask every session for the hardened engines' ``cookie_max_age()``: each
response that saved a session was a 500.) The system check ``hardened_sessions.W201``
says that such an engine gets none of the hardening.

The stock ``db`` engine needs ``django.contrib.sessions`` in ``INSTALLED_APPS`` (its
model), which the test settings leave out on purpose; it goes through the same code
path as the other stock engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.checks import run_checks
from django.http import HttpResponseBase
from django.test import AsyncClient, Client, override_settings

from hardened_sessions.middleware import HardenedSessionMiddleware, current_session
from tests.support import engine_custom_stock
from tests.support.views_http import URLCONF, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

HARDENED_MIDDLEWARE = "hardened_sessions.middleware.HardenedSessionMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"

STOCK_ENGINES = {
    "signed_cookies": "django.contrib.sessions.backends.signed_cookies",
    "file": "django.contrib.sessions.backends.file",
    "cache": "django.contrib.sessions.backends.cache",
    "custom": "tests.support.engine_custom_stock",
}

# One visit: what each request does to the session is in the view's name.
VISIT: list[tuple[str, dict[str, str]]] = [
    ("/untouched/", {}),
    ("/read/", {}),
    ("/set/", {"value": "1"}),
    ("/read/", {}),
    ("/untouched/", {}),
    ("/set/", {"value": "2"}),
    ("/cache-control/", {"cc": "public, max-age=60"}),
    ("/set-then-500/", {}),
    ("/whoami/", {}),
    ("/flush/", {}),
    ("/read/", {}),
    ("/set/", {"value": "3"}),
]

# Settings under which the comparison is repeated.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "save-every-request": {"SESSION_SAVE_EVERY_REQUEST": True},
    "browser-close": {"SESSION_EXPIRE_AT_BROWSER_CLOSE": True},
    "samesite-none-not-secure": {"SESSION_COOKIE_SAMESITE": "None"},
    "not-httponly-secure-domain-path": {
        "SESSION_COOKIE_HTTPONLY": False,
        "SESSION_COOKIE_SECURE": True,
        "SESSION_COOKIE_DOMAIN": ".example.com",
        "SESSION_COOKIE_PATH": "/",
        "SESSION_COOKIE_NAME": "sid",
    },
    "device-metadata-and-timeouts": {
        "HARDENED_SESSIONS": {"DEVICE_METADATA": True, "IDLE_TIMEOUT": 600, "ABSOLUTE_TIMEOUT": 60}
    },
}


@pytest.fixture(params=list(STOCK_ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each engine that is not hardened, with what it needs to run."""
    engine_custom_stock.records.clear()
    engine_custom_stock.calls.clear()
    with override_settings(
        SESSION_ENGINE=STOCK_ENGINES[request.param],
        SESSION_FILE_PATH=str(tmp_path),
        ROOT_URLCONF=URLCONF,
    ):
        yield request.param
    assert engine_custom_stock.calls == [], "the middleware called the hardened hooks"


def _middleware(session_middleware: str) -> list[str]:
    rest = [m for m in settings.MIDDLEWARE if m != HARDENED_MIDDLEWARE]
    return [session_middleware, *rest]


def _describe(response: HttpResponseBase) -> dict[str, Any]:
    """What a response says about the session, minus what differs between two runs
    (the session key, the exact ``expires`` second)."""
    cookies = {}
    for name, morsel in response.cookies.items():
        attributes = {k: v for k, v in morsel.items() if v != "" and k != "expires"}
        cookies[name] = {
            "value": "(empty)" if morsel.value == "" else "(set)",
            "expires": "(set)" if morsel["expires"] else "",
            **attributes,
        }
    return {
        "status": response.status_code,
        "cookies": cookies,
        "vary": response.get("Vary"),
        "cache-control": response.get("Cache-Control"),
        "content": response.content if response.status_code != 200 else b"(ok)",
    }


def _visit(session_middleware: str) -> list[dict[str, Any]]:
    with override_settings(MIDDLEWARE=_middleware(session_middleware)):
        client = Client()
        return [_describe(client.get(path, query)) for path, query in VISIT]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_responses_equal_djangos_session_middleware(engine: str, variant: str) -> None:
    with override_settings(**VARIANTS[variant]):
        django = _visit(DJANGO_MIDDLEWARE)
        ours = _visit(HARDENED_MIDDLEWARE)

    # The visit did exercise the cookie: it was set, then deleted.
    assert any(d["cookies"] for d in django)
    for step, (theirs, mine) in enumerate(zip(django, ours, strict=True)):
        assert mine == theirs, f"request {step} ({VISIT[step][0]}) differs"


def test_a_session_survives_from_request_to_request(engine: str) -> None:
    with override_settings(MIDDLEWARE=_middleware(HARDENED_MIDDLEWARE)):
        client = Client()
        created = client.get("/set/", {"value": "kept"})
        read = client.get("/read/")

    assert created.status_code == 200
    assert session_cookie(created) is not None
    assert read.content == b'"kept"'


def test_async_responses_equal_djangos_session_middleware(engine: str) -> None:
    @async_to_sync
    async def visit(session_middleware: str) -> list[dict[str, Any]]:
        with override_settings(MIDDLEWARE=_middleware(session_middleware)):
            client = AsyncClient()
            return [_describe(await client.get(path, query)) for path, query in VISIT]

    assert visit(HARDENED_MIDDLEWARE) == visit(DJANGO_MIDDLEWARE)


def test_the_request_is_not_left_as_the_current_session(engine: str) -> None:
    with override_settings(MIDDLEWARE=_middleware(HARDENED_MIDDLEWARE)):
        Client().get("/set/", {"value": "1"})
    assert current_session.get() is None


# --- the system check --------------------------------------------------------------------


def _ours() -> list[str]:
    return [m.id for m in run_checks() if m.id and m.id.startswith("hardened_sessions.")]


@pytest.mark.parametrize("name", list(STOCK_ENGINES))
def test_hardened_middleware_over_another_engine_is_w201(name: str) -> None:
    with override_settings(SESSION_ENGINE=STOCK_ENGINES[name]):
        found = _ours()
    assert "hardened_sessions.W201" in found
    assert "hardened_sessions.W001" not in found


@pytest.mark.parametrize(
    "engine_path",
    [
        "hardened_sessions.backends.db",
        "hardened_sessions.backends.cache",
        "hardened_sessions.backends.cached_db",
        "tests.support.engine_custom_hardened",  # a project's subclass of a hardened engine
    ],
)
def test_hardened_middleware_over_a_hardened_engine_is_no_w201(engine_path: str) -> None:
    with override_settings(SESSION_ENGINE=engine_path):
        assert "hardened_sessions.W201" not in _ours()


def test_djangos_middleware_over_another_engine_is_no_w201() -> None:
    with override_settings(
        SESSION_ENGINE=STOCK_ENGINES["signed_cookies"],
        MIDDLEWARE=_middleware(DJANGO_MIDDLEWARE),
    ):
        assert "hardened_sessions.W201" not in _ours()


class ProjectSessionMiddleware(HardenedSessionMiddleware):
    """A project's own subclass of the middleware."""


def test_a_subclass_of_the_middleware_over_another_engine_is_w201() -> None:
    with override_settings(
        SESSION_ENGINE=STOCK_ENGINES["file"],
        MIDDLEWARE=_middleware(f"{__name__}.ProjectSessionMiddleware"),
    ):
        assert "hardened_sessions.W201" in _ours()


def test_an_engine_that_cannot_be_imported_is_e200() -> None:
    with override_settings(SESSION_ENGINE="myproject.no_such_engine"):
        found = _ours()
    assert "hardened_sessions.E200" in found
    assert "hardened_sessions.W201" not in found
