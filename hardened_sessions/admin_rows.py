"""How the sessions admin names a row: by a prefix of its key hash, never the whole hash.

A session's row is keyed by its whole key hash; the admin's HTML and URLs name it by
its first :data:`ROW_ID_LENGTH` hex digits instead (:func:`row_id`): the change page's
URL, the changelist's links and action checkboxes, the ``LogEntry`` rows. A name that
is not a row id, or that is ambiguous, names no row.

:class:`RowIdAdmin` is the part of :class:`~hardened_sessions.admin.HardenedSessionAdmin`
that writes row ids into the changelist and reads the selected ones back into key
hashes for an action.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _

from .models import HardenedSession

__all__ = [
    "ROW_ID_LENGTH",
    "RowIdAdmin",
    "RowIdChangeList",
    "SessionModelAdmin",
    "is_row_id",
    "row_id",
]

# The base of each part of the sessions admin. ``ModelAdmin`` takes its model as a type
# argument only in django-stubs: at run time the class is not subscriptable.
if TYPE_CHECKING:
    SessionModelAdmin = admin.ModelAdmin[HardenedSession]
else:
    SessionModelAdmin = admin.ModelAdmin

# Rows are named in the admin's HTML and URLs by this many hex digits of their key
# hash, never by the whole hash (64 bits: unambiguous in practice; a name that is
# ambiguous matches no row).
ROW_ID_LENGTH = 16
_HEX = frozenset("0123456789abcdef")


def row_id(obj: HardenedSession) -> str:
    return obj.key_hash[:ROW_ID_LENGTH]


def is_row_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == ROW_ID_LENGTH and _HEX.issuperset(value)


class RowIdChangeList(ChangeList):
    def url_for_result(self, result: Any) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(row_id(result),),
            current_app=self.model_admin.admin_site.name,
        )


class RowIdAdmin(SessionModelAdmin):
    """Rows are named by a prefix of their key hash, never the whole hash."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RowIdChangeList

    @admin.display(description=mark_safe('<input type="checkbox" id="action-toggle">'))
    def action_checkbox(self, obj: HardenedSession) -> SafeString:
        attrs = {
            "class": "action-select",
            "aria-label": format_html(str(_("Select this object for an action - {}")), obj),
        }
        checkbox = forms.CheckboxInput(attrs, lambda value: False)
        return checkbox.render(helpers.ACTION_CHECKBOX_NAME, row_id(obj))

    def _store_keys(self, queryset: QuerySet[Any], row_ids: list[str]) -> list[str]:
        """The key hashes the row names denote (each must name exactly one row)."""
        found = []
        for rid in dict.fromkeys(r for r in row_ids if is_row_id(r)):
            matches = list(
                queryset.filter(key_hash__startswith=rid).values_list("pk", flat=True)[:2]
            )
            if len(matches) == 1:
                found.append(matches[0])
        return found

    def response_action(  # type: ignore[override]
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponseBase | None:
        post = request.POST.copy()
        post.setlist(
            helpers.ACTION_CHECKBOX_NAME,
            self._store_keys(queryset, post.getlist(helpers.ACTION_CHECKBOX_NAME)),
        )
        request.POST = post  # type: ignore[assignment]
        return super().response_action(request, queryset, *args, **kwargs)
