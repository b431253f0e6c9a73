"""Tell a visitor whose session ended elsewhere (revoked from another device, by an
administrator, or expired) why they are signed out."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponseBase

ENDED_MESSAGE = "Your session was ended (signed out elsewhere, or expired). Please log in again."


def session_ended_message(
    get_response: Callable[[HttpRequest], HttpResponseBase],
) -> Callable[[HttpRequest], HttpResponseBase]:
    """A session cookie came in, but no session was loaded from it.

    After a load that finds no live record under the cookie's key, Django's session
    API leaves ``session_key`` at ``None`` (the next save issues a new key). The
    message says only what the visitor's own browser shows anyway: the cookie they sent
    opens nothing now. It never says whether that key ever existed, or whose it was.
    """

    def middleware(request: HttpRequest) -> HttpResponseBase:
        sent = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        # Pages only: not the favicon or another subresource fetched alongside.
        if sent and request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            session = request.session
            session.keys()  # loads the session, as request.user would
            # A store that is down loads nothing either: the session middleware answers
            # 503 then, and nothing was ended.
            if session.session_key is None and getattr(session, "store_failure", None) is None:
                messages.warning(request, ENDED_MESSAGE)
        return get_response(request)

    return middleware
