"""Exceptions raised by hardened_sessions.

Every exception derives from :class:`HardenedSessionError`, so a caller can
catch the whole family; :class:`SessionTooLarge` is also a Django
``SuspiciousOperation`` so that code which already handles those (and Django's
own handler) answers 400 and logs it on ``django.security.SessionTooLarge``.
"""

from __future__ import annotations

from django.core.exceptions import SuspiciousOperation

__all__ = [
    "HardenedSessionError",
    "SessionKeyUnavailable",
    "SessionLimitReached",
    "SessionRotationFailed",
    "SessionStoreUnavailable",
    "SessionTooLarge",
]


class HardenedSessionError(Exception):
    """Base class of every error this package raises on purpose."""


class SessionTooLarge(HardenedSessionError, SuspiciousOperation):
    """The encoded session record is larger than ``MAX_BYTES``; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"The encoded session record is {size} bytes, over the limit of {limit} bytes "
            "(HARDENED_SESSIONS['MAX_BYTES']); it was not saved."
        )


class SessionRotationFailed(HardenedSessionError):
    """``cycle_key()`` could not complete; the session was left without a usable key."""


class SessionKeyUnavailable(HardenedSessionError):
    """No trustworthy session key could be drawn from the operating system's random source."""


class SessionStoreUnavailable(HardenedSessionError):
    """The session store could not be read or written; the outcome is unknown, so fail closed."""


class SessionLimitReached(HardenedSessionError):
    """The user already has ``MAX_SESSIONS_PER_USER`` live sessions and
    ``MAX_SESSIONS_POLICY`` is ``"refuse"``: the session that was to gain the user was
    not stored (and the record it had before, if any, was deleted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"The user already has {limit} live session(s), the most "
            "HARDENED_SESSIONS['MAX_SESSIONS_PER_USER'] allows; this login was refused."
        )
