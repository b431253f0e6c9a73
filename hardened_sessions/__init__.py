"""Hardened, drop-in session engines for Django.

Public helpers (importable from the package):

- :func:`user_sessions` — a user's live sessions;
- :func:`revoke_user_sessions` — end a user's sessions but one ("log out other devices").
- :func:`auser_sessions`, :func:`arevoke_user_sessions` — the same, for async code.
- :func:`end_sessions_of_inactive_users` — end the sessions of inactive users (after a
  bulk ``update(is_active=False)``, which sends no signal).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "arevoke_user_sessions",
    "auser_sessions",
    "end_sessions_of_inactive_users",
    "revoke_user_sessions",
    "user_sessions",
]


def user_sessions(user: Any) -> list[Any]:
    """The live sessions of ``user`` (a user or its pk), as ``HardenedSession`` instances."""
    from .revoke import user_sessions as implementation

    return implementation(user)


def revoke_user_sessions(user: Any, *, keep: str | None = None) -> int:
    """End every session of ``user`` except the one with session key ``keep``; return
    how many were ended."""
    from .revoke import revoke_user_sessions as implementation

    return implementation(user, keep=keep)


async def auser_sessions(user: Any) -> list[Any]:
    """:func:`user_sessions` for async code (``await auser_sessions(user)``)."""
    from .revoke import auser_sessions as implementation

    return await implementation(user)


async def arevoke_user_sessions(user: Any, *, keep: str | None = None) -> int:
    """:func:`revoke_user_sessions` for async code."""
    from .revoke import arevoke_user_sessions as implementation

    return await implementation(user, keep=keep)


def end_sessions_of_inactive_users(queryset: Any = None, *, batch_size: int = 500) -> int:
    """End the sessions of every user with ``is_active=False`` (in ``queryset``, else all
    users); return how many sessions ended."""
    from .account import end_sessions_of_inactive_users as implementation

    return implementation(queryset, batch_size=batch_size)
