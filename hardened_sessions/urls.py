"""``path("...", include("hardened_sessions.urls"))``: the package's own pages."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from .views import ReauthView

app_name = "hardened_sessions"

urlpatterns: list[URLPattern | URLResolver] = [
    path("reauth/", ReauthView.as_view(), name="reauth"),
]
