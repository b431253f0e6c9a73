"""The proof asked for by ``ReauthView``: the current user's password by default.

A form for ``ReauthView`` takes the keyword arguments ``request`` and ``user`` (the
user who must prove who they are) besides the usual form ones, and is valid only when
that user gave the proof; the view then rotates the session key and records the time.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import authenticate
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

__all__ = ["PasswordReauthForm"]


class PasswordReauthForm(forms.Form):
    """The password of ``user``, checked through ``authenticate()``.

    Through ``authenticate()`` (with the request), so every authentication backend has
    its say, a failure sends ``user_login_failed`` and login throttles (django-axes and
    the like) count re-authentication attempts too. Only the user given to the form can
    pass: the username is not a field, and a backend that answers with another user is
    refused."""

    password = forms.CharField(
        label=_("Password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )

    error_messages = {
        "invalid": _("That password is not correct."),
    }

    def __init__(self, *args: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request
        self.user = user

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        if password:
            proved = authenticate(
                self.request, username=self.user.get_username(), password=password
            )
            if proved is None or not _same_user(proved, self.user):
                raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return cleaned


def _same_user(a: Any, b: Any) -> bool:
    return bool(a._meta.concrete_model is b._meta.concrete_model and a.pk == b.pk)
