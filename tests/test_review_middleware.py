"""Review findings on ``HardenedSessionMiddleware`` and the cookie settings checks.

* ``FAILURE_VIEW`` may return a ``TemplateResponse`` (as views commonly do): an answer
  built in ``process_response`` is not rendered by Django's handler, so the middleware
  renders it; a failure view that raises (a broken template, a template that reads
  ``request.user`` while the store is down) still leaves the 400/503 answer, in its
  plain form, never a 500.
* A ``SESSION_COOKIE_NAME`` that is one of the cookie attribute names (``expires``,
  ``path``, ...) makes Python's cookie library raise on every response that sets the
  cookie: E101, refused at start-up like the other unusable names.
* ``SESSION_COOKIE_SAMESITE = None`` (Django's way to send no SameSite attribute before
  ``False``) is accepted, as Django accepts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.test import AsyncClient, Client, override_settings

from hardened_sessions.middleware import REASON_TOO_LARGE, HardenedSessionMiddleware
from tests.support.views_http import URLCONF, session_cookie, set_cookie_headers

pytestmark = pytest.mark.django_db(transaction=True)

HERE = __name__


def template_failure_view(request: HttpRequest, status: int, reason: str) -> TemplateResponse:
    template = engines["django"].from_string("failure page {{ status }}: {{ reason }}")
    return TemplateResponse(request, template, {"status": status, "reason": reason})


def raising_failure_view(request: HttpRequest, status: int, reason: str) -> HttpResponse:
    raise RuntimeError("the failure page is broken")


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF):
        yield


def _too_large(view: str, *, use_async: bool = False) -> Any:
    with override_settings(HARDENED_SESSIONS={"MAX_BYTES": 1024, "FAILURE_VIEW": f"{HERE}.{view}"}):
        if use_async:
            from asgiref.sync import async_to_sync

            return async_to_sync(AsyncClient().get)("/set/", {"size": 2000})
        return Client().get("/set/", {"size": 2000})


@pytest.mark.parametrize("use_async", [False, True], ids=["wsgi", "asgi"])
def test_a_failure_view_may_answer_with_a_template_response(use_async: bool) -> None:
    response = _too_large("template_failure_view", use_async=use_async)

    assert response.status_code == 400
    assert response.content.decode() == f"failure page 400: {REASON_TOO_LARGE}"
    assert session_cookie(response) is None


@pytest.mark.parametrize("use_async", [False, True], ids=["wsgi", "asgi"])
def test_a_failure_view_that_raises_leaves_the_plain_answer(
    use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="hardened_sessions"):
        response = _too_large("raising_failure_view", use_async=use_async)

    assert response.status_code == 400
    assert response.content.decode() == REASON_TOO_LARGE
    assert session_cookie(response) is None
    assert any("FAILURE_VIEW" in r.getMessage() for r in caplog.records)


RESERVED_NAMES = ["expires", "Path", "DOMAIN", "max-age", "secure", "httponly", "samesite"]


def _ours() -> list[str]:
    return [m.id for m in run_checks() if m.id and m.id.startswith("hardened_sessions.")]


@pytest.mark.parametrize("name", RESERVED_NAMES)
def test_a_cookie_attribute_as_the_cookie_name_is_e101(name: str) -> None:
    with override_settings(SESSION_COOKIE_NAME=name):
        assert "hardened_sessions.E101" in _ours()
        with pytest.raises(ImproperlyConfigured):
            HardenedSessionMiddleware(lambda request: HttpResponse())


@pytest.mark.parametrize(
    "engine",
    ["hardened_sessions.backends.db", "django.contrib.sessions.backends.signed_cookies"],
)
def test_samesite_none_sends_no_samesite_attribute_as_django_does(engine: str) -> None:
    with override_settings(SESSION_COOKIE_SAMESITE=None, SESSION_ENGINE=engine):
        assert "hardened_sessions.E006" not in _ours()
        response = Client().get("/set/", {"value": "1"})
    assert response.status_code == 200
    (header,) = set_cookie_headers(response)
    assert "samesite" not in header.lower()
