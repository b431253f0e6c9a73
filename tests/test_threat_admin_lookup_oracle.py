"""Threat: a staff user reads redacted session data through the admin's URL lookups.

Django's changelist turns every query parameter it does not know into a queryset filter
(``?<field>__<lookup>=value``) unless the ``ModelAdmin`` refuses it. The sessions admin
redacts the record's values and shows only 8 hex digits of the key hash, but a staff
user with nothing more than the *view* permission could still ask yes/no questions
about hidden columns, one character at a time:

* ``?data__regex=otp_secret":"J`` answers one row for a right guess, none for a wrong
  one (SQLite, MariaDB); on PostgreSQL ``?data__contains=<hex of the guess>`` does the
  same, ``bytea`` being compared as its hex text;
* ``?key_hash=`` / ``?key_hash__startswith=`` confirm a key hash beyond the prefix shown;
* ``?_popup=1`` (with or without ``_to_field``) prints every row's whole key hash in the
  popup links.

docs/operations.rst: no URL lookup reaches a redacted field; only the admin's own
filters, search, ordering and paging parameters are accepted. Every other one is
refused with 400, before any query, with one answer whatever the guess: same status,
same body. Also here: ``o=`` never sorts by ``data``, ``_changelist_filters`` on the
change page is only carried along in links, ``LogEntry`` rows and the history page name
a session by its short row id, and a history page answers 403 to a user without the
view permission whether or not the row exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connections
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from hardened_sessions import keys
from hardened_sessions.admin import ROW_ID_LENGTH
from hardened_sessions.backends.db import SessionStore
from hardened_sessions.models import HardenedSession
from tests.support.urls_admin import URLCONF

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

CHANGELIST = "/admin/hardened_sessions/hardenedsession/"
PASSWORD = "admin password for tests"
OTP_SECRET = "JBSWY3DPEHPK3PXP"
USER_AGENT = "Mozilla/5.0 (secret-agent 7.1)"
IP_ADDRESS = "10.11.12.13"

_PREFIX_CELL = re.compile(r'class="field-key_prefix">(?:<a [^>]*>)?([0-9a-f]{16})…')


@pytest.fixture(autouse=True)
def _admin_urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=URLCONF, STATIC_URL="/static/"):
        yield


def _staff(username: str, *codenames: str) -> Client:
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=True)
    content_type = ContentType.objects.get_for_model(HardenedSession)
    user.user_permissions.set(
        Permission.objects.filter(content_type=content_type, codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    """Staff with the view permission only: the weakest user the changelist admits."""
    return _staff("viewer", "view_hardenedsession")


@pytest.fixture
def victim(db_alias: str) -> HardenedSession:
    """A signed-in user's session holding a secret, with device metadata."""
    alice = get_user_model().objects.create_user("alice", password=PASSWORD)
    session = SessionStore()
    session["_auth_user_id"] = str(alice.pk)
    session["otp_secret"] = OTP_SECRET
    session.save()
    assert session.session_key is not None
    key_hash = keys.store_key(session.session_key)
    rows = HardenedSession.objects.using(db_alias).filter(pk=key_hash)
    assert rows.update(user_agent=USER_AGENT, ip_address=IP_ADDRESS) == 1
    return rows.get()


def _other_hex(text: str) -> str:
    """``text`` with its last hex digit changed."""
    return text[:-1] + ("0" if text[-1] != "0" else "1")


def _probes(alias: str, row: HardenedSession) -> list[tuple[str, str, str]]:
    """(parameter, right guess, wrong guess) for each hidden or unoffered column."""
    vendor = connections[alias].vendor

    def text(value: str) -> str:
        # PostgreSQL compares bytea through its text form: "\x" and the bytes in hex.
        return value.encode().hex() if vendor == "postgresql" else value

    start = "\\x" + b"hs1:".hex() if vendor == "postgresql" else "hs1:"
    wrong_start = "\\x" + b"hs2:".hex() if vendor == "postgresql" else "hs2:"
    key_hash = row.key_hash
    return [
        ("data__regex", text('otp_secret":"J'), text('otp_secret":"K')),
        ("data__contains", text(f'"otp_secret":"{OTP_SECRET[:3]}'), text('"otp_secret":"ZZZ')),
        ("data__startswith", start, wrong_start),
        ("key_hash", key_hash, _other_hex(key_hash)),
        ("key_hash__startswith", key_hash[:12], _other_hex(key_hash[:12])),
        ("key_hash__regex", f"^{key_hash[:12]}", f"^{_other_hex(key_hash[:12])}"),
        ("pk", key_hash, _other_hex(key_hash)),
        ("pk__in", key_hash, _other_hex(key_hash)),
        ("user_agent__contains", "secret-agent", "public-agent"),
        ("user_agent", USER_AGENT, USER_AGENT + "!"),
        ("ip_address", IP_ADDRESS, "10.11.12.14"),
        ("version", str(row.version), str(row.version + 1000)),
        ("size", str(row.size), str(row.size + 1)),
        ("size__gt", str(row.size - 1), str(row.size)),
        ("user_id", str(row.user_id), "999999"),
        ("expire_date__gt", row.expire_date.isoformat(), "2999-01-01T00:00:00+00:00"),
        ("created__lte", row.created.isoformat(), "2000-01-01T00:00:00+00:00"),
        ("last_activity__gte", row.last_activity.isoformat(), "2999-01-01T00:00:00+00:00"),
        ("state__regex", "act", "zzz"),
    ]


def _answer(client: Client, alias: str, params: dict[str, str]) -> tuple[int, bytes, list[str]]:
    with CaptureQueriesContext(connections[alias]) as queries:
        response = client.get(CHANGELIST, params)
    return response.status_code, response.content, [q["sql"] for q in queries.captured_queries]


def test_lookups_on_hidden_columns_answer_the_same_for_every_guess(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    rows = HardenedSession.objects.using(db_alias)
    oracles = set()
    for param, right, wrong in _probes(db_alias, victim):
        if not param.startswith("state"):
            # Whether the ORM tells the two guesses apart on this database (SQLite's LIKE,
            # for one, never matches a BLOB): then the admin was an oracle.
            value: Any = [right] if param.endswith("__in") else right
            bad: Any = [wrong] if param.endswith("__in") else wrong
            if rows.filter(**{param: value}).exists() and not rows.filter(**{param: bad}).exists():
                oracles.add(param)

        right_status, right_body, right_sql = _answer(viewer, db_alias, {param: right})
        wrong_status, wrong_body, _ = _answer(viewer, db_alias, {param: wrong})

        assert (right_status, wrong_status) == (400, 400), param
        assert right_body == wrong_body, param
        if len(right) >= 8:
            # Refused before the sessions table is asked anything about the guess.
            assert not any(right in sql for sql in right_sql), param

    expected = {"data__regex", "key_hash", "key_hash__startswith", "user_agent__contains"}
    if connections[db_alias].vendor != "sqlite":
        expected.add("data__contains")
    assert expected <= oracles


def test_an_unoffered_lookup_next_to_an_offered_filter_is_refused(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    for params in (
        {"state": "active", "data__regex": "otp"},
        {"q": "alice", "key_hash__startswith": victim.key_hash[:10]},
        {"user": "signed-in", "_changelist_filters": "data__regex=otp"},
        {"_facets": "", "data__contains": "otp"},
        {"o": "1", "p": "1", "unknown": "1"},
    ):
        assert viewer.get(CHANGELIST, params).status_code == 400, params


def test_a_revoker_cannot_select_rows_by_a_hidden_column(
    db_alias: str, victim: HardenedSession
) -> None:
    """``select_across`` runs the action on every row the URL's filters select: those
    filters go through the same allowlist, so the count reported is no oracle either."""
    revoker = _staff("revoker", "view_hardenedsession", "delete_hardenedsession")

    response = revoker.post(
        CHANGELIST + "?data__regex=otp_secret",
        {"action": "revoke_selected", "select_across": "1", "index": "0", "_selected_action": []},
    )

    assert response.status_code == 400
    assert HardenedSession.objects.using(db_alias).filter(pk=victim.pk).exists()


def test_the_offered_parameters_still_work(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    prefix = victim.key_hash[:16]
    for params in (
        {},
        {"state": "active"},
        {"user": "signed-in"},
        {"o": "2"},
        {"o": "-3.1"},
        {"p": "1"},
        {"all": ""},
        {"_facets": ""},
        {"e": "1"},
    ):
        response = viewer.get(CHANGELIST, params)
        assert response.status_code == 200, params
        # The viewer's own session is listed too.
        assert prefix in _PREFIX_CELL.findall(response.content.decode()), params
    for params in (
        {"q": "alice"},
        {"q": "ALI", "o": "-1"},
        {"state": "active", "user": "signed-in", "q": "ali", "o": "-1", "_facets": "", "p": "1"},
    ):
        response = viewer.get(CHANGELIST, params)
        assert response.status_code == 200, params
        assert _PREFIX_CELL.findall(response.content.decode()) == [prefix], params
    for params in ({"state": "expired"}, {"user": "anonymous"}, {"q": "nobody"}):
        response = viewer.get(CHANGELIST, params)
        assert response.status_code == 200, params
        assert _PREFIX_CELL.findall(response.content.decode()) == [], params


def test_facet_counts_count_only_what_the_offered_filters_select(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    html = viewer.get(CHANGELIST, {"_facets": "", "q": "alice"}).content.decode()

    assert "Active (1)" in html
    assert "Expired (0)" in html
    assert "Signed in (1)" in html
    assert "Anonymous (0)" in html
    assert viewer.get(CHANGELIST, {"_facets": "", "data__regex": "otp"}).status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"_popup": "1"},
        {"_popup": "1", "_to_field": "key_hash"},
        {"_to_field": "key_hash"},
        {"_to_field": "data"},
        {"_to_field": "pk"},
    ],
)
def test_popups_and_to_field_are_refused(
    db_alias: str, viewer: Client, victim: HardenedSession, params: dict[str, str]
) -> None:
    """No model points at sessions, so the admin has no popup to offer; a popup's links
    would carry each row's whole key hash (``data-popup-opener``)."""
    response = viewer.get(CHANGELIST, params)

    assert response.status_code == 400
    assert victim.key_hash not in response.content.decode()


@pytest.mark.parametrize(
    "order", ["0", "-0", "0.1.2.3.4.5.6", "99", "-99", "data", "-data", "key_hash", "0.data", "x"]
)
def test_ordering_never_sorts_by_the_record(
    db_alias: str, viewer: Client, victim: HardenedSession, order: str
) -> None:
    """``o`` picks columns of the list by index (the key-hash column sorts by the hash,
    which reveals nothing beyond the 16 hex digits the row links show); never ``data``."""
    with CaptureQueriesContext(connections[db_alias]) as queries:
        response = viewer.get(CHANGELIST, {"o": order})

    assert response.status_code == 200
    for query in queries.captured_queries:
        sql = query["sql"]
        if "ORDER BY" in sql:
            ordering = sql.rsplit("ORDER BY", 1)[1]
            assert "data" not in ordering, sql


def test_changelist_filters_on_the_change_page_are_carried_not_evaluated(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    url = f"{CHANGELIST}{victim.key_hash[:ROW_ID_LENGTH]}/change/"
    right, wrong = 'data__regex=otp_secret":"J', 'data__regex=otp_secret":"K'

    answers = []
    for guess in (right, wrong):
        response = viewer.get(url, {"_changelist_filters": guess})
        assert response.status_code == 200
        # The same page but for the guess it carries along (and the CSRF token).
        page = re.sub(r"otp_secret[^\"&]*", "GUESS", response.content.decode())
        answers.append(re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", page))
        # The way back to the list carries the filter, and the list refuses it.
        back = viewer.get(CHANGELIST + "?" + guess)
        assert back.status_code == 400
    assert answers[0] == answers[1]


# --- the history of a session, and LogEntry ---------------------------------------


def _revoke(client: Client, row: HardenedSession) -> None:
    response = client.post(
        CHANGELIST,
        {
            "action": "revoke_selected",
            "_selected_action": [row.key_hash[:ROW_ID_LENGTH]],
            "index": "0",
            "select_across": "0",
        },
    )
    assert response.status_code == 302


def test_log_entries_name_the_session_by_its_row_id_never_its_hash(
    db_alias: str, victim: HardenedSession
) -> None:
    revoker = _staff("revoker", "view_hardenedsession", "delete_hardenedsession")

    _revoke(revoker, victim)

    entry = LogEntry.objects.get(
        action_flag=DELETION, content_type=ContentType.objects.get_for_model(HardenedSession)
    )
    assert entry.object_id == victim.key_hash[:ROW_ID_LENGTH]
    assert entry.object_repr == f"{victim.key_hash[:16]}…"
    assert victim.key_hash not in entry.change_message
    # The admin's "recent actions" show it without the hash.
    index = revoker.get("/admin/").content.decode()
    assert f"{victim.key_hash[:16]}…" in index
    assert victim.key_hash not in index


def test_the_history_page_names_the_row_by_its_row_id(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    row_id = victim.key_hash[:ROW_ID_LENGTH]

    response = viewer.get(f"{CHANGELIST}{row_id}/history/")

    assert response.status_code == 200
    assert victim.key_hash not in response.content.decode()
    # Only the row id names a row: the whole hash does not.
    assert viewer.get(f"{CHANGELIST}{victim.key_hash}/history/").status_code == 302
    assert viewer.get(f"{CHANGELIST}{victim.key_hash}/change/").status_code == 302


def test_the_history_page_refuses_a_user_without_view_permission_whether_or_not_the_row_exists(
    db_alias: str, victim: HardenedSession
) -> None:
    outsider = _staff("outsider", "add_hardenedsession")
    row_id = victim.key_hash[:ROW_ID_LENGTH]

    existing = outsider.get(f"{CHANGELIST}{row_id}/history/")
    missing = outsider.get(f"{CHANGELIST}{_other_hex(row_id)}/history/")

    assert (existing.status_code, missing.status_code) == (403, 403)
    assert existing.content == missing.content


def test_autocomplete_offers_nothing_about_sessions(db_alias: str, victim: HardenedSession) -> None:
    superuser = get_user_model().objects.create_superuser("root", password=PASSWORD)
    client = Client()
    client.force_login(superuser)
    for field in ("key_hash", "data", "user_id"):
        response = client.get(
            "/admin/autocomplete/",
            {
                "app_label": "hardened_sessions",
                "model_name": "hardenedsession",
                "field_name": field,
                "term": victim.key_hash[:4],
            },
        )
        assert response.status_code == 403, field
        assert victim.key_hash not in response.content.decode()


def test_the_delete_page_refuses_alike_whether_or_not_the_row_exists(
    db_alias: str, viewer: Client, victim: HardenedSession
) -> None:
    row_id = victim.key_hash[:ROW_ID_LENGTH]
    answers = []
    for rid in (row_id, _other_hex(row_id), victim.key_hash):
        response = viewer.get(f"{CHANGELIST}{rid}/delete/")
        answers.append((response.status_code, response.content))
    assert {status for status, _ in answers} == {403}
    assert len({body for _, body in answers}) == 1
    assert HardenedSession.objects.using(db_alias).filter(pk=victim.pk).exists()


def test_actions_select_rows_only_by_their_row_id(db_alias: str, victim: HardenedSession) -> None:
    """``_selected_action`` names a row by exactly its row id: not by the whole hash (which
    the admin never shows), nor by a shorter prefix that could match several rows."""
    revoker = _staff("revoker", "view_hardenedsession", "delete_hardenedsession")
    for selected in (victim.key_hash, victim.key_hash[:8], victim.key_hash[: ROW_ID_LENGTH - 1]):
        response = revoker.post(
            CHANGELIST,
            {"action": "revoke_selected", "_selected_action": [selected], "index": "0"},
            follow=True,
        )
        assert response.status_code == 200
        assert "revoked." not in response.content.decode()
        assert HardenedSession.objects.using(db_alias).filter(pk=victim.pk).exists(), selected

    _revoke(revoker, victim)
    assert not HardenedSession.objects.using(db_alias).filter(pk=victim.pk).exists()


def test_a_revoke_of_sessions_already_gone_is_a_warning_not_a_success(
    db_alias: str, victim: HardenedSession
) -> None:
    """Two admins revoke the same rows at once: the one whose rows were already gone
    by the time its revoke ran ends nothing, and is told so with a warning."""
    from django.contrib import admin
    from django.contrib.messages import constants, get_messages
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.test import RequestFactory

    revoker = get_user_model().objects.create_superuser("revoker", password=PASSWORD)
    _, other_hash = _session_of(victim.user_id)
    request = RequestFactory().post(CHANGELIST)
    request.user = revoker
    request.session = SessionStore()
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
    model_admin = admin.site.get_model_admin(HardenedSession)
    selected = HardenedSession.objects.using(db_alias).filter(pk__in=[victim.pk, other_hash])
    assert len(selected) == 2  # the rows the action was asked about, as it loads them
    SessionStore().revoke(victim.key_hash)  # the other admin was quicker for this one

    model_admin.revoke_selected(request, selected)  # type: ignore[attr-defined]

    assert [(m.level, str(m)) for m in get_messages(request)] == [
        (constants.WARNING, "1 session revoked. The others had already ended.")
    ]
    entries = LogEntry.objects.filter(action_flag=DELETION)
    assert [entry.object_id for entry in entries] == [other_hash[:ROW_ID_LENGTH]]

    model_admin.revoke_selected(request, selected)  # type: ignore[attr-defined]

    assert [(m.level, str(m)) for m in get_messages(request)][-1] == (
        constants.WARNING,
        "No session was revoked: none of them was live any more.",
    )
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 1


def _session_of(user_id: str | None) -> tuple[str, str]:
    session = SessionStore()
    session["_auth_user_id"] = user_id
    session.save()
    assert session.session_key is not None
    return session.session_key, keys.store_key(session.session_key)


def test_the_admin_login_does_not_follow_next_off_site(db_alias: str) -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    client = Client()
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        response = client.post(
            f"/admin/login/?next={target}", {"username": "root", "password": PASSWORD}
        )
        assert response.status_code == 302
        assert "evil.example" not in response["Location"], target
        client.logout()
