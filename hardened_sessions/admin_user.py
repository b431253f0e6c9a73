""" "End all sessions" for the User admin.

:class:`EndSessionsAdminMixin` adds, to a ``ModelAdmin`` of the user model, an action
"End all sessions" on the changelist and a button of the same name on the change page.
Both need the permission ``hardened_sessions.delete_hardenedsession`` (the sessions
admin's revoke permission), show a confirmation page first and act only on a POST with
Django's CSRF token, report how many sessions really ended (a warning when none did),
and leave a ``LogEntry`` on each user ("Ended N sessions."). Where the store cannot list
a user's sessions (memcached, Redis Cluster) they say so as an error and end nothing.

A project with its own UserAdmin adds the mixin to it::

    @admin.register(User)
    class UserAdmin(EndSessionsAdminMixin, django.contrib.auth.admin.UserAdmin): ...

When Django's own ``UserAdmin`` is the one registered on ``admin.site``, the app's
``ready()`` replaces it with a subclass that combines the two
(:func:`apply_to_default_user_admin`); any other registered class is left alone.
"""

from __future__ import annotations

import sys
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import select_template
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods

from .account import REASON_ADMIN
from .revoke import revoke_user_sessions

__all__ = ["EndSessionsAdminMixin", "apply_to_default_user_admin"]

CONFIRMATION_TEMPLATE = "admin/hardened_sessions/end_sessions_confirmation.html"
CHANGE_FORM_TEMPLATE = "admin/hardened_sessions/end_sessions_change_form.html"


class EndSessionsAdminMixin:
    """Put before the ``ModelAdmin`` class of the user model in its bases."""

    #: The permission that allows ending a user's sessions.
    end_sessions_permission = "hardened_sessions.delete_hardenedsession"

    # Provided by the ModelAdmin this is mixed into.
    opts: Any
    admin_site: Any
    actions: Any

    def has_end_sessions_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(self.end_sessions_permission))

    # -- ending, counting, logging ----------------------------------------------------

    def end_sessions_of(self, request: HttpRequest, user: Any) -> int:
        """End every session of ``user``; log how many ended on the user. Raises
        ``NotImplementedError`` where the store cannot list a user's sessions."""
        ended = revoke_user_sessions(user, reason=REASON_ADMIN)
        message = ngettext("Ended %d session.", "Ended %d sessions.", ended) % ended
        self.log_change(request, user, message)  # type: ignore[attr-defined]
        return ended

    # -- the action ---------------------------------------------------------------------

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # ``action_location``: Django 6.1 asks for the change list's and the change
        # form's actions apart (and warns about overrides without the parameter); this
        # action is the change list's only (the change page has its button).
        location = {} if action_location is None else {"action_location": action_location}
        actions: dict[str, Any] = super().get_actions(request, **location)  # type: ignore[misc]
        # Django offers no actions at all in popups or with ``actions = None``.
        if self.actions is None or IS_POPUP_VAR in request.GET or "end_all_sessions" in actions:
            return actions
        if self.has_end_sessions_permission(request):
            # get_action() builds the entry as this Django version lists actions.
            action = self.get_action("end_all_sessions", *location.values())  # type: ignore[attr-defined]
            if action:
                actions["end_all_sessions"] = action
        return actions

    @admin.action(description=_("End all sessions"))
    def end_all_sessions(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        if not self.has_end_sessions_permission(request):
            raise PermissionDenied
        users = list(queryset)
        if request.POST.get("post") != "yes":
            return self._confirmation(request, users, action=True)
        total = 0
        try:
            for user in users:
                total += self.end_sessions_of(request, user)
        except NotImplementedError as exc:
            self.message_user(request, str(exc), messages.ERROR)  # type: ignore[attr-defined]
            return None
        if total:
            text = ngettext(
                "Ended %(count)d session of %(users)d users.",
                "Ended %(count)d sessions of %(users)d users.",
                total,
            ) % {"count": total, "users": len(users)}
            if len(users) == 1:
                text = ngettext(
                    "Ended %(count)d session of %(user)s.",
                    "Ended %(count)d sessions of %(user)s.",
                    total,
                ) % {"count": total, "user": users[0].get_username()}
            self.message_user(request, text, messages.SUCCESS)  # type: ignore[attr-defined]
        else:
            self.message_user(  # type: ignore[attr-defined]
                request,
                gettext("No session was ended: none of these users had a live session."),
                messages.WARNING,
            )
        return None

    # -- the change page's button ------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_end_sessions"
        view = self.admin_site.admin_view(self.end_sessions_view)
        urls: list[URLPattern] = super().get_urls()  # type: ignore[misc]
        # Before the ModelAdmin's own "<path:object_id>/" catch-all.
        return [path("<path:object_id>/end-sessions/", view, name=name), *urls]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        response: HttpResponse = super().render_change_form(  # type: ignore[misc]
            request, context, add=add, change=change, form_url=form_url, obj=obj
        )
        if (
            isinstance(response, TemplateResponse)
            and obj is not None
            and not add
            and IS_POPUP_VAR not in request.GET
            and self.has_end_sessions_permission(request, obj)
        ):
            # The page the admin would render anyway (a project's own change form too),
            # with one more object tool.
            context_data = response.context_data or {}
            parent: Any = response.template_name
            if isinstance(parent, str):
                parent = select_template([parent])
            elif isinstance(parent, list | tuple):
                parent = select_template(list(parent))
            context_data["end_sessions_parent"] = parent
            context_data["end_sessions_url"] = self._end_sessions_url(obj.pk)
            response.context_data = context_data
            response.template_name = CHANGE_FORM_TEMPLATE
        return response

    def _end_sessions_url(self, pk: Any) -> str:
        from django.contrib.admin.utils import quote

        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_end_sessions",
            args=(quote(pk),),
            current_app=self.admin_site.name,
        )

    @method_decorator(require_http_methods(["GET", "POST"]))
    def end_sessions_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # The permission comes before the lookup, so that no one without it learns
        # which users exist.
        if not (
            self.has_end_sessions_permission(request)
            and self.has_view_or_change_permission(request)  # type: ignore[attr-defined]
        ):
            raise PermissionDenied
        user = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if user is None:
            raise Http404(gettext("No such user."))
        if not self.has_view_or_change_permission(request, user):  # type: ignore[attr-defined]
            raise PermissionDenied
        if request.method != "POST":
            return self._confirmation(request, [user], action=False)
        name = user.get_username()
        try:
            ended = self.end_sessions_of(request, user)
        except NotImplementedError as exc:
            self.message_user(request, str(exc), messages.ERROR)  # type: ignore[attr-defined]
        else:
            if ended:
                self.message_user(  # type: ignore[attr-defined]
                    request,
                    ngettext(
                        "Ended %(count)d session of %(user)s.",
                        "Ended %(count)d sessions of %(user)s.",
                        ended,
                    )
                    % {"count": ended, "user": name},
                    messages.SUCCESS,
                )
            else:
                self.message_user(  # type: ignore[attr-defined]
                    request,
                    gettext("No session was ended: %(user)s had no live session.") % {"user": name},
                    messages.WARNING,
                )
        return HttpResponseRedirect(
            reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                args=(object_id,),
                current_app=self.admin_site.name,
            )
        )

    def _confirmation(
        self, request: HttpRequest, users: list[Any], *, action: bool
    ) -> TemplateResponse:
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("End all sessions"),
            "subtitle": None,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "users": users,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "object": users[0] if not action and users else None,
        }
        return TemplateResponse(request, CONFIRMATION_TEMPLATE, context)


def apply_to_default_user_admin(site: Any = None) -> bool:
    """Replace Django's own ``UserAdmin`` on ``site`` (default ``admin.site``) with a
    subclass that adds :class:`EndSessionsAdminMixin`; whether it did. Only when the
    registered class is exactly ``django.contrib.auth.admin.UserAdmin``: a project's own
    class is left as it is (add the mixin to it)."""
    from django.apps import apps
    from django.contrib.admin.apps import AdminConfig
    from django.contrib.auth import get_user_model

    site = admin.site if site is None else site
    # With autodiscovery (AdminConfig) Django imports django.contrib.auth.admin, which
    # registers the default UserAdmin, in the admin app's ready(); that may come after
    # this app's. Importing it first only changes when it registers, not whether.
    admin_app = next((c for c in apps.get_app_configs() if c.name == "django.contrib.admin"), None)
    if isinstance(admin_app, AdminConfig):
        import django.contrib.auth.admin  # noqa: F401
    elif "django.contrib.auth.admin" not in sys.modules:
        # Without autodiscovery, importing it would register Django's UserAdmin on a
        # site whose project registers its models itself.
        return False
    from django.contrib.auth.admin import UserAdmin

    model = get_user_model()
    if not site.is_registered(model) or type(site.get_model_admin(model)) is not UserAdmin:
        return False

    # The user model is get_user_model()'s, known only at run time; UserAdmin takes it as
    # a type argument only in django-stubs (not subscriptable at run time).
    class DefaultUserAdmin(EndSessionsAdminMixin, UserAdmin):  # type: ignore[type-arg]
        pass

    site.unregister(model)
    site.register(model, DefaultUserAdmin)
    return True
