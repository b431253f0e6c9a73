"""``@reauth_required``: re-authentication before a sensitive view ("sudo mode").

Works on sync and async views, as Django's own ``login_required`` does, and on the
``as_view()`` of class-based views (see also ``hardened_sessions.mixins``)::

    @reauth_required
    def delete_account(request): ...

    @reauth_required(max_age=300)
    async def show_recovery_codes(request): ...
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest

from .reauth import areauth_redirect, check_max_age, reauth_redirect

__all__ = ["reauth_required"]

V = TypeVar("V", bound=Callable[..., Any])


def _decorate(view: V, max_age: int | None) -> V:
    # asgiref's test, as Django's decorators: it also recognises a sync callable marked
    # with markcoroutinefunction(), such as the as_view() of an async class-based view.
    if iscoroutinefunction(view):

        async def _async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            redirect = await areauth_redirect(request, max_age)
            if redirect is not None:
                return redirect
            return await view(request, *args, **kwargs)

        wrapper: Callable[..., Any] = wraps(view)(_async_wrapper)
    else:

        def _sync_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            redirect = reauth_redirect(request, max_age)
            if redirect is not None:
                return redirect
            return view(request, *args, **kwargs)

        wrapper = wraps(view)(_sync_wrapper)
    return wrapper  # type: ignore[return-value]


@overload
def reauth_required(max_age: V) -> V: ...


@overload
def reauth_required(max_age: int | None = None) -> Callable[[V], V]: ...


def reauth_required(max_age: Any = None) -> Any:
    """Redirect users whose last proof of identity is older than ``max_age`` seconds
    (default: ``HARDENED_SESSIONS["REAUTH_MAX_AGE"]``), or who have none on record, to
    the re-authentication view with ``?next=`` the current URL; anonymous users go to
    ``settings.LOGIN_URL`` like ``login_required``. Use it bare or with ``max_age``."""
    if callable(max_age):
        return _decorate(max_age, None)
    seconds = check_max_age(max_age)

    def decorator(view: V) -> V:
        return _decorate(view, seconds)

    return decorator
