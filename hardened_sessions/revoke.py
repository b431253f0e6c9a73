"""Per-user sessions: list them, end them ("log out other devices").

Served by the db and cached_db engines, which keep the user's pk in an indexed
column. The cache engine keeps no per-user index (see :func:`user_sessions`).
Deletes go through the configured engine, so cached copies go too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.db import router
from django.utils import timezone

from . import keys
from .signals import session_revoked

__all__ = ["revoke_sessions", "revoke_user_sessions", "user_sessions"]

logger = logging.getLogger("hardened_sessions")

_NO_INDEX = (
    "The cache engine keeps no per-user index of sessions: on Redis Cluster, memcached "
    "and LocMemCache such an index cannot be updated atomically with the sessions "
    "themselves (they live under other keys, often on other nodes), and an index that "
    "drifts would let a revocation miss a session. Use the db or cached_db engine to "
    "list or revoke a user's sessions; logging out still works everywhere, and a "
    "password change still ends other sessions lazily through Django's session hash."
)


def _store_class() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore


def _model_backed(store_class: Any) -> bool:
    from .backends.db import SessionStore as DBStore

    return isinstance(store_class, type) and issubclass(store_class, DBStore)


def _user_pk(user: Any) -> str:
    pk = getattr(user, "pk", user)
    if pk is None:
        raise ValueError("The user has no primary key (an unsaved or anonymous user).")
    return str(pk)


def user_sessions(user: Any) -> list[Any]:
    """The live sessions of ``user`` (a user object or its pk), newest activity first,
    as ``HardenedSession`` instances. Raises ``NotImplementedError`` on the cache engine."""
    if not _model_backed(_store_class()):
        raise NotImplementedError(_NO_INDEX)
    from .models import HardenedSession

    alias = router.db_for_read(HardenedSession)
    return list(
        HardenedSession.objects.using(alias)
        .filter(user_id=_user_pk(user), expire_date__gt=timezone.now())
        .order_by("-last_activity")
    )


def revoke_sessions(key_hashes: Iterable[str], *, reason: str = "revoked") -> int:
    """End the sessions stored under these key hashes; return how many were ended."""
    store = _store_class()()
    ended = 0
    for key_hash in key_hashes:
        if store.revoke(key_hash):
            ended += 1
            session_revoked.send(
                sender=type(store), key_hash_prefix=key_hash[:8], user_id=None, reason=reason
            )
    return ended


def revoke_user_sessions(user: Any, *, keep: str | None = None, reason: str = "revoked") -> int:
    """End every session of ``user`` (a user object or its pk) except the one whose
    session key is ``keep``; return how many were ended. Raises ``NotImplementedError``
    on the cache engine."""
    store_class = _store_class()
    if not _model_backed(store_class):
        raise NotImplementedError(_NO_INDEX)
    from .models import HardenedSession

    pk = _user_pk(user)
    keep_hash = keys.store_key(keep) if keys.is_well_formed(keep) and keep else None
    alias = router.db_for_write(HardenedSession)
    key_hashes = list(
        HardenedSession.objects.using(alias).filter(user_id=pk).values_list("pk", flat=True)
    )
    store = store_class()
    ended = 0
    for key_hash in key_hashes:
        if key_hash == keep_hash:
            continue
        if store.revoke(key_hash):
            ended += 1
            session_revoked.send(
                sender=store_class, key_hash_prefix=key_hash[:8], user_id=pk, reason=reason
            )
    if ended:
        logger.info("Ended %d session(s) of user %s (%s).", ended, pk, reason)
    return ended


def password_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of the user model: a new password ends the user's other sessions.

    ``AbstractBaseUser.set_password()`` leaves the raw password in ``_password`` until
    the save completes, which is how a password change is told from any other save.
    The session of the request being handled (a password change view) survives; a
    password reset or ``manage.py changepassword`` ends them all.
    """
    from .conf import get_config
    from .middleware import current_session

    if getattr(instance, "_password", None) is None or instance.pk is None:
        return
    if not get_config().revoke_on_password_change or not _model_backed(_store_class()):
        return
    session = current_session.get()
    keep = getattr(session, "session_key", None)
    revoke_user_sessions(instance, keep=keep, reason="password changed")
