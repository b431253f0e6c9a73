"""The middleware's HTTP promises under ASGI on the cache engine's native async path.

``test_http_cookie_asgi`` and ``test_threat_store_outage_asgi`` rerun the HTTP suites
under ASGI on the db engine, whose async methods hop to a thread. Here async views on the
cache engine (LocMemCache, Redis, memcached), where ``aget``/``aset``/``asave``/
``aflush``/``acycle_key`` and the middleware's save run on the event loop: a key is sent
only once stored, a store failure is a 503 with ``Retry-After`` and no new cookie, a
logout that cannot reach the store is a 503 while the session still loads (never a
success), and a rotation leaves only the new key live.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from hardened_sessions.exceptions import SessionStoreUnavailable
from hardened_sessions.stores import async_store_for_cache
from tests.support.asgi_client import ASGIClient
from tests.support.servers import variant_cache
from tests.support.views_http import assert_cookie_expired, session_cookie, varies_on_cookie

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE = "hardened_sessions.backends.cache"
VARIANTS = ["locmem", "django-redis", "pymemcache"]


async def set_value(request: HttpRequest) -> HttpResponse:
    await request.session.aset("n", request.GET["value"])  # type: ignore[attr-defined]
    return HttpResponse("set")


async def read_value(request: HttpRequest) -> HttpResponse:
    return HttpResponse(json.dumps(await request.session.aget("n")))  # type: ignore[attr-defined]


async def logout(request: HttpRequest) -> HttpResponse:
    await request.session.aflush()  # type: ignore[attr-defined]
    return HttpResponse("flushed")


async def rotate(request: HttpRequest) -> HttpResponse:
    await request.session.acycle_key()  # type: ignore[attr-defined]
    return HttpResponse("rotated")


urlpatterns = [
    path("set/", set_value),
    path("read/", read_value),
    path("logout/", logout),
    path("rotate/", rotate),
]


@pytest.fixture(params=VARIANTS)
def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    with (
        variant_cache(request.param, request) as alias,
        override_settings(SESSION_ENGINE=ENGINE, SESSION_CACHE_ALIAS=alias, ROOT_URLCONF=__name__),
    ):
        store_class = import_module(ENGINE).SessionStore
        assert store_class().native_async
        yield store_class


def failing(*args: Any, **kwargs: Any) -> Any:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise SessionStoreUnavailable("the session store is down")

    return fail


def new_session(client: ASGIClient, value: str = "1") -> str:
    response = client.get("/set/", {"value": value})
    assert response.status_code == 200
    morsel = session_cookie(response)
    assert morsel is not None
    return morsel.value


def test_a_key_is_sent_once_stored_and_reads_back(engine: Any) -> None:
    client = ASGIClient()
    response = client.get("/set/", {"value": "7"})
    assert response.status_code == 200
    morsel = session_cookie(response)
    assert morsel is not None and len(morsel.value) == 32
    assert morsel["httponly"] is True and morsel["samesite"] == "Lax"
    assert varies_on_cookie(response)
    assert engine(morsel.value).load() == {"n": "7"}
    assert client.get("/read/").content == b'"7"'


def test_a_store_failure_at_save_is_a_503_without_a_cookie(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = async_store_for_cache(settings.SESSION_CACHE_ALIAS)
    monkeypatch.setattr(store, "add", failing())
    response = ASGIClient(raise_request_exception=False).get("/set/", {"value": "1"})
    assert response.status_code == 503
    assert response.has_header("Retry-After")
    assert session_cookie(response) is None


def test_a_logout_that_cannot_reach_the_store_is_a_503_and_nothing_ended(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ASGIClient(raise_request_exception=False)
    key = new_session(client)
    store = async_store_for_cache(settings.SESSION_CACHE_ALIAS)
    monkeypatch.setattr(store, "delete", failing())
    response = client.get("/logout/")
    assert response.status_code == 503
    assert engine(key).load() == {"n": "1"}  # not reported ended: it still loads
    monkeypatch.undo()
    response = client.get("/logout/")
    assert response.status_code == 200
    assert_cookie_expired(response)
    assert not engine().exists(key)


def test_a_rotation_leaves_only_the_new_key_live(engine: Any) -> None:
    client = ASGIClient()
    old = new_session(client, "5")
    response = client.get("/rotate/")
    assert response.status_code == 200
    morsel = session_cookie(response)
    assert morsel is not None and morsel.value != old
    assert engine(morsel.value).load() == {"n": "5"}
    assert not engine().exists(old)


def test_a_rotation_whose_old_record_cannot_be_deleted_fails_closed(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ASGIClient(raise_request_exception=False)
    old = new_session(client, "5")
    store = async_store_for_cache(settings.SESSION_CACHE_ALIAS)
    monkeypatch.setattr(store, "delete", failing())
    response = client.get("/rotate/")
    assert response.status_code == 503
    assert_cookie_expired(response)  # no new key handed out; the browser forgets the old
    assert engine(old).load() == {"n": "5"}  # not reported ended: the old record stays
