"""``ReauthRequiredMixin``: the class-based twin of ``@reauth_required``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from .reauth import areauth_redirect, check_max_age, reauth_redirect

__all__ = ["ReauthRequiredMixin"]


class ReauthRequiredMixin:
    """Put it first among the bases of a ``View``. ``reauth_max_age``: seconds a proof
    of identity stays good for this view (``None``: ``HARDENED_SESSIONS["REAUTH_MAX_AGE"]``).
    Views with async handlers are checked through the async session API."""

    reauth_max_age: int | None = None

    def get_reauth_max_age(self) -> int | None:
        return check_max_age(self.reauth_max_age)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "view_is_async", False):
            return self._adispatch(request, *args, **kwargs)
        redirect = reauth_redirect(request, self.get_reauth_max_age())
        if redirect is not None:
            return redirect
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]

    async def _adispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        redirect = await areauth_redirect(request, self.get_reauth_max_age())
        if redirect is not None:
            return redirect
        return await super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
