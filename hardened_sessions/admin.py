"""The admin for ``HardenedSession``: inspect and revoke, never edit.

Rows show a short prefix of the key hash (never a usable key), the user, the
times, the size and whether the session is still active. The detail page
decodes and verifies the record and lists its keys with the type and length
of each value; the values themselves are never shown. Actions revoke the
selected sessions, or every session of the users they belong to, through the
configured engine (so cached copies go too), and leave ``LogEntry`` rows.

No URL reaches a hidden column: the changelist accepts only its own parameters (the
``state`` and ``user`` filters, search, ordering, paging, facets); any other lookup is
refused with 400 before a query runs, whatever its value, so that no answer, count or
order says anything about a redacted value. Popups and ``_to_field`` are refused: no
model points at sessions, and a popup's links would carry whole key hashes.

The table is what the db and cached_db engines hold. On the cache engine the page shows
what the cache holds instead: a searched user's live sessions through the per-user
index (Redis, LocMemCache), never rows of another engine, and a notice where the cache
cannot list them (memcached, Redis Cluster).

This module registers :class:`HardenedSessionAdmin` (Django's admin autodiscovery
imports it) and puts its parts together, each in a module of its own:

* ``admin_rows.py``: rows named by a prefix of their key hash (:func:`row_id`);
* ``admin_lookups.py``: the filters, and the refusal of every other lookup, of popups
  and of existence probes;
* ``admin_columns.py``: the columns, with the values redacted (:func:`describe_value`);
* ``admin_revoke.py``: the revoke actions, their ``LogEntry`` rows and messages;
* ``admin_cache.py``: the page on the cache engine;
* ``admin_user.py``: "End all sessions" for the User admin
  (:class:`EndSessionsAdminMixin`).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse

from .admin_cache import MODEL_ENGINE, CacheEnginePageAdmin, engine_kind
from .admin_columns import SessionColumnsAdmin, describe_value
from .admin_lookups import LookupAllowlistAdmin, StateFilter, UserFilter, refuse_popups
from .admin_rows import ROW_ID_LENGTH as ROW_ID_LENGTH
from .admin_rows import RowIdAdmin, is_row_id
from .admin_rows import row_id as row_id
from .admin_user import EndSessionsAdminMixin
from .models import HardenedSession

__all__ = ["EndSessionsAdminMixin", "HardenedSessionAdmin", "describe_value"]

# ``ROW_ID_LENGTH`` and ``row_id`` (admin_rows.py) are imported under their own names, so
# ``hardened_sessions.admin.row_id`` names the row id, as views_sessions.py says.


@admin.register(HardenedSession)
class HardenedSessionAdmin(
    LookupAllowlistAdmin, RowIdAdmin, SessionColumnsAdmin, CacheEnginePageAdmin
):
    list_display = (
        "key_prefix",
        "user_display",
        "created",
        "last_activity",
        "expire_date",
        "size",
        "is_active",
    )
    list_filter = (StateFilter, UserFilter)
    search_fields = ("user_id",)
    ordering = ("-last_activity",)
    actions = ("revoke_selected", "revoke_users")
    fields = (
        "key_prefix",
        "user_display",
        "created",
        "last_activity",
        "expire_date",
        "size",
        "version",
        "ip_address",
        "user_agent",
        "is_active",
        "data_summary",
    )
    readonly_fields = fields
    show_full_result_count = False
    list_per_page = 50

    # -- never editable ----------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting goes through the revoke actions (the engine), not a row delete that
        # would leave cached copies behind.
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).defer("data")

    # -- which page, which row ---------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        refuse_popups(request)
        if engine_kind() != MODEL_ENGINE:
            return self.store_changelist_view(request)
        return super().changelist_view(request, extra_context)

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        if from_field is not None or not is_row_id(object_id):
            return None
        if engine_kind() != MODEL_ENGINE:
            return None  # the table is not where this engine keeps its sessions
        matches = list(self.get_queryset(request).filter(key_hash__startswith=object_id)[:2])
        return matches[0] if len(matches) == 1 else None

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Search by username (and by raw user id)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        model = get_user_model()
        field = getattr(model, "USERNAME_FIELD", "username")
        pks = [
            str(pk)
            for pk in model._default_manager.filter(**{f"{field}__icontains": term}).values_list(
                "pk", flat=True
            )[:1000]
        ]
        return queryset.filter(Q(user_id__in=pks) | Q(user_id=term)), False
