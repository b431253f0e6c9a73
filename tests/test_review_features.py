"""Review of re-authentication, "sessions follow the account" and "your sessions":
attacks that found a gap, kept as regression tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import isolate_apps

from hardened_sessions import account, keys
from hardened_sessions.models import HardenedSession
from tests.test_account_lifecycle import PASSWORD, _login, _whoami
from tests.test_account_lifecycle import urlpatterns as lifecycle_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)

urlpatterns = lifecycle_urlpatterns
COOKIE = settings.SESSION_COOKIE_NAME


@pytest.fixture(autouse=True)
def _urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__, STATIC_URL="/static/"):
        yield


def test_deactivating_a_multi_table_child_of_the_user_model_ends_its_sessions() -> None:
    """A model that inherits the user model through multi-table inheritance (one
    project's "Employee(User)") saves with itself as the signal sender, not the user
    model: Django sends no pre_save/post_save for the parent row. Its deactivation
    must end the sessions all the same."""
    with isolate_apps("django.contrib.auth") as registry:

        class Employee(get_user_model()):  # type: ignore[misc]
            class Meta:
                app_label = "auth"

        with connection.schema_editor() as editor:
            editor.create_model(Employee)
        account.connect(registry)
        try:
            carol = Employee(username="carol", email="carol@example.com")
            carol.set_password(PASSWORD)
            carol.save()
            client = Client()
            _login(client, "carol")
            assert _whoami(client) == "carol"

            carol = Employee.objects.get(pk=carol.pk)
            carol.is_active = False
            carol.save()

            assert not HardenedSession.objects.filter(user_id=str(carol.pk)).exists()
        finally:
            account.disconnect(registry)
            with connection.schema_editor() as editor:
                editor.delete_model(Employee)


# --- ideas that held: kept so they keep holding --------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example/",
        "/%09/evil.example/",
        " //evil.example/",
        "\x00//evil.example/",
        "//evil.example\\@testserver/",
        "https://testserver@evil.example/",
        "／／evil.example/",
    ],
)
def test_reauth_next_tricks_never_leave_the_site(target: str) -> None:
    from urllib.parse import urlsplit

    from tests.support.reauth_site import HOME, REAUTH, URLCONF, login, make_user
    from tests.support.reauth_site import PASSWORD as RPW

    with override_settings(ROOT_URLCONF=URLCONF, LOGIN_REDIRECT_URL=HOME):
        make_user("alice", RPW)
        client = Client()
        login(client)
        response = client.post(REAUTH, {"password": RPW, "next": target})
        assert response.status_code == 302
        location = response["Location"]
        parts = urlsplit(location)
        assert parts.netloc in ("", "testserver"), location
        assert not location.startswith("//") and "\\" not in location[:3], location


def test_head_and_options_to_a_protected_view_do_not_run_it() -> None:
    from tests.support.reauth_site import HOME, MAX_AGE, T0, URLCONF, clock_at, login, make_user
    from tests.support.reauth_site import PASSWORD as RPW

    with override_settings(ROOT_URLCONF=URLCONF, LOGIN_REDIRECT_URL=HOME), clock_at(T0) as clock:
        make_user("alice", RPW)
        client = Client()
        login(client)
        clock.now += MAX_AGE
        for method in (client.head, client.options):
            response = method("/sensitive/")
            assert response.status_code == 302
            assert "/hs/reauth/" in response["Location"]


def test_logging_in_as_another_user_on_the_same_browser_starts_a_new_session() -> None:
    """The proof belongs to the session; Django's login() flushes it when the user
    changes, so bob's session never inherits alice's key."""
    from tests.support.reauth_site import BOB_PASSWORD, URLCONF, login, make_user
    from tests.support.reauth_site import PASSWORD as RPW

    with override_settings(ROOT_URLCONF=URLCONF):
        make_user("alice", RPW)
        make_user("bob", BOB_PASSWORD)
        client = Client()
        alices = login(client)
        bobs = login(client, "bob", BOB_PASSWORD)
        assert alices != bobs
        assert not HardenedSession.objects.filter(pk=keys.store_key(alices)).exists()


def test_sessions_pages_head_ends_nothing_and_pages_are_never_cached_nor_framed() -> None:
    from tests import test_sessions_pages as pages

    with override_settings(ROOT_URLCONF=pages.__name__, LOGIN_URL=pages.LOGIN):
        alice = get_user_model().objects.create_user("alice", "a@example.com", "pw")
        laptop, phone = pages.signed_in(alice), pages.signed_in(alice)
        for prefix in ("/sessions/", "/async/"):
            for url in (prefix, f"{prefix}{pages.handle(phone)}/end/", f"{prefix}end-others/"):
                for method in (laptop.get, laptop.head):
                    response = method(url)
                    assert response.status_code == 200, url
                    assert "no-store" in response["Cache-Control"], url
                    assert response["X-Frame-Options"] == "DENY", url
        # Upper-case hex names no session (the handle is lower-case hex only).
        upper = pages.handle(phone).upper()
        if upper != pages.handle(phone):
            assert laptop.post(f"/sessions/{upper}/end/").status_code == 404
        assert pages.is_signed_in(phone)


def test_reauth_page_refuses_to_be_framed_without_the_xframe_middleware() -> None:
    """The password form of "confirm it's you" is framed by nobody, as the "your
    sessions" pages: a project without XFrameOptionsMiddleware (the tests' settings have
    none) must not lend it to a clickjacking page that disguises it."""
    from tests.support.reauth_site import HOME, REAUTH, URLCONF, login, make_user
    from tests.support.reauth_site import PASSWORD as RPW

    assert "django.middleware.clickjacking.XFrameOptionsMiddleware" not in settings.MIDDLEWARE
    with override_settings(ROOT_URLCONF=URLCONF, LOGIN_REDIRECT_URL=HOME):
        make_user("alice", RPW)
        client = Client()
        login(client)
        page = client.get(REAUTH + "?next=/sensitive/")
        assert page.status_code == 200
        assert page["X-Frame-Options"] == "DENY"
        wrong = client.post(REAUTH, {"password": "wrong"})
        assert wrong.status_code == 200
        assert wrong["X-Frame-Options"] == "DENY"
