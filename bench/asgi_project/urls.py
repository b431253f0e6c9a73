"""The async views the ASGI benchmark drives.

``/read/``
    ``await request.session.aget(...)`` of the counter and the data; writes nothing;
``/rmw/``
    read-modify-write: ``aget`` of both, ``aset`` of the counter, and the middleware's
    save of the whole record (the data keeps its size);
``/ceiling/``
    no session access at all (the middleware still runs): the most one process serves.

A session that the cookie does not open (unknown, expired or refused by the engine)
answers 410, so that the load generator counts it as a failed request instead of
timing an empty session.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

GONE = 410


async def read(request: HttpRequest) -> HttpResponse:
    n = await request.session.aget("n", 0)
    data = await request.session.aget("data")
    if data is None:
        return HttpResponse("no session\n", status=GONE, content_type="text/plain")
    return HttpResponse(f"n={n} bytes={len(data)}\n", content_type="text/plain")


async def rmw(request: HttpRequest) -> HttpResponse:
    n = await request.session.aget("n", 0)
    data = await request.session.aget("data")
    if data is None:
        return HttpResponse("no session\n", status=GONE, content_type="text/plain")
    await request.session.aset("n", n + 1)
    return HttpResponse(f"n={n + 1} bytes={len(data)}\n", content_type="text/plain")


async def ceiling(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [
    path("read/", read),
    path("rmw/", rmw),
    path("ceiling/", ceiling),
]
