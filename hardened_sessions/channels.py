"""Django Channels: close a session's WebSocket connections when the session ends.

Optional; it needs ``channels`` (the ``channels`` extra) and a channel layer that
supports groups (``channels_redis``). Two parts:

:class:`SessionBoundConsumerMixin`
    for ``AsyncWebsocketConsumer`` / ``AsyncJsonWebsocketConsumer``, under Channels'
    ``SessionMiddlewareStack`` or ``AuthMiddlewareStack``. On connect it joins the
    channel-layer group of the session's handle (:func:`group_name`) and arms a timer
    at the session record's earliest deadline; it closes the connection with
    :data:`CLOSE_CODE` when a message arrives on that group, and when the deadline
    passes with the session not extended meanwhile (an idle deadline moves on with
    HTTP activity; a TTL lapse sends no event, so the timer is what notices it).
:class:`SessionChannelsConfig`
    listed in ``INSTALLED_APPS`` as ``"hardened_sessions.channels.SessionChannelsConfig"``,
    it connects receivers of ``session_revoked``, ``session_rotated`` and
    ``session_expired`` that send that message through the default channel layer:
    a logout, a revocation (``revoke_user_sessions``, the admin, a password change)
    or a rotation (``cycle_key``, as at login) closes the connections bound to the
    session that ended.

Nothing else in the package imports this module: without it, Channels is never
imported.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import keys, timeutil
from .backends.core import hash_prefix
from .signals import session_expired, session_revoked, session_rotated

__all__ = [
    "CLOSE_CODE",
    "MESSAGE_TYPE",
    "SessionBoundConsumerMixin",
    "SessionChannelsConfig",
    "connect_receivers",
    "disconnect_receivers",
    "group_name",
    "notify_session_ended",
]

logger = logging.getLogger("hardened_sessions")

#: The WebSocket close code sent when the session of a connection ends (4000-4999 are
#: the application's own codes; 4401 reads as "unauthorized" to a client).
CLOSE_CODE = 4401

#: The ``type`` of the channel-layer message that ends a session's connections; a
#: consumer handles it in ``hardened_sessions_session_ended``.
MESSAGE_TYPE = "hardened_sessions.session_ended"

_GROUP_PREFIX = "hardened_sessions.session."
_DISPATCH_UID = "hardened_sessions.channels"
_GRACE = 0.05


def group_name(key_hash_prefix: str) -> str:
    """The channel-layer group of the session with this handle (the 16 hex digits the
    signals carry as ``key_hash_prefix``)."""
    return _GROUP_PREFIX + key_hash_prefix


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_pending: set[asyncio.Task[Any]] = set()


def notify_session_ended(key_hash_prefix: str, reason: str = "") -> None:
    """Send the message that closes the connections of the session ``key_hash_prefix``.

    From sync code it waits for the channel layer; called in an event loop's thread
    (a signal sent from async code) it schedules the send on that loop."""
    layer = get_channel_layer()
    if layer is None:
        logger.warning("No channel layer: the connections of an ended session stay open.")
        return
    message = {"type": MESSAGE_TYPE, "handle": key_hash_prefix, "reason": str(reason)}
    send = layer.group_send(group_name(key_hash_prefix), message)
    loop = _running_loop()
    if loop is None:

        async def deliver() -> None:
            await send

        async_to_sync(deliver)()
        return
    task = loop.create_task(send)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


def _on_revoked(sender: Any, key_hash_prefix: str, reason: str = "", **kwargs: Any) -> None:
    notify_session_ended(key_hash_prefix, reason)


def _on_rotated(sender: Any, old_key_hash_prefix: str, reason: str = "", **kwargs: Any) -> None:
    notify_session_ended(old_key_hash_prefix, reason)


def _on_expired(sender: Any, key_hash_prefix: str, reason: str = "", **kwargs: Any) -> None:
    notify_session_ended(key_hash_prefix, reason)


def connect_receivers() -> None:
    """Connect the receivers (what :class:`SessionChannelsConfig` does at start-up)."""
    session_revoked.connect(_on_revoked, dispatch_uid=_DISPATCH_UID)
    session_rotated.connect(_on_rotated, dispatch_uid=_DISPATCH_UID)
    session_expired.connect(_on_expired, dispatch_uid=_DISPATCH_UID)


def disconnect_receivers() -> None:
    session_revoked.disconnect(dispatch_uid=_DISPATCH_UID)
    session_rotated.disconnect(dispatch_uid=_DISPATCH_UID)
    session_expired.disconnect(dispatch_uid=_DISPATCH_UID)


class SessionChannelsConfig(AppConfig):
    """``INSTALLED_APPS += ["hardened_sessions.channels.SessionChannelsConfig"]``."""

    name = "hardened_sessions.channels"
    label = "hardened_sessions_channels"
    verbose_name = "Hardened sessions: Channels"
    default = False

    def ready(self) -> None:
        connect_receivers()


class SessionBoundConsumerMixin:
    """Binds a WebSocket consumer to the session it was opened with.

    Put it before the consumer class: ``class Chat(SessionBoundConsumerMixin,
    AsyncWebsocketConsumer)``. A connection without a stored session (no cookie, an
    ended session) is not bound; ``session_handle`` is then ``None``, and the consumer
    decides (check ``scope["user"]`` in ``connect``). A bound connection is closed with
    :attr:`session_close_code` when its session ends.
    """

    session_close_code: int = CLOSE_CODE
    #: The handle of the session this connection is bound to, or ``None``.
    session_handle: str | None = None
    _session_key: str | None = None
    _session_timer: asyncio.Task[None] | None = None

    scope: dict[str, Any]
    channel_layer: Any
    channel_name: str

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        if await self._bind_session():
            await super().websocket_connect(message)  # type: ignore[misc]

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self._unbind_session()
        await super().websocket_disconnect(message)  # type: ignore[misc]

    async def hardened_sessions_session_ended(self, event: dict[str, Any]) -> None:
        """The channel-layer message: the session was revoked, rotated away or expired."""
        if event.get("handle") == self.session_handle:
            await self._end_session_connection()

    async def _bind_session(self) -> bool:
        """Join the session's group and arm its deadline timer; ``False`` when the
        session ended meanwhile (the handshake is then refused)."""
        session = self.scope.get("session")
        if session is None:
            raise ImproperlyConfigured(
                "SessionBoundConsumerMixin needs scope['session']: route the consumer "
                "through channels.sessions.SessionMiddlewareStack or "
                "channels.auth.AuthMiddlewareStack."
            )
        session_key = session.session_key
        if not keys.is_well_formed(session_key):
            return True
        if self.channel_layer is None:
            raise ImproperlyConfigured(
                "SessionBoundConsumerMixin needs a channel layer (CHANNEL_LAYERS) to "
                "learn that a session ended."
            )
        handle = hash_prefix(keys.store_key(session_key))
        await self.channel_layer.group_add(group_name(handle), self.channel_name)
        self.session_handle, self._session_key = handle, session_key
        # Read after joining the group: a session that ended before the join is seen
        # here, one that ends after it sends its message to the group.
        deadline = await self._session_deadline()
        if deadline is None:
            await self._unbind_session()
            await self.close(code=self.session_close_code)  # type: ignore[attr-defined]
            return False
        self._session_timer = asyncio.ensure_future(self._watch_deadline(deadline))
        return True

    async def _session_deadline(self) -> int | None:
        """The stored session's earliest deadline, read afresh, or ``None`` if it ended."""
        store = import_module(settings.SESSION_ENGINE).SessionStore(self._session_key)
        await store.aload()
        record = getattr(store, "record", None)
        if record is None or record.deadline <= timeutil.now():
            return None
        deadline: int = record.deadline
        return deadline

    async def _watch_deadline(self, deadline: int) -> None:
        while True:
            # Deadlines are whole seconds; wake just past one.
            await asyncio.sleep(max(0.0, deadline - timeutil.now()) + _GRACE)
            try:
                next_deadline = await self._session_deadline()
            except Exception:
                logger.exception("Could not read the session of a WebSocket connection.")
                next_deadline = None
            if next_deadline is None:
                await self._end_session_connection()
                return
            deadline = next_deadline

    async def _end_session_connection(self) -> None:
        await self._unbind_session()
        await self.close(code=self.session_close_code)  # type: ignore[attr-defined]

    async def _unbind_session(self) -> None:
        timer, self._session_timer = self._session_timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        handle, self.session_handle = self.session_handle, None
        if handle is not None and self.channel_layer is not None:
            await self.channel_layer.group_discard(group_name(handle), self.channel_name)
