"""Revoking sessions from the sessions admin: the actions, their log and their report.

:class:`RevokeActionsAdmin` gives :class:`~hardened_sessions.admin.HardenedSessionAdmin`
its two actions, "Revoke selected sessions" and "Revoke all sessions of these users".
Both need the permission to delete sessions, end the sessions through the configured
engine (:func:`~hardened_sessions.revoke.revoke_sessions`, so cached copies go too, and
the ``session_revoked`` signal names ``Reason.ADMIN``), and leave a ``LogEntry`` per
session really ended, naming it by its row id. A session already past its deadline is
neither counted nor logged as revoked; the message says when some of those asked for
had already ended. The cache engine's page (:mod:`hardened_sessions.admin_cache`) ends
sessions the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from .admin_rows import SessionModelAdmin, row_id
from .models import HardenedSession
from .revoke import revoke_sessions
from .signals import Reason

__all__ = ["RevokeActionsAdmin"]


class RevokeActionsAdmin(SessionModelAdmin):
    """Ending sessions through the engine, logged by row id and reported as they ended."""

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Who may revoke: those allowed to delete sessions (the actions' permission)."""
        return request.user.has_perm("hardened_sessions.delete_hardenedsession")

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
