"""``path("...", include("hardened_sessions.urls"))``: the package's own pages.

Included under ``sessions/``, it serves "your sessions" at ``sessions/`` (see
``hardened_sessions.views_sessions``) and the re-authentication page at
``sessions/reauth/``.
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from .views import EndOtherSessionsView, EndSessionView, ReauthView, SessionListView

app_name = "hardened_sessions"

urlpatterns: list[URLPattern | URLResolver] = [
    path("", SessionListView.as_view(), name="sessions"),
    path("end-others/", EndOtherSessionsView.as_view(), name="end-other-sessions"),
    path("<str:handle>/end/", EndSessionView.as_view(), name="end-session"),
    path("reauth/", ReauthView.as_view(), name="reauth"),
]
