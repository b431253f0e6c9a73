"""The admin for ``HardenedSession``: inspect and revoke, never edit.

Rows show a short prefix of the key hash (never a usable key), the user, the
times, the size and whether the session is still active. The detail page
decodes and verifies the record and lists its keys with the type and length
of each value; the values themselves are never shown. Actions revoke the
selected sessions, or every session of the users they belong to, through the
configured engine (so cached copies go too), and leave ``LogEntry`` rows.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import record
from .conf import get_config
from .models import HardenedSession
from .revoke import revoke_sessions

__all__ = ["HardenedSessionAdmin", "describe_value"]

# Rows are named in the admin's HTML and URLs by this many hex digits of their key
# hash, never by the whole hash (64 bits: unambiguous in practice; a name that is
# ambiguous matches no row).
ROW_ID_LENGTH = 16
_HEX = frozenset("0123456789abcdef")


def row_id(obj: HardenedSession) -> str:
    return obj.key_hash[:ROW_ID_LENGTH]


def _is_row_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == ROW_ID_LENGTH and _HEX.issuperset(value)


class _ChangeList(ChangeList):
    def url_for_result(self, result: Any) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(row_id(result),),
            current_app=self.model_admin.admin_site.name,
        )


def describe_value(value: Any) -> str:
    """Type and size of a session value, never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return ngettext("string, %d character", "string, %d characters", len(value)) % len(value)
    if isinstance(value, list):
        return ngettext("list, %d item", "list, %d items", len(value)) % len(value)
    if isinstance(value, dict):
        return ngettext("object, %d key", "object, %d keys", len(value)) % len(value)
    return type(value).__name__


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


@admin.register(HardenedSession)
class HardenedSessionAdmin(admin.ModelAdmin):
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

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Who may revoke: those allowed to delete sessions (the actions' permission)."""
        return request.user.has_perm("hardened_sessions.delete_hardenedsession")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).defer("data")

    # -- rows are named by a prefix of their key hash, never the whole hash ----------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _ChangeList

    @admin.display(description=mark_safe('<input type="checkbox" id="action-toggle">'))
    def action_checkbox(self, obj: HardenedSession) -> SafeString:
        attrs = {
            "class": "action-select",
            "aria-label": format_html(str(_("Select this object for an action - {}")), obj),
        }
        checkbox = forms.CheckboxInput(attrs, lambda value: False)
        return checkbox.render(helpers.ACTION_CHECKBOX_NAME, row_id(obj))

    def _key_hashes(self, queryset: QuerySet[Any], row_ids: list[str]) -> list[str]:
        """The key hashes the row names denote (each must name exactly one row)."""
        found = []
        for rid in dict.fromkeys(r for r in row_ids if _is_row_id(r)):
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
            self._key_hashes(queryset, post.getlist(helpers.ACTION_CHECKBOX_NAME)),
        )
        request.POST = post  # type: ignore[assignment]
        return super().response_action(request, queryset, *args, **kwargs)

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        if from_field is not None or not _is_row_id(object_id):
            return None
        matches = list(self.get_queryset(request).filter(key_hash__startswith=object_id)[:2])
        return matches[0] if len(matches) == 1 else None

    # -- columns -----------------------------------------------------------------

    @admin.display(description=_("session"), ordering="key_hash")
    def key_prefix(self, obj: HardenedSession) -> str:
        return f"{obj.key_hash[:8]}…"

    @admin.display(description=_("user"), ordering="user_id")
    def user_display(self, obj: HardenedSession) -> str:
        if obj.user_id is None:
            return "—"
        try:
            user = get_user_model()._default_manager.filter(pk=obj.user_id).first()
        except (ValueError, TypeError):  # a pk column that can't hold this value
            user = None
        return f"{user.get_username()} ({obj.user_id})" if user else obj.user_id

    @admin.display(description=_("active"), boolean=True)
    def is_active(self, obj: HardenedSession) -> bool:
        return not obj.is_expired

    @admin.display(description=_("data (values redacted)"))
    def data_summary(self, obj: HardenedSession) -> SafeString | str:
        raw = (
            HardenedSession.objects.using(obj._state.db)
            .filter(pk=obj.pk)
            .values_list("data", flat=True)
            .first()
        )
        if raw is None:
            return "—"
        try:
            rec = record.decode(bytes(raw), obj.key_hash, get_config().max_bytes)
        except record.CorruptRecord as exc:
            return f"rejected: {exc.reason}"
        if not rec.data:
            return "(empty)"
        return format_html_join(
            "",
            "<div><code>{}</code>: {}</div>",
            ((key, describe_value(value)) for key, value in sorted(rec.data.items())),
        )

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

    # -- actions -----------------------------------------------------------------

    def _revoke(self, request: HttpRequest, rows: QuerySet[Any], reason: str) -> int:
        victims = list(rows)
        ended = revoke_sessions(
            [row.key_hash for row in victims],
            reason=reason,
            user_ids={row.key_hash: row.user_id for row in victims},
        )
        if victims:
            self.log_deletions(request, victims)  # type: ignore[arg-type]
        return ended

    @admin.action(description=_("Revoke selected sessions"), permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ended = self._revoke(request, queryset, "revoked in the admin")
        self.message_user(
            request,
            ngettext("%d session revoked.", "%d sessions revoked.", ended) % ended,
            messages.SUCCESS,
        )

    @admin.action(description=_("Revoke all sessions of these users"), permissions=["revoke"])
    def revoke_users(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        user_ids = {uid for uid in queryset.values_list("user_id", flat=True) if uid}
        rows = HardenedSession.objects.using(queryset.db).filter(user_id__in=user_ids)
        ended = self._revoke(request, rows, "all sessions of the user revoked in the admin")
        self.message_user(
            request,
            ngettext(
                "%(count)d session of %(users)d user(s) revoked.",
                "%(count)d sessions of %(users)d user(s) revoked.",
                ended,
            )
            % {"count": ended, "users": len(user_ids)},
            messages.SUCCESS,
        )
