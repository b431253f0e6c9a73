"""A Channels site for ``tests/test_channels.py``: HTTP views and a WebSocket consumer.

HTTP (``URLCONF``, with ``override_settings(ROOT_URLCONF=...)``): Django's auth views
under ``accounts/`` (as ``tests.support.urls_admin``), ``remember/?color=...`` stores a
value in the session, ``rotate/`` calls ``cycle_key()``.

WebSocket: :func:`application` builds ``AuthMiddlewareStack(URLRouter(...))`` with
``ws/echo/`` (:class:`EchoConsumer`, plain Channels) and ``ws/bound/``
(:class:`BoundConsumer`, with ``SessionBoundConsumerMixin``). Both answer a connect
with what the scope holds: ``{"color": scope["session"]["color"], "user": username}``,
and echo what they receive.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import URLRouter
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path

from hardened_sessions.channels import SessionBoundConsumerMixin
from tests.support.urls_admin import urlpatterns as admin_urlpatterns

URLCONF = __name__


def remember(request: HttpRequest) -> HttpResponse:
    request.session["color"] = request.GET["color"]
    return HttpResponse("ok")


def rotate(request: HttpRequest) -> HttpResponse:
    request.session.cycle_key()
    return HttpResponse("ok")


urlpatterns: list[URLPattern | URLResolver] = [
    *admin_urlpatterns,
    path("remember/", remember),
    path("rotate/", rotate),
]


class EchoConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.accept()
        await self.send_json(await database_sync_to_async(self.describe)())

    def describe(self) -> dict[str, Any]:
        user = self.scope["user"]
        return {
            "color": self.scope["session"].get("color"),
            "user": user.get_username() if user.is_authenticated else None,
        }

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json(content)


class BoundConsumer(SessionBoundConsumerMixin, EchoConsumer):
    pass


def application() -> Any:
    return AuthMiddlewareStack(
        URLRouter(
            [
                path("ws/echo/", EchoConsumer.as_asgi()),
                path("ws/bound/", BoundConsumer.as_asgi()),
            ]
        )
    )
