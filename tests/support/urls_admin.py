"""URLconf for the operations tests: the real admin, Django's auth views, and one probe.

Used with ``override_settings(ROOT_URLCONF="tests.support.urls_admin")`` by ``test_admin``,
``test_per_user_sessions`` and ``test_importdjangosessions``:

* ``admin/``: ``admin.site.urls`` (the ``HardenedSession`` admin as registered);
* ``accounts/``: ``django.contrib.auth.urls`` (``LoginView``, ``PasswordChangeView``, ...);
* ``whoami/``: who the session says the request belongs to, as JSON.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, URLResolver, include, path

URLCONF = __name__


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse(
        {
            "authenticated": user.is_authenticated,
            "username": user.get_username() if user.is_authenticated else None,
        }
    )


urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("whoami/", whoami, name="whoami"),
]
