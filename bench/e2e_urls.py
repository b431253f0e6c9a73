"""The testproject's URLs plus two benchmark views that use the session as a page would."""

from __future__ import annotations

import os
import secrets

from django.http import HttpRequest, HttpResponse
from django.urls import path

from testproject.urls import urlpatterns as site_urlpatterns

PAYLOAD = int(os.environ.get("HS_BENCH_E2E_PAYLOAD", "4096"))


def read(request: HttpRequest) -> HttpResponse:
    """Reads the session (and the user, as most pages do); changes nothing."""
    authenticated = request.user.is_authenticated
    n = request.session.get("n", 0)
    return HttpResponse(f"n={n} user={authenticated}\n", content_type="text/plain")


def write(request: HttpRequest) -> HttpResponse:
    """Changes the session on every request (a new value each time)."""
    authenticated = request.user.is_authenticated
    n = request.session.get("n", 0) + 1
    request.session["n"] = n
    request.session["blob"] = secrets.token_urlsafe(PAYLOAD)[:PAYLOAD]
    return HttpResponse(f"n={n} user={authenticated}\n", content_type="text/plain")


urlpatterns = [
    path("bench/read/", read),
    path("bench/write/", write),
    *site_urlpatterns,
]
