"""The sessions admin's page on the cache engine: what the cache holds, not the table.

The ``HardenedSession`` table is what the db and cached_db engines hold. On the cache
engine (``hardened_sessions.backends.cache`` or a subclass) the table's rows, if any,
are left over from another engine, so the changelist shows what the cache holds
instead (:meth:`CacheEnginePageAdmin.store_changelist_view`): a searched user's live
sessions through the per-user index (Redis, LocMemCache), never rows of another
engine, and a notice where the cache cannot list them (memcached, Redis Cluster). The
page accepts only the search parameter (anything else is 400), and its two buttons
revoke one listed session of the user, or all of them, through the engine. On an
engine of another package the page lists nothing and says why.

:func:`engine_kind` says which of these the configured ``SESSION_ENGINE`` is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.contrib.admin.views.main import SEARCH_VAR
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.text import capfirst
from django.utils.translation import gettext, ngettext

from .admin_revoke import RevokeActionsAdmin
from .admin_rows import is_row_id, row_id
from .capabilities import Capability, engine_capabilities
from .models import HardenedSession
from .revoke import revoke_user_sessions, user_sessions
from .signals import Reason

__all__ = [
    "CACHE_ENGINE",
    "MAX_USERS_LISTED",
    "MODEL_ENGINE",
    "OTHER_ENGINE",
    "CacheEnginePageAdmin",
    "engine_kind",
]

# How the configured engine keeps its sessions, as far as this admin is concerned.
MODEL_ENGINE = "model"  # db, cached_db: the table is the truth
CACHE_ENGINE = "cache"  # hardened_sessions.backends.cache: the cache is, the table is not
OTHER_ENGINE = "other"  # an engine of another package: neither is known here


def engine_kind() -> str:
    """Which of the above ``SESSION_ENGINE`` is (subclasses count as their base)."""
    caps = engine_capabilities()
    if Capability.ROWS in caps:
        return MODEL_ENGINE
    if Capability.CACHE in caps:
        return CACHE_ENGINE
    return OTHER_ENGINE


# Users listed at most for one search on the cache engine's page.
MAX_USERS_LISTED = 20


class CacheEnginePageAdmin(RevokeActionsAdmin):
    """The sessions page of engines whose sessions are not the table's rows."""

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
            chosen = [s for s in live if is_row_id(wanted) and row_id(s) == wanted]
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
