"""What the sessions admin lets a URL ask: its own filters, nothing else.

The changelist accepts only its own parameters: the ``state`` and ``user`` filters
defined here, and Django's search, ordering, paging and facets. Django hands every
other parameter to ``lookup_allowed`` before filtering; :class:`LookupAllowlistAdmin`
answers False for any lookup but the offered filters, which makes the changelist raise
``DisallowedModelAdminLookup`` (a ``SuspiciousOperation``: 400) before a query runs,
whatever the value, so that no answer, count or order says anything about a redacted
value (a lookup on ``data`` or ``key_hash`` would be an oracle on them).

Popups and ``_to_field`` are refused too: no model points at sessions, and a popup's
links would carry whole key hashes. The history view checks the permission before
looking the row up, so that it says nothing about which row ids exist.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.options import IS_POPUP_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .admin_rows import SessionModelAdmin

__all__ = ["LookupAllowlistAdmin", "StateFilter", "UserFilter", "refuse_popups"]


class StateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("active", _("Active")), ("expired", _("Expired"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(expire_date__gt=timezone.now())
        if self.value() == "expired":
            return queryset.filter(expire_date__lte=timezone.now())
        return queryset


class UserFilter(admin.SimpleListFilter):
    title = _("user")
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("signed-in", _("Signed in")), ("anonymous", _("Anonymous"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "signed-in":
            return queryset.filter(user_id__isnull=False)
        if self.value() == "anonymous":
            return queryset.filter(user_id__isnull=True)
        return queryset


def refuse_popups(request: HttpRequest) -> None:
    """Raise ``DisallowedModelAdminLookup`` (400) for a popup: a popup's rows carry each
    row's pk (the whole key hash) to the opener."""
    if IS_POPUP_VAR in request.GET or IS_POPUP_VAR in request.POST:
        raise DisallowedModelAdminLookup("The sessions admin offers no popups.")


class LookupAllowlistAdmin(SessionModelAdmin):
    """Only the admin's own parameters reach a query."""

    def offered_lookups(self, request: HttpRequest | None = None) -> frozenset[str]:
        """The query parameters the list filters read (Django hands every other
        parameter not in its own set of search, ordering and paging ones to
        ``lookup_allowed`` before filtering)."""
        filters = self.get_list_filter(request) if request is not None else self.list_filter
        return frozenset(
            name
            for spec in filters
            if isinstance(name := getattr(spec, "parameter_name", None), str)
        )

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Not Django's default (any lookup on a local field): a lookup on ``data`` or
        # ``key_hash`` is an oracle on the redacted values. False makes the changelist
        # raise DisallowedModelAdminLookup, a SuspiciousOperation: 400, before any query
        # and whatever the value.
        return lookup in self.offered_lookups(request)

    def to_field_allowed(self, request: HttpRequest, to_field: str) -> bool:
        # No model refers to sessions, so no widget needs another field; the pk would be
        # the whole key hash.
        return False

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Django looks the row up before checking the permission: a user without it
        # would learn which row ids exist (redirect) and which do not (403).
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        # get_object() admits only a row id: the page's links name the row by it.
        context = {**(extra_context or {}), "row_id": object_id}
        return super().history_view(request, object_id, context)
