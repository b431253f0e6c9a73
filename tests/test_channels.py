"""Django Channels: sessions in consumers, and connections closed when their session ends.

docs/channels.rst: under Channels' ``AuthMiddlewareStack`` a consumer reads
``scope["session"]`` and ``scope["user"]`` from a hardened engine, as set by an HTTP
login. With ``hardened_sessions.channels.SessionChannelsConfig`` installed, a consumer
using ``SessionBoundConsumerMixin`` is closed with ``CLOSE_CODE`` when its session is
revoked (``revoke_user_sessions``, logout), rotated away (``cycle_key``) or reaches
its idle or absolute deadline; the connections of other sessions stay open.

A real channel layer (channels-redis's ``RedisChannelLayer``) on the suite's Redis,
with a prefix of its own per run; ``WebsocketCommunicator`` opens the connections.
Engines: db (SQLite) and the cache engine on Redis (django-redis).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

import hardened_sessions
from hardened_sessions import keys
from hardened_sessions.backends.core import hash_prefix
from hardened_sessions.channels import (
    CLOSE_CODE,
    connect_receivers,
    disconnect_receivers,
    group_name,
)
from hardened_sessions.signals import session_expired, session_revoked, session_rotated
from tests.support import channels_site
from tests.support.servers import RUN_TOKEN, Server, variant_cache

pytestmark = pytest.mark.django_db(transaction=True)

COOKIE = settings.SESSION_COOKIE_NAME
PASSWORD = "correct horse battery staple"
ENGINES = ["db", "django-redis"]
QUIET = 0.3  # how long "stays open" is watched, in seconds


@pytest.fixture(params=ENGINES, ids=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    with override_settings(ROOT_URLCONF=channels_site.URLCONF):
        if request.param == "db":
            with override_settings(SESSION_ENGINE="hardened_sessions.backends.db"):
                yield "db"
            return
        with (
            variant_cache(request.param, request),
            override_settings(SESSION_ENGINE="hardened_sessions.backends.cache"),
        ):
            yield request.param


@pytest.fixture
def channel_layer(redis_server: Server) -> Iterator[None]:
    prefix = f"hs{RUN_TOKEN}-ch-{secrets.token_hex(4)}"
    config = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_server.url], "prefix": prefix},
        }
    }
    with override_settings(CHANNEL_LAYERS=config):
        yield
        async_to_sync(get_channel_layer().flush)()


@pytest.fixture
def integration(channel_layer: None) -> Iterator[None]:
    connect_receivers()
    try:
        yield
    finally:
        disconnect_receivers()


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


# --- helpers ---------------------------------------------------------------------------


def _login(client: Client, username: str) -> str:
    response = client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    return client.cookies[COOKIE].value


def _remember(client: Client, color: str) -> str:
    assert client.get("/remember/", {"color": color}).status_code == 200
    return client.cookies[COOKIE].value


class Socket:
    def __init__(self, communicator: WebsocketCommunicator, hello: dict[str, Any]) -> None:
        self.communicator = communicator
        self.hello = hello

    async def closed_with(self, timeout: float = 3.0) -> int | None:
        message = await self.communicator.receive_output(timeout)
        assert message["type"] == "websocket.close", message
        code: int | None = message.get("code")
        return code

    async def still_open(self) -> None:
        assert await self.communicator.receive_nothing(QUIET)
        await self.communicator.send_json_to({"ping": 1})
        assert await self.communicator.receive_json_from(timeout=3) == {"ping": 1}

    async def close(self) -> None:
        await self.communicator.disconnect()


async def _open(session_key: str | None, route: str = "ws/bound/") -> Socket:
    headers = [(b"cookie", f"{COOKIE}={session_key}".encode())] if session_key else []
    communicator = WebsocketCommunicator(channels_site.application(), route, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    hello = await communicator.receive_json_from(timeout=5)
    return Socket(communicator, hello)


async def _deadline(session_key: str) -> int:
    """The stored session's earliest deadline (seconds since the epoch)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    await store.aload()
    deadline: int = store.record.deadline
    return deadline


def _run(test: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(test)()


# --- sessions in consumers -------------------------------------------------------------


def test_a_consumer_reads_the_session_and_user_of_an_http_login(
    engine: str, channel_layer: None, alice: Any
) -> None:
    client = Client()
    _remember(client, "blue")
    key = _login(client, "alice")

    async def scenario() -> None:
        for route in ("ws/echo/", "ws/bound/"):
            socket = await _open(key, route)
            assert socket.hello == {"color": "blue", "user": "alice"}
            await socket.still_open()
            await socket.close()
        anonymous = await _open(None, "ws/echo/")
        assert anonymous.hello == {"color": None, "user": None}
        await anonymous.close()

    _run(scenario)


# --- connections closed when their session ends ---------------------------------------


def test_revoke_user_sessions_closes_the_sockets_of_the_ended_sessions(
    engine: str, integration: None, alice: Any, bob: Any
) -> None:
    kept_client, other_client, bobs_client = Client(), Client(), Client()
    kept, other = _login(kept_client, "alice"), _login(other_client, "alice")
    bobs = _login(bobs_client, "bob")

    async def scenario() -> None:
        kept_socket, other_socket = await _open(kept), await _open(other)
        bobs_socket = await _open(bobs)
        assert other_socket.hello["user"] == "alice"

        ended = await sync_to_async(hardened_sessions.revoke_user_sessions)(alice, keep=kept)

        assert ended == 1
        assert await other_socket.closed_with() == CLOSE_CODE
        await kept_socket.still_open()
        await bobs_socket.still_open()
        await kept_socket.close()
        await bobs_socket.close()

    _run(scenario)


def test_arevoke_user_sessions_closes_the_sockets_too(
    engine: str, integration: None, alice: Any
) -> None:
    keys_ = [_login(Client(), "alice") for _ in range(2)]

    async def scenario() -> None:
        sockets = [await _open(key) for key in keys_]

        assert await hardened_sessions.arevoke_user_sessions(alice) == 2

        for socket in sockets:
            assert await socket.closed_with() == CLOSE_CODE

    _run(scenario)


def test_logout_closes_the_socket_of_that_session_only(
    engine: str, integration: None, alice: Any
) -> None:
    leaving, staying = Client(), Client()
    leaving_key, staying_key = _login(leaving, "alice"), _login(staying, "alice")

    async def scenario() -> None:
        leaving_socket, staying_socket = await _open(leaving_key), await _open(staying_key)

        response = await sync_to_async(leaving.post)("/accounts/logout/")

        assert response.status_code in (200, 302)
        assert await leaving_socket.closed_with() == CLOSE_CODE
        await staying_socket.still_open()
        await staying_socket.close()

    _run(scenario)


def test_rotation_closes_the_socket_bound_to_the_old_key(
    engine: str, integration: None, alice: Any
) -> None:
    client = Client()
    old_key = _remember(client, "green")

    async def scenario() -> None:
        old_socket = await _open(old_key)
        assert old_socket.hello == {"color": "green", "user": None}

        await sync_to_async(client.get)("/rotate/")
        new_key = client.cookies[COOKIE].value

        assert new_key != old_key
        assert await old_socket.closed_with() == CLOSE_CODE
        new_socket = await _open(new_key)
        assert new_socket.hello == {"color": "green", "user": None}
        await new_socket.still_open()
        # A login rotates the key too: the connection opened before it is closed.
        await sync_to_async(_login)(client, "alice")
        assert await new_socket.closed_with() == CLOSE_CODE

    _run(scenario)


@pytest.mark.parametrize("timeout", ["ABSOLUTE_TIMEOUT", "IDLE_TIMEOUT"])
def test_the_socket_closes_when_the_session_reaches_its_deadline(
    engine: str, integration: None, alice: Any, timeout: str
) -> None:
    # Deadlines are whole seconds: 3 s leaves at least 2 s between the login and the lapse.
    with override_settings(HARDENED_SESSIONS={timeout: 3}):
        lapsing = _login(Client(), "alice")

        async def scenario() -> None:
            socket = await _open(lapsing)
            started = time.monotonic()
            assert socket.hello["user"] == "alice"
            await socket.still_open()

            assert await socket.closed_with(timeout=6) == CLOSE_CODE

            assert 0.5 < time.monotonic() - started < 5.5
            # A later session of the same user is not touched by the first one's lapse.
            fresh = await _open(await sync_to_async(_login)(Client(), "alice"))
            await fresh.still_open()
            await fresh.close()

        _run(scenario)


def test_activity_over_http_moves_the_idle_deadline_and_keeps_the_socket_open(
    integration: None, alice: Any
) -> None:
    """The timer re-reads the record when it fires: a save over HTTP in between moved
    the idle deadline on, so the timer re-arms, and closes at the new deadline."""
    client = Client()
    with override_settings(
        ROOT_URLCONF=channels_site.URLCONF,
        SESSION_ENGINE="hardened_sessions.backends.db",
        HARDENED_SESSIONS={"IDLE_TIMEOUT": 3},
    ):
        key = _login(client, "alice")

        async def scenario() -> None:
            socket = await _open(key)
            first = await _deadline(key)
            await asyncio.sleep(1.1)  # past a second boundary: the save moves the deadline
            await sync_to_async(_remember)(client, "red")
            assert client.cookies[COOKIE].value == key
            moved = await _deadline(key)
            assert moved > first

            # The first deadline passes: the timer fires, reads the moved one, re-arms.
            assert await socket.communicator.receive_nothing(first + 0.4 - time.time())
            await socket.still_open()
            assert await socket.closed_with(timeout=moved + 2 - time.time()) == CLOSE_CODE
            assert time.time() >= moved

        _run(scenario)


def test_a_socket_whose_session_ended_before_it_connected_is_not_bound(
    engine: str, integration: None, alice: Any
) -> None:
    client = Client()
    key = _login(client, "alice")
    hardened_sessions.revoke_user_sessions(alice)

    async def scenario() -> None:
        socket = await _open(key)
        assert socket.hello == {"color": None, "user": None}
        await socket.still_open()
        await socket.close()

    _run(scenario)


def test_without_the_integration_nothing_is_closed(
    engine: str, channel_layer: None, alice: Any
) -> None:
    key = _login(Client(), "alice")

    async def scenario() -> None:
        socket = await _open(key)
        await sync_to_async(hardened_sessions.revoke_user_sessions)(alice)
        await socket.still_open()
        await socket.close()

    _run(scenario)


# --- enabling the integration ----------------------------------------------------------


def test_the_app_config_connects_the_receivers(channel_layer: None) -> None:
    entry = "hardened_sessions.channels.SessionChannelsConfig"
    sender = import_module(settings.SESSION_ENGINE).SessionStore
    assert not session_revoked.has_listeners(sender)
    try:
        with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, entry]):
            assert apps.is_installed("hardened_sessions.channels")
            assert session_revoked.has_listeners(sender)
            assert session_rotated.has_listeners(sender)
            assert session_expired.has_listeners(sender)
    finally:
        disconnect_receivers()
    assert group_name(hash_prefix(keys.store_key(keys.generate_key()))).startswith(
        "hardened_sessions.session."
    )


def test_channels_is_not_imported_unless_the_integration_is_used() -> None:
    code = (
        "import sys, django; django.setup()\n"
        "import hardened_sessions, hardened_sessions.revoke, hardened_sessions.middleware\n"
        "from django.test.utils import setup_test_environment\n"
        "import django.contrib.auth\n"
        "assert not [m for m in sys.modules if m == 'channels' or m.startswith('channels.')]"
        ", sorted(m for m in sys.modules if m.startswith('channels'))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.support.settings"}
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
