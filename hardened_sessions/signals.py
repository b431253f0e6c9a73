"""Signals sent by hardened_sessions: one for each way a session starts and ends.

Every signal but ``sessions_swept`` and ``session_new_device`` carries
``key_hash_prefix``, the session's handle (the first 16 hex digits of the store key, as
the admin's row id and the sessions pages show it: never the session key, never the
whole hash) and ``reason``, a :class:`Reason` member. ``Reason`` is a ``StrEnum``: a
member *is* a ``str`` (``Reason.LOGOUT == "logout"``), so a receiver written as
``def receiver(sender, key_hash_prefix, reason, **kwargs)`` can be connected to any
of them. ``description`` is the human text (what ``reason`` itself carried before it became a ``Reason``).
``sender`` is the engine's ``SessionStore`` class.

``session_created(sender, key_hash_prefix, user_id, reason=CREATED, description)``
    A new session was stored (its first save). A rotation sends ``session_rotated``
    instead.

``session_rotated(sender, key_hash_prefix, old_key_hash_prefix, user_id, reason=ROTATION, description)``
    ``cycle_key()`` deleted the session's record and stored its data under a fresh key
    (``key_hash_prefix`` is the new key's). Rotating a session that had no stored
    record (a visitor's first login) is a creation: ``session_created``.

``session_revoked(sender, key_hash_prefix, user_id, reason, description)``
    A session was ended on purpose: ``LOGOUT`` (``flush()``/``delete()`` through the
    engine, as ``django.contrib.auth.logout`` does), ``PASSWORD_CHANGE``,
    ``ACCOUNT_DISABLED``, ``ACCOUNT_DELETED``, ``CAP`` (over
    ``MAX_SESSIONS_PER_USER``), ``ADMIN``, ``USER`` (from the user's own sessions
    page), ``REVOKED`` (``revoke_sessions()`` called with no reason, or with a free
    text: the text becomes the ``description``).

``session_expired(sender, key_hash_prefix, where="load", reason=PAST_DEADLINE, description)``
    A load found the record past one of its deadlines and deleted it. That load also
    sends ``session_rejected`` (as it always did), so a receiver of both sees the event
    twice, once as each.

``sessions_swept(sender, count, using)``
    One batch of the expiry sweep (``clearsessions``, ``clear_expired()``) deleted
    ``count`` expired rows on database ``using``. The sweep deletes by key hash in
    one ``DELETE`` per batch, so it sends one signal per batch, not per session:
    per-session ``session_expired`` signals come from loads only.

``session_rejected(sender, key_hash_prefix, reason, description)``
    A stored record was refused on load: ``BAD_RECORD`` (bad signature, corrupt,
    oversize, not JSON: ``description`` says which) or ``PAST_DEADLINE``; or a login was
    refused because the user had ``MAX_SESSIONS_PER_USER`` live sessions under
    ``MAX_SESSIONS_POLICY = "refuse"``: ``SESSION_LIMIT`` (``key_hash_prefix`` names
    the refused session, which was not stored).

``session_conflict_merged(sender, key_hash_prefix, user_id, reason=CONFLICT, description)``
    A save met a record another request had saved meanwhile and applied this
    request's changes onto it (docs/design.rst, "concurrent requests on one session").

``session_new_device(sender, user, request, session_handle)``
    A login (Django's ``user_logged_in``) from a device that none of the user's other
    live sessions has: another browser family or operating system family, or, when
    ``DEVICE_METADATA`` keeps the address, another network (``/24``, ``/48``).
    ``session_handle`` is the new session's handle (the admin's row id). Not sent when
    the user has no other live session with device metadata (a first login), nor where
    nothing of the device is kept (the cache engine, ``DEVICE_METADATA`` off):
    :func:`hardened_sessions.device.notify_new_device`. It carries no ``reason``.

Signals cost nothing measurable when nobody listens: they are sent off the common
path (a load of a live record and a save without a conflict send nothing), and
:func:`emit` asks ``has_listeners`` (cached per sender) before it builds the
arguments.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from contextvars import ContextVar
from typing import Any

from asgiref.sync import sync_to_async
from django.dispatch import Signal

__all__ = [
    "Reason",
    "session_conflict_merged",
    "session_created",
    "session_expired",
    "session_new_device",
    "session_rejected",
    "session_revoked",
    "session_rotated",
    "sessions_swept",
]


class Reason(enum.StrEnum):
    """Why a session started or ended; the ``reason`` of every signal."""

    CREATED = "created"
    ROTATION = "rotation"
    LOGOUT = "logout"
    PASSWORD_CHANGE = "password_change"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_DELETED = "account_deleted"
    CAP = "cap"
    ADMIN = "admin"
    USER = "user"
    REVOKED = "revoked"
    PAST_DEADLINE = "past_deadline"
    BAD_RECORD = "bad_record"
    CONFLICT = "conflict"
    SESSION_LIMIT = "session_limit"

    @property
    def description(self) -> str:
        """The default human text for this reason."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[Reason, str] = {
    Reason.CREATED: "created",
    Reason.ROTATION: "key rotated",
    Reason.LOGOUT: "logged out",
    Reason.PASSWORD_CHANGE: "password changed",
    Reason.ACCOUNT_DISABLED: "account disabled",
    Reason.ACCOUNT_DELETED: "account deleted",
    Reason.CAP: "over MAX_SESSIONS_PER_USER",
    Reason.ADMIN: "ended by an administrator",
    Reason.USER: "ended by its user",
    Reason.REVOKED: "revoked",
    Reason.PAST_DEADLINE: "past its deadline",
    Reason.BAD_RECORD: "bad record",
    Reason.CONFLICT: "merged a concurrent save",
    Reason.SESSION_LIMIT: "login refused: MAX_SESSIONS_PER_USER sessions are live",
}

# The free texts callers passed as ``reason`` at first, so they still map to a reason.
_LEGACY_TEXTS: dict[str, Reason] = {text: reason for reason, text in _DESCRIPTIONS.items()}
_LEGACY_TEXTS.update(
    {
        "revoked in the admin": Reason.ADMIN,
        "all sessions of the user revoked in the admin": Reason.ADMIN,
    }
)


def reason_and_description(reason: str, description: str | None = None) -> tuple[Reason, str]:
    """``reason`` as a :class:`Reason` and its human text. A free text that is not a
    reason's value (what callers passed at first) becomes the description of the
    reason it names, or of ``REVOKED``."""
    try:
        member = Reason(reason)
    except ValueError:
        return _LEGACY_TEXTS.get(reason, Reason.REVOKED), description or reason
    return member, description or member.description


# use_caching: ``has_listeners`` and ``send`` then answer from a per-sender cache (the
# senders are engine classes), instead of scanning the receivers under a lock.
session_created = Signal(use_caching=True)
session_rotated = Signal(use_caching=True)
session_expired = Signal(use_caching=True)
session_conflict_merged = Signal(use_caching=True)
sessions_swept = Signal(use_caching=True)
# Sent with any sender (a class, or None from a project's own code): no caching.
session_rejected = Signal()
session_revoked = Signal()
session_new_device = Signal()

_EVENTS: dict[Signal, str] = {
    session_created: "created",
    session_rotated: "rotated",
    session_expired: "expired",
    session_conflict_merged: "conflict_merged",
    sessions_swept: "swept",
    session_rejected: "rejected",
    session_revoked: "revoked",
}


def emit(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal`` and count the event when ``HARDENED_SESSIONS["METRICS"]`` is on.

    Reasons given as text are normalised to :class:`Reason` here, with the text kept as
    ``description``."""
    from .conf import get_config

    if "reason" in kwargs:
        kwargs["reason"], kwargs["description"] = reason_and_description(
            kwargs["reason"], kwargs.get("description")
        )
    if get_config().metrics:
        from . import metrics

        metrics.count_event(_EVENTS[signal], sender, kwargs)
    if signal.has_listeners(sender):
        pending = _pending.get()
        if pending is not None:  # inside a policy: its driver sends it at the end
            pending.append((signal, sender, kwargs))
        else:
            signal.send(sender=sender, **kwargs)


# The signals a policy emitted, kept for its driver to send once the policy's store
# accesses are done (``deferred``/``adeferred``): every receiver then sees a finished
# operation (a rotation's new record stored, the session on its new key), on both
# paths; and on the async one the receivers, sync code that may use the ORM (which
# Django refuses on an event loop), run in a thread.
_Pending = list[tuple[Signal, Any, dict[str, Any]]]
_pending: ContextVar[_Pending | None] = ContextVar("hardened_sessions_signals", default=None)


@contextmanager
def deferred() -> Iterator[None]:
    """Within it, :func:`emit` keeps the signals it would send; on the way out they are
    sent in order, also when the block raised (its exception wins over a receiver's).
    Nested blocks leave the sending to the outermost."""
    if _pending.get() is not None:
        yield
        return
    events: _Pending = []
    token = _pending.set(events)
    try:
        yield
    except BaseException:
        _pending.reset(token)
        with suppress(Exception):
            _send_all(events)
        raise
    _pending.reset(token)
    _send_all(events)


@asynccontextmanager
async def adeferred() -> AsyncIterator[None]:
    """:func:`deferred` for async code: the signals are sent by ``sync_to_async``
    (thread-sensitive, as Django runs sync code). A cancellation while they are being
    sent waits for the send to finish, so none is lost or sent after the caller moved on."""
    if _pending.get() is not None:
        yield
        return
    events: _Pending = []
    token = _pending.set(events)
    try:
        yield
    except BaseException:
        _pending.reset(token)
        with suppress(Exception):
            await _asend_all(events)
        raise
    _pending.reset(token)
    await _asend_all(events)


async def _asend_all(events: _Pending) -> None:
    if not events:
        return
    sending = asyncio.ensure_future(sync_to_async(_send_all)(events))
    try:
        await asyncio.shield(sending)
    except asyncio.CancelledError:
        await asyncio.wait([sending])
        raise


def _send_all(events: _Pending) -> None:
    """Send every signal, then raise the first receiver error, if any: one failing
    receiver does not keep the others from hearing of a finished operation."""
    first: Exception | None = None
    for signal, sender, kwargs in events:
        try:
            signal.send(sender=sender, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- raised below, once all are sent
            if first is None:
                first = exc
    if first is not None:
        raise first
