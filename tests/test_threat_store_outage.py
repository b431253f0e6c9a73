"""The store fails, or refuses what it is given: the answer is a clear 400 or 503, never
a half-written session or a cookie for a key that was not stored.

docs/design.rst, "What the engines do": store unreachable (503 with ``Retry-After``, cookie left as it
was, one store attempt per request, whoever turned the failure into a response);
``SessionTooLarge`` (400, logged, nothing written); ``SessionKeyUnavailable`` (503);
a save into a session ended meanwhile (400, or only an expired cookie when the
request merely recorded activity); ``FAILURE_VIEW``; a malformed cookie (no store
access at all).

The outage is real: the PostgreSQL test database is reached through a TCP proxy
(``tests.support.faults``) that the tests cut and restore.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections, connections
from django.http import HttpResponse, HttpResponseBase
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from hardened_sessions.backends.db import SessionStore
from tests.support import views_http
from tests.support.faults import PROXY_ALIAS, FaultProxy, sessions_through_proxy
from tests.support.views_http import (
    AUTH_MIDDLEWARE,
    SESSION_MIDDLEWARE,
    URLCONF,
    assert_cookie_expired,
    cache_control,
    row_count,
    session_cookie,
    session_row,
    set_cookie_headers,
    varies_on_cookie,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

PASSWORD = "correct horse battery staple"
COOKIE = settings.SESSION_COOKIE_NAME
FAILURE_VIEW = "tests.support.views_http.failure_view"


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    views_http.observed.clear()
    with override_settings(ROOT_URLCONF=URLCONF):
        yield


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with sessions_through_proxy() as proxy:
        yield proxy


def _logged_in(client: Client) -> str:
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    morsel = session_cookie(response)
    assert morsel is not None
    return morsel.value


def _new_session(client: Client, value: str) -> str:
    response = client.get("/set/", {"value": value})
    assert response.status_code == 200
    morsel = session_cookie(response)
    assert morsel is not None
    return morsel.value


def _assert_unavailable(response: HttpResponseBase) -> None:
    """503 with Retry-After, and the cookie left exactly as it was (no Set-Cookie)."""
    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert session_cookie(response) is None
    assert set_cookie_headers(response) == []


def _restore(proxy: FaultProxy) -> None:
    """Bring the store back, and drop the connection the outage broke.

    A server does the latter at every request boundary (``close_old_connections`` on
    ``request_started``/``request_finished``); the test client skips it, and the
    tests read the stored rows through that same connection.
    """
    proxy.restore()
    close_old_connections()


def _failing_urandom(n: int) -> bytes:
    raise OSError("the random source failed")


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Callable[[bytes], object]:
    return lambda data: None


def _wsgi_get(path: str, session_key: str) -> HttpResponse:
    """A request through Django's WSGI handler, the way a server runs it.

    Unlike the test client, the handler sends ``request_started``/``request_finished``
    with ``close_old_connections`` connected, as in production.
    """
    factory = RequestFactory()
    factory.cookies[COOKIE] = session_key
    environ = factory.get(path).environ
    response = WSGIHandler()(environ, _start_response)
    assert isinstance(response, HttpResponse)
    try:
        b"".join(response)
    finally:
        response.close()
    return response


# --- the store goes away ----------------------------------------------------------------


@pytest.mark.postgresql
def test_a_view_reading_the_session_answers_503_and_keeps_the_cookie(
    proxy: FaultProxy, alice: Any
) -> None:
    client = Client()
    key = _logged_in(client)
    before = session_row(key, PROXY_ALIAS)
    assert before is not None

    proxy.cut()
    response = client.get("/whoami/")
    _restore(proxy)

    _assert_unavailable(response)
    after = session_row(key, PROXY_ALIAS)
    assert after is not None and after.version == before.version


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("middleware", "path"),
    [
        (
            [SESSION_MIDDLEWARE, "tests.support.views_http.SwallowingReaderMiddleware"],
            "/untouched/",
        ),
        (
            [
                SESSION_MIDDLEWARE,
                AUTH_MIDDLEWARE,
                "tests.support.views_http.SwallowingExceptionMiddleware",
            ],
            "/whoami/",
        ),
        ([SESSION_MIDDLEWARE, AUTH_MIDDLEWARE], "/read-and-swallow/"),
        ([SESSION_MIDDLEWARE, "tests.support.views_http.SessionReadingMiddleware"], "/untouched/"),
    ],
    ids=[
        "middleware-reads-and-catches",
        "middleware-process-exception",
        "view-catches",
        "djangos-500-for-a-middleware-exception",
    ],
)
def test_a_failure_turned_into_a_200_elsewhere_still_answers_503(
    proxy: FaultProxy, middleware: list[str], path: str
) -> None:
    with override_settings(MIDDLEWARE=middleware):
        # A server never re-raises; only the test client would, by default.
        client = Client(raise_request_exception=False)
        _new_session(client, "1")
        healthy = client.get(path)
        proxy.cut()
        response = client.get(path)
        _restore(proxy)

    assert healthy.status_code == 200
    _assert_unavailable(response)


@pytest.mark.postgresql
def test_one_store_attempt_per_request(proxy: FaultProxy, alice: Any) -> None:
    client = Client()
    _logged_in(client)
    connections[PROXY_ALIAS].close()  # the next store access has to connect
    proxy.cut()
    proxy.attempts = 0

    response = client.get("/read-user-five-times/")
    _restore(proxy)

    _assert_unavailable(response)
    assert views_http.observed["failures"] == 5
    assert proxy.attempts == 1


@pytest.mark.postgresql
def test_a_failed_save_of_a_new_session_answers_503_without_a_cookie(proxy: FaultProxy) -> None:
    proxy.cut()
    response = Client().get("/set/", {"value": "never stored"})
    _restore(proxy)

    _assert_unavailable(response)
    assert row_count(PROXY_ALIAS) == 0


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("hardened", "query"),
    [({}, {"write": "1"}), ({"IDLE_TIMEOUT": 600}, {})],
    ids=["save-of-changed-data", "activity-touch"],
)
def test_a_save_failing_mid_request_answers_503_and_the_record_is_intact(
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    hardened: dict[str, int],
    query: dict[str, str],
) -> None:
    with override_settings(HARDENED_SESSIONS=hardened):
        client = Client()
        key = _new_session(client, "before")
        before = session_row(key, PROXY_ALIAS)
        # The session loads, then the server goes away before the middleware writes.
        monkeypatch.setattr(views_http, "during_view", proxy.cut)

        response = client.get("/read-act-write/", query)
        _restore(proxy)

    _assert_unavailable(response)
    after = session_row(key, PROXY_ALIAS)
    assert after is not None and before is not None
    assert after.version == before.version
    assert bytes(after.data) == bytes(before.data)


@pytest.mark.postgresql
@pytest.mark.parametrize("conn_max_age", [0, None], ids=["connection-per-request", "persistent"])
def test_service_recovers_when_the_store_comes_back(conn_max_age: int | None) -> None:
    with sessions_through_proxy(conn_max_age=conn_max_age) as proxy:
        key = _new_session(Client(), "kept")
        assert _wsgi_get("/read/", key).status_code == 200

        proxy.cut()
        down = [_wsgi_get("/read/", key) for _ in range(2)]
        proxy.restore()  # nothing else: no restart, no reconnect by hand
        up = _wsgi_get("/read/", key)

    for response in down:
        _assert_unavailable(response)
    assert up.status_code == 200
    assert json.loads(up.content) == "kept"
    assert session_cookie(up) is None


# --- the store refuses: too large ---------------------------------------------------------


def _too_large_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "django.security.SessionTooLarge"]


@pytest.mark.parametrize("path", ["/set/", "/save-explicitly/"], ids=["at-save", "in-the-view"])
@override_settings(HARDENED_SESSIONS={"MAX_BYTES": 1024})
def test_a_session_over_max_bytes_answers_400_and_writes_nothing(
    db_alias: str, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    client = Client()
    key = _new_session(client, "small")
    before = session_row(key, db_alias)

    with caplog.at_level(logging.WARNING, logger="django.security.SessionTooLarge"):
        response = client.get(path, {"key": "blob", "size": "2000"})
        fresh = Client().get(path, {"key": "blob", "size": "2000"})

    assert response.status_code == 400
    assert fresh.status_code == 400
    assert session_cookie(response) is None
    assert session_cookie(fresh) is None
    assert len(_too_large_records(caplog)) >= 2
    assert key not in caplog.text
    after = session_row(key, db_alias)
    assert after is not None and before is not None
    assert after.version == before.version
    assert bytes(after.data) == bytes(before.data)
    assert SessionStore(key).load() == {"n": "small"}
    assert row_count(db_alias) == 1


# --- no key can be drawn -----------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError, NotImplementedError])
def test_a_failing_random_source_answers_503(
    db_alias: str, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    def failing_urandom(n: int) -> bytes:
        raise error("the random source failed")

    with monkeypatch.context() as patch:
        patch.setattr(random, "_urandom", failing_urandom)
        response = Client().get("/set/", {"value": "1"})

    _assert_unavailable(response)
    assert row_count(db_alias) == 0


# --- the session ended during the request -------------------------------------------------


def _revoke_during_the_view(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Another request (a logout elsewhere, an admin revoke) ends the session mid-view."""
    monkeypatch.setattr(views_http, "during_view", lambda: SessionStore(key).delete())


def test_a_save_of_changed_data_into_an_ended_session_answers_400(
    db_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client()
    key = _new_session(client, "before")
    _revoke_during_the_view(monkeypatch, key)

    response = client.get("/read-act-write/", {"write": "1"})

    assert response.status_code == 400
    morsel = session_cookie(response)
    assert morsel is None or morsel.value == ""  # never a key for the changed data
    assert session_row(key, db_alias) is None  # not resurrected
    assert row_count(db_alias) == 0


@override_settings(HARDENED_SESSIONS={"IDLE_TIMEOUT": 600})
def test_an_activity_touch_of_an_ended_session_only_expires_the_cookie(
    db_alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client()
    key = _new_session(client, "before")
    _revoke_during_the_view(monkeypatch, key)

    response = client.get("/read-act-write/")

    assert response.status_code == 200
    assert json.loads(response.content) == "before"
    assert_cookie_expired(response)
    assert "private" in cache_control(response)
    assert varies_on_cookie(response)
    assert row_count(db_alias) == 0


# --- FAILURE_VIEW ------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["too large", "no key"])
@override_settings(HARDENED_SESSIONS={"MAX_BYTES": 1024, "FAILURE_VIEW": FAILURE_VIEW})
def test_failure_view_renders_the_400_and_503_answers(
    db_alias: str, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    with monkeypatch.context() as patch:
        if failure == "too large":
            response = Client().get("/set/", {"size": 2000})
            status = 400
        else:
            patch.setattr(random, "_urandom", _failing_urandom)
            response = Client().get("/set/", {"value": "1"})
            status = 503

    assert response.status_code == status  # forced, whatever the view answered
    assert response.content.decode().startswith(f"custom failure page: {status}: ")
    if status == 503:
        assert int(response["Retry-After"]) > 0
    assert session_cookie(response) is None


@pytest.mark.postgresql
@override_settings(HARDENED_SESSIONS={"FAILURE_VIEW": FAILURE_VIEW})
def test_failure_view_renders_the_store_outage(proxy: FaultProxy) -> None:
    client = Client()
    _new_session(client, "1")

    proxy.cut()
    response = client.get("/read/")
    _restore(proxy)

    _assert_unavailable(response)
    assert response.content.decode().startswith("custom failure page: 503: ")


def _get_counting_queries(client: Client, path: str, alias: str) -> tuple[HttpResponse, list[str]]:
    """GET ``path``; the SQL run on ``alias`` during it.

    Copied out at once: the next request's ``request_started`` empties the log.
    """
    with CaptureQueriesContext(connections[alias]) as queries:
        response = client.get(path)
    assert isinstance(response, HttpResponse)
    return response, [query["sql"] for query in queries.captured_queries]


# --- a cookie that is not a key ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "short",
        "abcdefgh12345678",  # long enough for Django's own rule, not a key of ours
        "A" * 32,
        "a" * 31 + "-",
        "a" * 33,
        "a" * 64,
    ],
    ids=["short", "16-chars", "uppercase", "dash", "33-chars", "64-chars"],
)
def test_a_malformed_cookie_causes_no_store_access(db_alias: str, value: str) -> None:
    client = Client()
    client.cookies[COOKIE] = value

    read, read_queries = _get_counting_queries(client, "/read/", db_alias)
    client.cookies[COOKIE] = value
    who, who_queries = _get_counting_queries(client, "/whoami/", db_alias)

    assert read.status_code == 200 and json.loads(read.content) is None
    assert json.loads(who.content)["authenticated"] is False
    assert read_queries == []
    assert who_queries == []


def test_a_well_formed_unknown_key_is_looked_up_once_and_never_created(db_alias: str) -> None:
    unknown = "unknown" + "0" * 25
    client = Client()
    client.cookies[COOKIE] = unknown

    read, queries = _get_counting_queries(client, "/read/", db_alias)
    client.cookies[COOKIE] = unknown
    written = client.get("/set/", {"value": "1"})

    assert read.status_code == 200 and json.loads(read.content) is None
    assert len(queries) == 1
    assert queries[0].lower().startswith("select")
    new = session_cookie(written)
    assert new is not None and new.value != unknown
    assert session_row(unknown, db_alias) is None
