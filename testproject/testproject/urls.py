from django.contrib import admin
from django.urls import include, path

from demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("grow/", views.grow, name="grow"),
    path("cookie/", views.cookie, name="cookie"),
    path("sessions/", views.sessions, name="sessions"),
    path("sensitive/", views.sensitive, name="sensitive"),
    # hardened_sessions' own pages: the re-authentication page, accounts/reauth/.
    path("accounts/", include("hardened_sessions.urls")),
    path("accounts/login/", views.DemoLoginView.as_view(), name="login"),
    path("accounts/logout/", views.DemoLogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
