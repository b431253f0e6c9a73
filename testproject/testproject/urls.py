from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("grow/", views.grow, name="grow"),
    path("cookie/", views.cookie, name="cookie"),
    path("sensitive/", views.sensitive, name="sensitive"),
    # hardened_sessions' own pages: "Your sessions" at sessions/, the
    # re-authentication page at sessions/reauth/.
    path("sessions/", include("hardened_sessions.urls")),
    # Where the re-authentication page was before.
    path(
        "accounts/reauth/",
        RedirectView.as_view(pattern_name="hardened_sessions:reauth", query_string=True),
    ),
    path("accounts/login/", views.DemoLoginView.as_view(), name="login"),
    path("accounts/logout/", views.DemoLogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
