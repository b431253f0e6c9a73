"""A test client with the sync ``Client`` API that sends every request through
Django's ASGI handler (``AsyncClient``), so the middleware's async path
(``HardenedSessionMiddleware.__acall__``) answers it.

``tests/test_http_asgi.py`` runs HTTP behaviour modules written for ``Client`` with
this client in its place: the same assertions hold on both paths.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.test import AsyncClient

_METHODS = ("get", "post", "head", "options", "put", "patch", "delete", "trace", "generic")


class ASGIClient:
    """``Client``'s calls, answered through ``AsyncClient`` (one event loop per call)."""

    def __init__(self, *args: Any, raise_request_exception: bool = True, **kwargs: Any) -> None:
        self._client = AsyncClient(*args, raise_request_exception=raise_request_exception, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name in _METHODS or name == "request":
            return async_to_sync(attribute)
        return attribute

    @property
    def cookies(self) -> Any:
        return self._client.cookies

    @cookies.setter
    def cookies(self, value: Any) -> None:
        self._client.cookies = value
