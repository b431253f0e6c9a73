"""``ReauthView``: the user proves again who they are before a sensitive action.

Password by default (``PasswordReauthForm``); any proof plugs in through
``form_class`` (see docs/operations.rst, "Re-authentication"). On success the session key is
rotated and the time recorded (``reauth.mark_authenticated``), then the user goes to
``next`` when it is a URL of this site, else to ``settings.LOGIN_REDIRECT_URL``.

The "your sessions" views live in ``hardened_sessions.views_sessions`` and are
importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth import SESSION_KEY as AUTH_SESSION_KEY
from django.forms import BaseForm
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_deny
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.generic.edit import FormView

from .forms import PasswordReauthForm
from .reauth import mark_authenticated, redirect_with_next
from .views_sessions import (
    AsyncEndOtherSessionsView,
    AsyncEndSessionView,
    AsyncSessionListView,
    EndOtherSessionsView,
    EndSessionView,
    SessionListView,
)

__all__ = [
    "AsyncEndOtherSessionsView",
    "AsyncEndSessionView",
    "AsyncSessionListView",
    "EndOtherSessionsView",
    "EndSessionView",
    "ReauthView",
    "SessionListView",
]

# Any form that takes ``request`` and ``user`` is a proof (``form_class``). ``FormView``
# takes its form as a type argument only in django-stubs: at run time the class is not
# subscriptable.
if TYPE_CHECKING:
    _ProofFormView = FormView[BaseForm]
else:
    _ProofFormView = FormView


# Never framed, as the "your sessions" pages: a framed password form is what a
# clickjacking page disguises, with or without XFrameOptionsMiddleware.
@method_decorator(
    [sensitive_post_parameters("password"), csrf_protect, never_cache, xframe_options_deny],
    "dispatch",
)
class ReauthView(_ProofFormView):
    form_class: Any = PasswordReauthForm
    template_name = "hardened_sessions/reauth.html"
    redirect_field_name = REDIRECT_FIELD_NAME

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return self._to_login()
        return super().dispatch(request, *args, **kwargs)

    def _to_login(self) -> HttpResponseRedirect:
        # Logging in is a proof too: go on to the target once logged in (or back here,
        # without a safe ``next``).
        target = self.get_redirect_url() or self.request.path
        return redirect_with_next(self.request, settings.LOGIN_URL, target)

    def get_redirect_url(self) -> str:
        """``next`` (POST, else GET) when it is safe to redirect to; else ``""``."""
        # url_has_allowed_host_and_scheme is what Django's own LoginView and LogoutView
        # use; it is not in Django's reference documentation (checked: 5.2, 6.0). The
        # open-redirect tests in tests/test_threat_reauth_bypass.py fail if it changes.
        request = self.request
        url = request.POST.get(self.redirect_field_name, request.GET.get(self.redirect_field_name))
        safe = url_has_allowed_host_and_scheme(
            url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
        return url if safe and url else ""

    def get_success_url(self) -> str:
        return self.get_redirect_url() or resolve_url(settings.LOGIN_REDIRECT_URL)

    def get_form_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = super().get_form_kwargs()
        kwargs.update(request=self.request, user=self.request.user)
        return kwargs

    def form_valid(self, form: BaseForm) -> HttpResponse:
        # Rotation first: a SessionRotationFailed propagates (the middleware answers 503)
        # and nothing is recorded; the proof is never attached to the key used before it.
        request = self.request
        request.session.cycle_key()
        if not _still_signed_in(request):
            # The session ended (logout or revocation elsewhere) while the proof was being
            # checked: the rotation found no record and started an empty session. There is
            # nobody left to record a proof for.
            return self._to_login()
        mark_authenticated(request)
        return HttpResponseRedirect(self.get_success_url())

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context: dict[str, Any] = super().get_context_data(**kwargs)
        context.update(
            redirect_field_name=self.redirect_field_name,
            redirect_to=self.get_redirect_url(),
        )
        return context


def _still_signed_in(request: HttpRequest) -> bool:
    """Whether the session still names the request's user (Django's ``login()`` stores
    the pk as ``value_to_string`` gives it, under ``django.contrib.auth.SESSION_KEY``).

    ``SESSION_KEY`` is a module constant of ``django.contrib.auth``, not documented API
    (checked: Django 5.2 and 6.0). If it moved, every re-authentication would end at the
    login page: ``tests/test_reauth.py`` (the flow on every engine) fails loudly then."""
    user: Any = request.user
    return bool(request.session.get(AUTH_SESSION_KEY) == user._meta.pk.value_to_string(user))
