"""Review of the sessions admin: the doors tried that must stay shut.

No page a staff user can reach (changelist with any ordering, paging, show-all or facets
parameter, the change and history pages, the "view on site" shortcut) carries more of a
key hash than the row id; a staff user without the sessions permissions gets the same
answer for a row id that exists and one that does not; the shortcut answers alike for a
whole key hash that exists and one that does not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.test import Client, override_settings

from hardened_sessions.admin import ROW_ID_LENGTH
from hardened_sessions.models import HardenedSession
from tests.test_threat_admin_lookup_oracle import CHANGELIST, PASSWORD, _staff
from tests.test_threat_admin_lookup_oracle import victim as victim  # noqa: PLC0414 - fixture

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

LIST_PARAMS = [
    "",
    "?o=1",
    "?o=0.1.2.3.4.5.6.7.-8.99.-1",
    "?o=--1.x",
    "?p=99999999999999999999999",
    "?p=-1",
    "?all=1",
    "?_facets=1",
    "?e=1",
    "?state=active&state=expired",
    "?q=al%25",
    "?q=%00",
]


@pytest.fixture(autouse=True)
def _admin_urls() -> Iterator[None]:
    from tests.support.urls_admin import URLCONF

    with override_settings(ROOT_URLCONF=URLCONF, STATIC_URL="/static/"):
        yield


def _root() -> Client:
    root = get_user_model().objects.create_superuser("root", password=PASSWORD)
    client = Client()
    client.force_login(root)
    return client


def test_no_page_carries_more_than_the_row_id(db_alias: str, victim: HardenedSession) -> None:
    longer = victim.key_hash[: ROW_ID_LENGTH + 1]
    rid = victim.key_hash[:ROW_ID_LENGTH]
    urls = [CHANGELIST + params for params in LIST_PARAMS]
    urls += [f"{CHANGELIST}{rid}/change/", f"{CHANGELIST}{rid}/history/", f"{CHANGELIST}{rid}/"]
    for client in (_staff("viewer", "view_hardenedsession"), _root()):
        for url in urls:
            response = client.get(url, follow=True)
            assert response.status_code == 200, url
            assert longer not in response.content.decode(), url


def test_a_staff_user_without_permission_learns_nothing_of_row_ids(
    db_alias: str, victim: HardenedSession
) -> None:
    nobody = _staff("nobody")
    rid = victim.key_hash[:ROW_ID_LENGTH]
    for page in ("change", "history", "delete"):
        right = nobody.get(f"{CHANGELIST}{rid}/{page}/")
        wrong = nobody.get(f"{CHANGELIST}{'0' * ROW_ID_LENGTH}/{page}/")
        assert (
            (right.status_code, right.content)
            == (wrong.status_code, wrong.content)
            == (
                403,
                right.content,
            )
        ), page


def test_the_view_on_site_shortcut_answers_alike(db_alias: str, victim: HardenedSession) -> None:
    content_type = ContentType.objects.get_for_model(HardenedSession)
    viewer = _staff("viewer", "view_hardenedsession")
    right = viewer.get(f"/admin/r/{content_type.pk}/{victim.key_hash}/")
    wrong = viewer.get(f"/admin/r/{content_type.pk}/{'0' * 64}/")
    assert right.status_code == wrong.status_code == 404
    assert right.content == wrong.content


def test_revoking_an_expired_row_is_not_reported_as_a_revoked_session(
    db_alias: str, victim: HardenedSession
) -> None:
    """The row of a session past its deadline is removed, but that session had already
    ended: no success message, no count, no ``LogEntry`` of a revocation."""
    from datetime import timedelta

    from django.contrib import admin
    from django.contrib.admin.models import DELETION, LogEntry
    from django.contrib.messages import constants, get_messages
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.test import RequestFactory
    from django.utils import timezone

    from hardened_sessions.backends.db import SessionStore

    rows = HardenedSession.objects.using(db_alias)
    rows.filter(pk=victim.pk).update(expire_date=timezone.now() - timedelta(minutes=1))
    request = RequestFactory().post(CHANGELIST)
    request.user = get_user_model().objects.create_superuser("revoker", password=PASSWORD)
    request.session = SessionStore()
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
    model_admin = admin.site.get_model_admin(HardenedSession)

    model_admin.revoke_selected(request, rows.filter(pk=victim.pk))  # type: ignore[attr-defined]

    assert [(m.level, str(m)) for m in get_messages(request)] == [
        (constants.WARNING, "No session was revoked: none of them was live any more.")
    ]
    assert not rows.filter(pk=victim.pk).exists()
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()
