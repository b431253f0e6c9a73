"""The ``HardenedSession`` admin: inspect and revoke, never edit, never leak.

docs/operations.rst: the admin shows a hashed key prefix, the user, the times, the
size and the state; the decoded data shows keys with value types and lengths, values
redacted; it is never editable; its actions revoke the selected sessions, or every
session of their users, through the engine (so cached copies go too), leave
``LogEntry`` rows and send ``session_revoked``.

Everything runs through the real admin (``admin.site.urls`` in ``tests.support.urls_admin``)
with Django's test ``Client``, on every database alias. Rows and checkbox values are
read from the changelist HTML, as a browser would, so the tests hold whatever the
admin uses to name a row.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.test import Client, override_settings
from django.utils import timezone

from hardened_sessions import keys
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from hardened_sessions.signals import session_revoked
from hardened_sessions.stores import store_for_cache
from tests.support.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

CHANGELIST = "/admin/hardened_sessions/hardenedsession/"
ADD = CHANGELIST + "add/"
SECRET = "zq-secret-7c1f0e3a-do-not-render-9b4d"
PASSWORD = "admin password for tests"

_TBODY = re.compile(r"<tbody>(.*?)</tbody>", re.S)
_ROW = re.compile(r"<tr>(.*?)</tr>", re.S)
_PREFIX_CELL = re.compile(r'class="field-key_prefix">(?:<a [^>]*>)?([0-9a-f]{16})…')
_CHECKBOX = re.compile(r'name="_selected_action" value="([^"]*)"')
_CHANGE_LINK = re.compile(r'href="([^"]*/change/)"')


@pytest.fixture(autouse=True)
def _admin_urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF, STATIC_URL="/static/"):
        yield


@pytest.fixture
def root() -> Any:
    return get_user_model().objects.create_superuser("root", password=PASSWORD)


@pytest.fixture
def admin_client(root: Any) -> Client:
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def revocations() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    session_revoked.connect(receiver, weak=False, dispatch_uid="tests.test_admin")
    try:
        yield received
    finally:
        session_revoked.disconnect(dispatch_uid="tests.test_admin")


# --- helpers ---------------------------------------------------------------------------


def _session(user: Any = None, **data: Any) -> tuple[str, str]:
    """A stored session (of ``user`` if given); its key and key hash."""
    session = SessionStore()
    if user is not None:
        session["_auth_user_id"] = str(user.pk)
    session.update(data)
    session.save()
    key = session.session_key
    assert key is not None
    return key, keys.store_key(key)


def _expire(key_hash: str, alias: str) -> None:
    past = timezone.now() - timedelta(hours=1)
    assert HardenedSession.objects.using(alias).filter(pk=key_hash).update(expire_date=past) == 1


def _html(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    text: str = response.content.decode()
    return text


def _rows(html: str) -> dict[str, str]:
    """The changelist's rows by the key-hash prefix they show."""
    body = _TBODY.search(html)
    if body is None:
        return {}
    rows = {}
    for row in _ROW.findall(body.group(1)):
        match = _PREFIX_CELL.search(row)
        assert match, f"a row without a key-hash prefix: {row[:300]}"
        rows[match.group(1)] = row
    return rows


def _listed(client: Client, **params: str) -> dict[str, str]:
    return _rows(_html(client.get(CHANGELIST, params)))


def _change_url(client: Client, key_hash: str) -> str:
    row = _listed(client)[key_hash[:16]]
    match = _CHANGE_LINK.search(row)
    assert match, "the row links to no detail page"
    return match.group(1)


def _run_action(client: Client, action: str, key_hashes: list[str]) -> Any:
    rows = _listed(client)
    selected = []
    for key_hash in key_hashes:
        match = _CHECKBOX.search(rows[key_hash[:16]])
        assert match, "the row has no action checkbox"
        selected.append(match.group(1))
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": selected, "index": "0", "select_across": "0"},
    )


def _loads(key: str) -> dict[str, Any]:
    return dict(import_module(settings.SESSION_ENGINE).SessionStore(key).load())


def _row_exists(key_hash: str, alias: str) -> bool:
    return HardenedSession.objects.using(alias).filter(pk=key_hash).exists()


def _deletion_entries() -> Any:
    return LogEntry.objects.filter(
        action_flag=DELETION,
        content_type=ContentType.objects.get_for_model(HardenedSession),
    )


# --- the changelist --------------------------------------------------------------------


def test_changelist_shows_prefixes_users_and_state(
    db_alias: str, admin_client: Client, alice: Any
) -> None:
    alice_key, alice_hash = _session(alice, cart="3 books")
    anon_key, anon_hash = _session(theme="dark")
    old_key, old_hash = _session(alice)
    _expire(old_hash, db_alias)

    html = _html(admin_client.get(CHANGELIST))
    rows = _rows(html)

    assert {alice_hash[:16], anon_hash[:16], old_hash[:16]} <= set(rows)
    assert f"{alice_hash[:16]}…" in rows[alice_hash[:16]]
    assert f'class="field-user_display">alice ({alice.pk})</td>' in rows[alice_hash[:16]]
    assert 'class="field-user_display">—</td>' in rows[anon_hash[:16]]
    assert 'class="field-is_active"><img' in rows[alice_hash[:16]]
    assert 'alt="True"' in rows[alice_hash[:16]]
    assert 'alt="True"' in rows[anon_hash[:16]]
    assert 'alt="False"' in rows[old_hash[:16]]
    for key in (alice_key, anon_key, old_key):
        assert key not in html


def test_the_full_key_hash_appears_nowhere_in_the_admin_html(
    db_alias: str, admin_client: Client, alice: Any
) -> None:
    _key, key_hash = _session(alice)

    changelist = _html(admin_client.get(CHANGELIST))
    assert f"{key_hash[:16]}…" in changelist
    assert key_hash not in changelist

    detail = _html(admin_client.get(_change_url(admin_client, key_hash)))
    assert f"{key_hash[:16]}…" in detail
    assert key_hash not in detail


def test_state_filter(db_alias: str, admin_client: Client, alice: Any) -> None:
    _, live_hash = _session(alice)
    _, anon_hash = _session(theme="dark")
    _, dead_hash = _session(alice)
    _, dead_anon_hash = _session(theme="light")
    _expire(dead_hash, db_alias)
    _expire(dead_anon_hash, db_alias)

    active = set(_listed(admin_client, state="active"))
    expired = set(_listed(admin_client, state="expired"))

    assert {live_hash[:16], anon_hash[:16]} <= active
    assert not {dead_hash[:16], dead_anon_hash[:16]} & active
    assert expired == {dead_hash[:16], dead_anon_hash[:16]}


def test_user_filter(db_alias: str, admin_client: Client, alice: Any, bob: Any) -> None:
    _, alice_hash = _session(alice)
    _, bob_hash = _session(bob)
    _, anon_hash = _session(theme="dark")
    _, dead_anon_hash = _session(theme="light")
    _expire(dead_anon_hash, db_alias)

    signed_in = set(_listed(admin_client, user="signed-in"))
    anonymous = set(_listed(admin_client, user="anonymous"))

    assert {alice_hash[:16], bob_hash[:16]} <= signed_in
    assert not {anon_hash[:16], dead_anon_hash[:16]} & signed_in
    assert anonymous == {anon_hash[:16], dead_anon_hash[:16]}


def test_search_by_username_finds_that_users_sessions(
    db_alias: str, admin_client: Client, alice: Any, bob: Any
) -> None:
    alice_hashes = {_session(alice)[1][:16] for _ in range(2)}
    _, bob_hash = _session(bob)
    _, anon_hash = _session(theme="dark")

    assert set(_listed(admin_client, q="alice")) == alice_hashes
    assert set(_listed(admin_client, q="ALI")) == alice_hashes
    assert set(_listed(admin_client, q="bob")) == {bob_hash[:16]}
    assert _listed(admin_client, q="nobody-by-that-name") == {}
    assert anon_hash[:16] in _listed(admin_client)


# --- the detail page: read-only, values redacted ---------------------------------------


def test_change_view_is_read_only(db_alias: str, admin_client: Client, alice: Any) -> None:
    key, key_hash = _session(alice, cart="3 books")
    before = HardenedSession.objects.using(db_alias).get(pk=key_hash)
    url = _change_url(admin_client, key_hash)

    html = _html(admin_client.get(url))

    assert f"{key_hash[:16]}…" in html
    form = re.search(r'<form\b[^>]*id="hardenedsession_form".*?</form>', html, re.S)
    assert form, "no change form on the detail page"
    assert "alice" in form.group(0)  # the fields are there, as text
    assert 'name="_save"' not in html
    assert 'name="_continue"' not in html
    assert 'type="submit"' not in form.group(0)
    assert "<textarea" not in form.group(0)
    assert "<select" not in form.group(0)
    editable = [
        tag for tag in re.findall(r"<input\b[^>]*>", form.group(0)) if 'type="hidden"' not in tag
    ]
    assert editable == []

    response = admin_client.post(
        url,
        {
            "user_id": "999",
            "expire_date": "2099-01-01 00:00:00",
            "size": "1",
            "version": "77",
            "_save": "Save",
        },
    )

    assert response.status_code == 403
    after = HardenedSession.objects.using(db_alias).get(pk=key_hash)
    assert (after.user_id, after.expire_date, after.version, bytes(after.data)) == (
        before.user_id,
        before.expire_date,
        before.version,
        bytes(before.data),
    )
    assert _loads(key) == {"_auth_user_id": str(alice.pk), "cart": "3 books"}


def test_add_view_is_forbidden(db_alias: str, admin_client: Client) -> None:
    count = HardenedSession.objects.using(db_alias).count()

    assert admin_client.get(ADD).status_code == 403
    response = admin_client.post(
        ADD,
        {
            "key_hash": "a" * 64,
            "data": "hs1:{}",
            "expire_date": "2099-01-01 00:00:00",
            "size": "1",
            "version": "1",
        },
    )

    assert response.status_code == 403
    assert HardenedSession.objects.using(db_alias).count() == count
    assert not _row_exists("a" * 64, db_alias)


def test_row_delete_view_is_forbidden(db_alias: str, admin_client: Client) -> None:
    # Deleting goes through the revoke actions (the engine); a plain row delete would
    # leave cached copies behind.
    key, key_hash = _session(theme="dark")
    delete_url = _change_url(admin_client, key_hash).replace("/change/", "/delete/")

    assert admin_client.get(delete_url).status_code == 403
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert _row_exists(key_hash, db_alias)
    assert _loads(key) == {"theme": "dark"}


def test_data_summary_shows_keys_types_and_lengths_never_values(
    db_alias: str, admin_client: Client, alice: Any
) -> None:
    key, key_hash = _session(
        alice,
        api_token=SECRET,
        cart=["book-1", "book-2", "book-3"],
        prefs={"theme": "dark", "lang": "fr"},
        count=12345678,
        verified=True,
        nothing=None,
    )

    changelist = _html(admin_client.get(CHANGELIST))
    detail = _html(admin_client.get(_change_url(admin_client, key_hash)))

    assert f"<code>api_token</code>: string, {len(SECRET)} characters" in detail
    assert "<code>cart</code>: list, 3 items" in detail
    assert "<code>prefs</code>: object, 2 keys" in detail
    assert "<code>count</code>: number" in detail
    assert "<code>verified</code>: boolean" in detail
    assert "<code>nothing</code>: null" in detail
    assert "<code>_auth_user_id</code>: string" in detail
    for html in (changelist, detail):
        assert SECRET not in html
        assert "book-2" not in html
        assert "12345678" not in html
        assert key not in html


def test_a_record_with_a_broken_signature_shows_rejected(
    db_alias: str, admin_client: Client, alice: Any
) -> None:
    key, key_hash = _session(alice, api_token=SECRET)
    raw = bytearray(HardenedSession.objects.using(db_alias).get(pk=key_hash).data)
    raw[-1] = ord("A") if raw[-1] != ord("A") else ord("B")  # one signature character
    HardenedSession.objects.using(db_alias).filter(pk=key_hash).update(data=bytes(raw))

    detail = _html(admin_client.get(_change_url(admin_client, key_hash)))

    assert "rejected" in detail
    assert "bad signature" in detail
    assert "<code>api_token</code>" not in detail
    assert SECRET not in detail
    assert _loads(key) == {}


# --- actions -------------------------------------------------------------------------


def test_revoke_selected_ends_the_sessions_through_the_engine(
    db_alias: str, admin_client: Client, root: Any, alice: Any, revocations: list[Any]
) -> None:
    first_key, first_hash = _session(alice, cart="1")
    second_key, second_hash = _session(theme="dark")
    other_key, other_hash = _session(alice, cart="2")

    response = _run_action(admin_client, "revoke_selected", [first_hash, second_hash])

    assert response.status_code == 302
    assert _loads(first_key) == {}
    assert _loads(second_key) == {}
    assert not _row_exists(first_hash, db_alias)
    assert not _row_exists(second_hash, db_alias)
    assert _loads(other_key) == {"_auth_user_id": str(alice.pk), "cart": "2"}

    entries = list(_deletion_entries())
    assert len(entries) == 2
    assert {entry.object_repr for entry in entries} == {
        f"{first_hash[:16]}…",
        f"{second_hash[:16]}…",
    }
    assert {entry.user_id for entry in entries} == {root.pk}

    assert sorted(signal["key_hash_prefix"] for signal in revocations) == sorted(
        [first_hash[:16], second_hash[:16]]
    )
    assert all(signal["sender"] is SessionStore for signal in revocations)

    assert "2 sessions revoked." in _html(admin_client.get(response["Location"]))


def test_revoke_users_ends_every_session_of_the_selected_users(
    db_alias: str,
    admin_client: Client,
    root: Any,
    alice: Any,
    bob: Any,
    revocations: list[Any],
) -> None:
    alice_sessions = [_session(alice, n=n) for n in range(3)]
    bob_key, bob_hash = _session(bob)
    anon_key, anon_hash = _session(theme="dark")

    # One of alice's rows selected: all three of hers go, nobody else's.
    response = _run_action(admin_client, "revoke_users", [alice_sessions[0][1]])

    assert response.status_code == 302
    for key, key_hash in alice_sessions:
        assert _loads(key) == {}
        assert not _row_exists(key_hash, db_alias)
    assert _loads(bob_key) == {"_auth_user_id": str(bob.pk)}
    assert _loads(anon_key) == {"theme": "dark"}
    assert HardenedSession.objects.using(db_alias).filter(user_id=str(root.pk)).exists()

    entries = list(_deletion_entries())
    assert {entry.object_repr for entry in entries} == {f"{h[:16]}…" for _, h in alice_sessions}
    assert len(entries) == 3
    assert sorted(signal["key_hash_prefix"] for signal in revocations) == sorted(
        h[:16] for _, h in alice_sessions
    )
    assert "3 sessions of 1 user(s) revoked." in _html(admin_client.get(response["Location"]))


def test_revocation_signals_from_the_admin_name_the_user(
    db_alias: str, admin_client: Client, alice: Any, revocations: list[Any]
) -> None:
    _, key_hash = _session(alice)

    _run_action(admin_client, "revoke_selected", [key_hash])

    assert [signal["user_id"] for signal in revocations] == [str(alice.pk)]


@pytest.mark.parametrize("action", ["revoke_selected", "revoke_users"])
def test_actions_remove_the_cached_copies_on_cached_db(
    db_alias: str, root: Any, alice: Any, action: str, revocations: list[Any]
) -> None:
    caches = {
        "default": settings.CACHES["default"],
        "sessions": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"test-admin-cached-db-{db_alias}-{action}",
        },
    }
    with override_settings(
        CACHES=caches,
        SESSION_CACHE_ALIAS="sessions",
        SESSION_ENGINE="hardened_sessions.backends.cached_db",
    ):
        from hardened_sessions.backends.cached_db import SessionStore as CachedDBStore

        client = Client()
        client.force_login(root)
        victims = []
        for n in range(2):
            session = CachedDBStore()
            session.update({"_auth_user_id": str(alice.pk), "n": n})
            session.save()
            key = session.session_key
            assert key is not None
            assert CachedDBStore(key).load()["n"] == n  # a load from the DB fills the cache
            victims.append((key, keys.store_key(key)))
        cache = store_for_cache("sessions")
        assert all(cache.get(key_hash) is not None for _, key_hash in victims)

        response = _run_action(client, action, [key_hash for _, key_hash in victims])

        assert response.status_code == 302
        for key, key_hash in victims:
            assert cache.get(key_hash) is None
            assert not _row_exists(key_hash, db_alias)
            assert CachedDBStore(key).load() == {}
        assert len(revocations) == 2
        assert _deletion_entries().count() == 2


# --- permissions ---------------------------------------------------------------------


def _staff(username: str, *codenames: str) -> Client:
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=True)
    content_type = ContentType.objects.get_for_model(HardenedSession)
    user.user_permissions.set(
        Permission.objects.filter(content_type=content_type, codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_delete_permission_sees_no_actions_and_cannot_run_them(
    db_alias: str, alice: Any, revocations: list[Any]
) -> None:
    key, key_hash = _session(alice, cart="3 books")
    viewer = _staff(
        "viewer", "view_hardenedsession", "change_hardenedsession", "add_hardenedsession"
    )

    html = _html(viewer.get(CHANGELIST))

    assert key_hash[:16] in _rows(html)
    assert 'name="action"' not in html
    assert "action-select" not in html
    assert "revoke_selected" not in html

    for action in ("revoke_selected", "revoke_users"):
        viewer.post(
            CHANGELIST,
            {"action": action, "_selected_action": [key_hash], "index": "0"},
        )
    assert _row_exists(key_hash, db_alias)
    assert _loads(key) == {"_auth_user_id": str(alice.pk), "cart": "3 books"}
    assert revocations == []
    assert _deletion_entries().count() == 0


def test_staff_with_delete_permission_gets_the_actions(db_alias: str, alice: Any) -> None:
    key, key_hash = _session(alice)
    revoker = _staff("revoker", "view_hardenedsession", "delete_hardenedsession")

    html = _html(revoker.get(CHANGELIST))

    assert 'name="action"' in html
    assert 'value="revoke_selected"' in html
    assert 'value="revoke_users"' in html
    assert _run_action(revoker, "revoke_selected", [key_hash]).status_code == 302
    assert _loads(key) == {}
