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
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.views.main import SEARCH_VAR, ChangeList
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from . import record
from .admin_user import EndSessionsAdminMixin
from .conf import get_config
from .models import HardenedSession
from .revoke import revoke_sessions, revoke_user_sessions, user_sessions
from .signals import Reason

__all__ = ["EndSessionsAdminMixin", "HardenedSessionAdmin", "describe_value"]

# Rows are named in the admin's HTML and URLs by this many hex digits of their key
# hash, never by the whole hash (64 bits: unambiguous in practice; a name that is
# ambiguous matches no row).
ROW_ID_LENGTH = 16
_HEX = frozenset("0123456789abcdef")


def row_id(obj: HardenedSession) -> str:
    return obj.key_hash[:ROW_ID_LENGTH]


def _is_row_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == ROW_ID_LENGTH and _HEX.issuperset(value)


# How the configured engine keeps its sessions, as far as this admin is concerned.
MODEL_ENGINE = "model"  # db, cached_db: the table is the truth
CACHE_ENGINE = "cache"  # hardened_sessions.backends.cache: the cache is, the table is not
OTHER_ENGINE = "other"  # an engine of another package: neither is known here


def engine_kind() -> str:
    """Which of the above ``SESSION_ENGINE`` is (subclasses count as their base)."""
    from .backends.cache import SessionStore as CacheStore
    from .backends.db import SessionStore as DBStore

    store_class = getattr(import_module(settings.SESSION_ENGINE), "SessionStore", None)
    if isinstance(store_class, type) and issubclass(store_class, DBStore):
        return MODEL_ENGINE
    if isinstance(store_class, type) and issubclass(store_class, CacheStore):
        return CACHE_ENGINE
    return OTHER_ENGINE


# Users listed at most for one search on the cache engine's page.
MAX_USERS_LISTED = 20


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

    # -- only the admin's own parameters reach a query -------------------------------

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

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if IS_POPUP_VAR in request.GET or IS_POPUP_VAR in request.POST:
            # A popup's rows carry each row's pk (the whole key hash) to the opener.
            raise DisallowedModelAdminLookup("The sessions admin offers no popups.")
        if engine_kind() != MODEL_ENGINE:
            return self.store_changelist_view(request)
        return super().changelist_view(request, extra_context)

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
        if engine_kind() != MODEL_ENGINE:
            return None  # the table is not where this engine keeps its sessions
        matches = list(self.get_queryset(request).filter(key_hash__startswith=object_id)[:2])
        return matches[0] if len(matches) == 1 else None

    # -- columns -----------------------------------------------------------------

    @admin.display(description=_("session"), ordering="key_hash")
    def key_prefix(self, obj: HardenedSession) -> str:
        return f"{row_id(obj)}…"

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

    def log_deletions(
        self, request: HttpRequest, queryset: Iterable[HardenedSession], reason: str = ""
    ) -> list[LogEntry]:
        """``LogEntry`` rows naming each session as the admin's URLs do: by its row id,
        never its whole key hash (Django's default writes ``str(obj.pk)``)."""
        content_type = ContentType.objects.get_for_model(HardenedSession)
        user_pk: Any = request.user.pk
        entries = [
            LogEntry(
                user_id=user_pk,
                content_type=content_type,
                object_id=row_id(obj),
                object_repr=str(obj)[:200],
                action_flag=DELETION,
                change_message=reason,
            )
            for obj in queryset
        ]
        return LogEntry.objects.bulk_create(entries) if entries else []

    def end_sessions(
        self, request: HttpRequest, sessions: Iterable[HardenedSession], reason: str
    ) -> int:
        """End these sessions through the engine; log and count those really ended. The
        row of a session already past its deadline goes too, but that session had
        ended: it is neither counted nor logged as revoked."""
        ended = []
        for session in sessions:
            live = not session.is_expired
            user_ids = {session.key_hash: session.user_id}
            revoked = revoke_sessions(
                [session.key_hash], reason=Reason.ADMIN, description=reason, user_ids=user_ids
            )
            if revoked and live:
                ended.append(session)
        self.log_deletions(request, ended, reason)
        return len(ended)

    def report_revoked(self, request: HttpRequest, ended: int, wanted: int, text: str) -> None:
        """Say what happened: success only when every session asked for was ended."""
        if ended == 0:
            self.message_user(
                request,
                gettext("No session was revoked: none of them was live any more."),
                messages.WARNING,
            )
        elif ended < wanted:
            self.message_user(
                request,
                text + " " + gettext("The others had already ended."),
                messages.WARNING,
            )
        else:
            self.message_user(request, text, messages.SUCCESS)

    @admin.action(description=_("Revoke selected sessions"), permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        rows = list(queryset)
        ended = self.end_sessions(request, rows, "revoked in the admin")
        self.report_revoked(
            request,
            ended,
            len(rows),
            ngettext("%d session revoked.", "%d sessions revoked.", ended) % ended,
        )

    @admin.action(description=_("Revoke all sessions of these users"), permissions=["revoke"])
    def revoke_users(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        user_ids = {uid for uid in queryset.values_list("user_id", flat=True) if uid}
        rows = list(
            HardenedSession.objects.using(queryset.db).filter(user_id__in=user_ids).defer("data")
        )
        ended = self.end_sessions(request, rows, "all sessions of the user revoked in the admin")
        self.report_revoked(
            request,
            ended,
            len(rows),
            ngettext(
                "%(count)d session of %(users)d user(s) revoked.",
                "%(count)d sessions of %(users)d user(s) revoked.",
                ended,
            )
            % {"count": ended, "users": len(user_ids)},
        )

    # -- engines whose sessions are not the table's rows --------------------------------

    def store_changelist_view(self, request: HttpRequest) -> HttpResponse:
        """The sessions page on an engine other than db/cached_db: what that engine
        holds, never the table's rows (left over from another engine)."""
        kind = engine_kind()
        if request.method == "POST":
            return self._store_revoke(request, kind)
        unknown = set(request.GET) - {SEARCH_VAR}
        if unknown:
            raise DisallowedModelAdminLookup(f"Filtering by {sorted(unknown)[0]} not allowed")
        term = request.GET.get(SEARCH_VAR, "").strip()
        candidates: list[Any] = []
        more_candidates = False
        chosen = None
        sessions: list[HardenedSession] = []
        unlisted = None
        if kind == CACHE_ENGINE:
            try:
                if term:
                    candidates, more_candidates = self._users_with_sessions(term)
                    chosen, sessions = _pick_user(candidates, term)
                else:
                    # Whether this cache can list sessions at all (the viewer's own).
                    user_sessions(request.user)
            except NotImplementedError as exc:
                unlisted = str(exc)
                candidates, chosen, sessions = [], None, []
        context = {
            **self.admin_site.each_context(request),
            "title": capfirst(self.opts.verbose_name_plural),
            "subtitle": None,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "engine": settings.SESSION_ENGINE,
            "engine_kind": kind,
            "cache_alias": getattr(settings, "SESSION_CACHE_ALIAS", "default"),
            "unlisted": unlisted,
            "search_var": SEARCH_VAR,
            "term": term,
            "candidates": [user for user, _ in candidates],
            "more_candidates": more_candidates,
            "chosen": chosen,
            "chosen_name": chosen.get_username() if chosen is not None else "",
            "sessions": [{"row_id": row_id(s), "prefix": str(s), "session": s} for s in sessions],
            "can_revoke": self.has_revoke_permission(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            f"admin/{self.opts.app_label}/{self.opts.model_name}/store_sessions.html",
            context,
        )

    def _users_with_sessions(self, term: str) -> tuple[list[tuple[Any, list[Any]]], bool]:
        """Users whose username contains ``term`` and who have live sessions, with those
        sessions (as the db engine's search, which lists sessions, never bare users);
        and whether more users matched than were looked at."""
        model = get_user_model()
        field = getattr(model, "USERNAME_FIELD", "username")
        manager = model._default_manager
        # The user named exactly comes first, however many others contain the term.
        users = list(manager.filter(**{field: term})[:1])
        users += (
            manager.filter(**{f"{field}__icontains": term})
            .exclude(pk__in=[user.pk for user in users])
            .order_by(field)[: MAX_USERS_LISTED + 1 - len(users)]
        )
        found = []
        for user in users[:MAX_USERS_LISTED]:
            live = user_sessions(user)
            if live:
                found.append((user, live))
        return found, len(users) > MAX_USERS_LISTED

    def _store_revoke(self, request: HttpRequest, kind: str) -> HttpResponse:
        if not self.has_revoke_permission(request):
            raise PermissionDenied
        changelist = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )
        action = request.POST.get("action")
        if kind != CACHE_ENGINE or action not in ("revoke_session", "revoke_user"):
            raise DisallowedModelAdminLookup("Not an action of this page.")
        user = _user_by_pk(request.POST.get("user"))
        if user is None:
            self.message_user(request, gettext("No such user."), messages.ERROR)
            return HttpResponseRedirect(changelist)
        back = HttpResponseRedirect(f"{changelist}?{urlencode({SEARCH_VAR: user.get_username()})}")
        name = user.get_username()
        try:
            live = user_sessions(user)
        except NotImplementedError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return back
        if action == "revoke_session":
            wanted = request.POST.get("session")
            # Only a session of the user the page showed, named by its row id.
            chosen = [s for s in live if _is_row_id(wanted) and row_id(s) == wanted]
            ended = self.end_sessions(request, chosen, "revoked in the admin")
            if ended:
                self.message_user(
                    request,
                    gettext("1 session of %(user)s revoked.") % {"user": name},
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    gettext(
                        "No session was revoked: that session of %(user)s is not live any more."
                    )
                    % {"user": name},
                    messages.WARNING,
                )
            return back
        reason = "all sessions of the user revoked in the admin"
        ended = self.end_sessions(request, live, reason)
        # Sessions begun since the listing: the engine's own per-user revoke finds them.
        ended += revoke_user_sessions(user, reason=Reason.ADMIN, description=reason)
        if ended:
            self.message_user(
                request,
                ngettext(
                    "%(count)d session of %(user)s revoked.",
                    "%(count)d sessions of %(user)s revoked.",
                    ended,
                )
                % {"count": ended, "user": name},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                gettext("No session was revoked: %(user)s had no live session.") % {"user": name},
                messages.WARNING,
            )
        return back


def _pick_user(found: list[tuple[Any, list[Any]]], term: str) -> tuple[Any, list[Any]]:
    """The user a search names, with their sessions: the one whose username is the
    term, else the only one found."""
    for user, live in found:
        if user.get_username() == term:
            return user, live
    return found[0] if len(found) == 1 else (None, [])


def _user_by_pk(pk: object) -> Any:
    if not isinstance(pk, str) or not pk:
        return None
    try:
        return get_user_model()._default_manager.filter(pk=pk).first()
    except (ValueError, TypeError, ValidationError):  # not a value the pk column holds
        return None
