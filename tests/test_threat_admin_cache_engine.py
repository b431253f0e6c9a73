"""Threat: on a cache engine, the sessions admin misleads the operator ending a session.

With ``SESSION_ENGINE = "hardened_sessions.backends.cache"`` the sessions live in the
cache, but the admin used to list the table's rows, left over from the db engine: old
sessions shown as "Active", the live ones not shown at all, and "Revoke" on a listed
row answering "0 sessions revoked" (as a success) while the user it meant to log out
stayed logged in.

docs/operations.rst: on the cache engine the admin shows what the cache holds: a
searched user's live sessions through the per-user index (Redis, LocMemCache), revoked
through the engine, the cache never asked to list its keys (so anonymous sessions are
not listed, and the page says so); where the cache cannot list them (memcached) a notice
and no rows; never rows of another engine. A revoke reports what really happened: how
many sessions it ended, and a warning when it ended none.

Runs on each ``session_cache`` variant of ``tests.support.servers`` (LocMemCache, django-redis
and Django's ``RedisCache`` on a real Redis, pymemcache on real memcached servers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import constants
from django.test import Client, override_settings

from hardened_sessions import keys
from hardened_sessions.admin import ROW_ID_LENGTH
from hardened_sessions.backends.db import SessionStore as DBStore
from hardened_sessions.models import HardenedSession
from tests.support.servers import variant_cache
from tests.support.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/hardened_sessions/hardenedsession/"
PASSWORD = "admin password for tests"
CACHE_ENGINE = "hardened_sessions.backends.cache"


@pytest.fixture(autouse=True)
def _admin_urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF, STATIC_URL="/static/"):
        yield


@pytest.fixture
def variant(session_cache: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``session_cache`` variant's id, with the cache engine configured on it."""
    name: str = request.node.callspec.params["session_cache"]
    with override_settings(SESSION_ENGINE=CACHE_ENGINE):
        yield name


@pytest.fixture(params=["locmem", "django-redis", "django-rediscache"])
def indexed(request: pytest.FixtureRequest) -> Iterator[str]:
    """The cache engine on each cache that keeps a per-user index."""
    name: str = request.param
    with variant_cache(name, request), override_settings(SESSION_ENGINE=CACHE_ENGINE):
        yield name


@pytest.fixture
def memcached(request: pytest.FixtureRequest) -> Iterator[str]:
    """The cache engine on memcached, which keeps no per-user index."""
    with variant_cache("pymemcache", request), override_settings(SESSION_ENGINE=CACHE_ENGINE):
        yield "pymemcache"


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", password=PASSWORD)


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def root_client() -> Client:
    return _client(get_user_model().objects.create_superuser("root", password=PASSWORD))


def _staff(username: str, *codenames: str) -> Client:
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=True)
    content_type = ContentType.objects.get_for_model(HardenedSession)
    user.user_permissions.set(
        Permission.objects.filter(content_type=content_type, codename__in=codenames)
    )
    return _client(user)


def _session(user: Any = None, **data: Any) -> tuple[str, str]:
    """A session of the configured engine (of ``user`` if given): key and key hash."""
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    if user is not None:
        session["_auth_user_id"] = str(user.pk)
    session.update(data)
    session.save()
    key = session.session_key
    assert key is not None
    return key, keys.store_key(key)


def _stale_row(user: Any) -> str:
    """A row the db engine left in the table, still "active" by its columns."""
    with override_settings(SESSION_ENGINE="hardened_sessions.backends.db"):
        session = DBStore()
        session["_auth_user_id"] = str(user.pk)
        session.save()
        assert session.session_key is not None
        return keys.store_key(session.session_key)


def _loads(key: str) -> dict[str, Any]:
    return dict(import_module(settings.SESSION_ENGINE).SessionStore(key).load())


def _page(client: Client, **params: str) -> str:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200, response.status_code
    text: str = response.content.decode()
    return text


def _listed(html: str) -> set[str]:
    return set(re.findall(r'data-row-id="([0-9a-f]+)"', html))


def _messages(response: Any) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in response.context["messages"]]


def _post(client: Client, **data: str) -> Any:
    return client.post(CHANGELIST, data, follow=True)


def _deletions() -> list[LogEntry]:
    return list(
        LogEntry.objects.filter(
            action_flag=DELETION, content_type=ContentType.objects.get_for_model(HardenedSession)
        )
    )


# --- the page shows what the cache holds -----------------------------------------


def test_the_page_shows_the_cache_and_never_the_tables_rows(
    variant: str, root_client: Client, alice: Any, bob: Any
) -> None:
    stale = _stale_row(alice)
    mine = [_session(alice, n=n) for n in range(2)]
    _, bobs = _session(bob)
    _, anonymous = _session(theme="dark")

    front = _page(root_client)
    searched = _page(root_client, q="alice")

    for html in (front, searched):
        assert 'id="engine-notice"' in html
        assert "Anonymous sessions are not listed" in html
        assert stale[:16] not in html
        assert anonymous[:16] not in html
        assert bobs[:16] not in html
        assert "result_list" not in html or variant != "pymemcache"
    assert _listed(front) == set()
    if variant == "pymemcache":
        for html in (front, searched):
            assert 'id="unlisted-notice"' in html
            assert "cannot list sessions" in html
            assert "memcached" in html
            assert _listed(html) == set()
            assert 'name="action"' not in html
        return
    assert 'id="unlisted-notice"' not in front
    assert _listed(searched) == {key_hash[:ROW_ID_LENGTH] for _, key_hash in mine}
    assert "Live sessions of alice" in searched
    for key, key_hash in mine:
        assert f"{key_hash[:16]}…" in searched
        assert key_hash not in searched
        assert key not in searched


def test_a_search_matching_several_users_lets_one_be_chosen(
    indexed: str, root_client: Client, alice: Any
) -> None:
    alicia = get_user_model().objects.create_user("alicia", password=PASSWORD)
    _, alice_hash = _session(alice)
    _, alicia_hash = _session(alicia)

    several = _page(root_client, q="ali")
    exact = _page(root_client, q="alice")
    nobody = _page(root_client, q="nobody-by-that-name")

    assert 'id="candidates"' in several
    assert "?q=alice" in several and "?q=alicia" in several
    assert _listed(several) == set()
    assert _listed(exact) == {alice_hash[:ROW_ID_LENGTH]}
    assert _listed(_page(root_client, q="alicia")) == {alicia_hash[:ROW_ID_LENGTH]}
    assert 'id="no-user"' in nobody
    # A user without a live session is not told apart from no user at all.
    get_user_model().objects.create_user("carol", password=PASSWORD)
    carol = _page(root_client, q="carol")
    assert 'id="no-user"' in carol
    assert "carol" not in carol.replace("“carol”", "").replace('value="carol"', "")


def test_other_parameters_are_refused(variant: str, root_client: Client, alice: Any) -> None:
    for params in ({"state": "active"}, {"data__regex": "x"}, {"_popup": "1"}, {"o": "1"}):
        assert root_client.get(CHANGELIST, params).status_code == 400, params


# --- revoking through the engine, and saying what happened ----------------------------


def test_revoke_one_session_ends_it_and_reports_it(
    indexed: str, root_client: Client, alice: Any, bob: Any
) -> None:
    (gone_key, gone_hash), (kept_key, kept_hash) = _session(alice, n=1), _session(alice, n=2)
    bobs_key, _ = _session(bob)

    response = _post(
        root_client, action="revoke_session", user=str(alice.pk), session=gone_hash[:16]
    )

    assert response.status_code == 200
    assert response.redirect_chain[-1][0].endswith(f"{CHANGELIST}?q=alice")
    assert _messages(response) == [(constants.SUCCESS, "1 session of alice revoked.")]
    assert _loads(gone_key) == {}
    assert _loads(kept_key) == {"_auth_user_id": str(alice.pk), "n": 2}
    assert _loads(bobs_key) == {"_auth_user_id": str(bob.pk)}
    assert _listed(response.content.decode()) == {kept_hash[:ROW_ID_LENGTH]}
    [entry] = _deletions()
    assert entry.object_id == gone_hash[:ROW_ID_LENGTH]
    assert entry.object_repr == f"{gone_hash[:16]}…"

    # Again: nothing left to end, and the page says so, as a warning.
    again = _post(root_client, action="revoke_session", user=str(alice.pk), session=gone_hash[:16])
    [(level, text)] = _messages(again)
    assert level == constants.WARNING
    assert text.startswith("No session was revoked")
    assert len(_deletions()) == 1


def test_revoke_one_session_only_of_the_user_the_page_showed(
    indexed: str, root_client: Client, alice: Any, bob: Any
) -> None:
    _session(alice)
    bobs_key, bobs_hash = _session(bob)

    for session in (bobs_hash[:16], bobs_hash, bobs_hash[:15], "z" * 16, ""):
        response = _post(root_client, action="revoke_session", user=str(alice.pk), session=session)
        [(level, _text)] = _messages(response)
        assert level == constants.WARNING

    assert _loads(bobs_key) == {"_auth_user_id": str(bob.pk)}
    assert _deletions() == []


def test_revoke_all_sessions_of_a_user(
    indexed: str, root_client: Client, alice: Any, bob: Any
) -> None:
    mine = [_session(alice, n=n) for n in range(3)]
    bobs_key, _ = _session(bob)
    anonymous_key, _ = _session(theme="dark")

    response = _post(root_client, action="revoke_user", user=str(alice.pk))

    assert _messages(response) == [(constants.SUCCESS, "3 sessions of alice revoked.")]
    assert all(_loads(key) == {} for key, _ in mine)
    assert _loads(bobs_key) == {"_auth_user_id": str(bob.pk)}
    assert _loads(anonymous_key) == {"theme": "dark"}
    assert {entry.object_id for entry in _deletions()} == {h[:ROW_ID_LENGTH] for _, h in mine}
    assert _listed(response.content.decode()) == set()

    again = _post(root_client, action="revoke_user", user=str(alice.pk))
    assert [level for level, _ in _messages(again)] == [constants.WARNING]


def test_revoking_needs_the_delete_permission(variant: str, alice: Any) -> None:
    key, key_hash = _session(alice)
    viewer = _staff("viewer", "view_hardenedsession", "change_hardenedsession")

    html = _page(viewer, q="alice")

    assert 'name="action"' not in html
    for data in (
        {"action": "revoke_session", "user": str(alice.pk), "session": key_hash[:16]},
        {"action": "revoke_user", "user": str(alice.pk)},
    ):
        assert viewer.post(CHANGELIST, data).status_code == 403
    assert _loads(key) == {"_auth_user_id": str(alice.pk)}
    assert _deletions() == []


def test_revoke_forms_need_the_csrf_token(variant: str, alice: Any) -> None:
    key, key_hash = _session(alice)
    root = get_user_model().objects.create_superuser("root", password=PASSWORD)
    client = Client(enforce_csrf_checks=True)
    client.force_login(root)

    response = client.post(CHANGELIST, {"action": "revoke_user", "user": str(alice.pk)})

    assert response.status_code == 403
    assert _loads(key) == {"_auth_user_id": str(alice.pk)}


def test_the_old_actions_on_the_tables_rows_do_not_run(
    variant: str, root_client: Client, alice: Any
) -> None:
    """ "Revoke" on a leftover row used to answer "0 sessions revoked." as a success."""
    stale = _stale_row(alice)
    key, _ = _session(alice)

    response = root_client.post(
        CHANGELIST,
        {"action": "revoke_selected", "_selected_action": [stale[:16]], "index": "0"},
    )

    assert response.status_code == 400
    assert _loads(key) == {"_auth_user_id": str(alice.pk)}


def test_a_leftover_row_has_no_detail_or_history_page(
    variant: str, root_client: Client, alice: Any
) -> None:
    stale = _stale_row(alice)
    for view in ("change", "history"):
        response = root_client.get(f"{CHANGELIST}{stale[:ROW_ID_LENGTH]}/{view}/")
        assert response.status_code == 302, view
        page = root_client.get(response["Location"]).content.decode()
        assert "doesn’t exist" in page
        assert "field-data_summary" not in page


def test_on_memcached_a_revoke_says_why_it_cannot(
    memcached: str, root_client: Client, alice: Any
) -> None:
    key, key_hash = _session(alice)

    response = _post(root_client, action="revoke_user", user=str(alice.pk))

    [(level, text)] = _messages(response)
    assert level == constants.ERROR
    assert "per-user index" in text
    assert _loads(key) == {"_auth_user_id": str(alice.pk)}


def test_an_engine_of_another_package_lists_no_rows(alice: Any) -> None:
    stale = _stale_row(alice)
    root = get_user_model().objects.create_superuser("root", password=PASSWORD)
    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        client = _client(root)
        html = _page(client)

    assert 'id="engine-notice"' in html
    assert "not an engine of hardened_sessions" in html
    assert stale[:16] not in html
