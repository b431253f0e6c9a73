"""Sessions follow the account (OWASP ASVS 5.0 7.4.2).

A ``save()`` of the user model that turns ``is_active`` from True to False, or the
deletion of a user, ends every session of that user server-side once the transaction
commits (``transaction.on_commit``: a deactivation that is rolled back logs nobody out).
This works on every engine that can list a user's sessions (db, cached_db, and the cache
engine on Redis or LocMemCache); elsewhere (memcached, Redis Cluster) the system check
``hardened_sessions.W401`` says so. ``HARDENED_SESSIONS["END_SESSIONS_ON_DEACTIVATION"]``
(default True) turns it off.

The layered defence: when the revocation after commit fails (the store is down), the
user stays deactivated and the failure is logged at ERROR on ``hardened_sessions``; the
sessions then live on in the store, but Django refuses them on each request all the
same: ``AuthenticationMiddleware`` resolves ``request.user`` through
``django.contrib.auth.get_user()``, which calls the backend's ``get_user()``, and
``ModelBackend.get_user()`` returns ``None`` unless ``user_can_authenticate(user)``,
which is ``is_active`` (Django 5.2, 6.0; ``aget_user`` alike). A deleted user is not
found at all. Backends that accept inactive users (``AllowAllUsersModelBackend``) do
not have that second layer.

Bulk updates (``QuerySet.update(is_active=False)``) send no signal:
:func:`end_sessions_of_inactive_users` and ``manage.py endinactivesessions`` end the
sessions of users already inactive.
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import FieldDoesNotExist
from django.db import router, transaction
from django.db.models import QuerySet
from django.db.models.signals import post_delete, post_save, pre_save

from .revoke import revoke_user_sessions
from .signals import Reason, reason_and_description

__all__ = [
    "REASON_ADMIN",
    "REASON_DELETED",
    "REASON_DISABLED",
    "can_list_sessions",
    "connect",
    "disconnect",
    "end_sessions_of_inactive_users",
    "end_user_sessions",
    "install",
]

logger = logging.getLogger("hardened_sessions")

# The reasons the ``session_revoked`` signals carry.
REASON_DISABLED = Reason.ACCOUNT_DISABLED
REASON_DELETED = Reason.ACCOUNT_DELETED
REASON_ADMIN = Reason.ADMIN

# Set by pre_save on an instance whose stored row was active, read by post_save.
_WAS_ACTIVE = "_hardened_sessions_was_active"

_UID_PRE_SAVE = "hardened_sessions.account.remember_activity"
_UID_POST_SAVE = "hardened_sessions.account.end_sessions_on_deactivation"
_UID_POST_DELETE = "hardened_sessions.account.end_sessions_on_deletion"

NOT_LISTED = (
    "The session store cannot list a user's sessions (the cache engine on memcached or "
    "Redis Cluster keeps no per-user index), so sessions are not ended when an account "
    "is deactivated or deleted."
)


def _enabled() -> bool:
    from .conf import get_config

    return get_config().end_sessions_on_deactivation


def _has_is_active_field(model: Any) -> bool:
    try:
        field = model._meta.get_field("is_active")
    except FieldDoesNotExist:
        return False  # e.g. AbstractBaseUser's constant ``is_active = True``
    return bool(getattr(field, "concrete", False))


# --- ending the sessions -------------------------------------------------------------------


def end_user_sessions(user: Any, reason: str) -> int | None:
    """End every session of ``user`` (a user or its pk) for ``reason``; how many ended,
    or ``None`` when they could not be ended (logged: at INFO where the store cannot
    list a user's sessions, at ERROR when the store failed). Never raises: it runs after
    the deactivation committed, which must stand either way."""
    pk = getattr(user, "pk", user)
    reason, description = reason_and_description(reason)
    try:
        return revoke_user_sessions(pk, reason=reason, description=description)
    except NotImplementedError:
        logger.info(
            "The sessions of user %s were not ended (%s): %s Django refuses the user at "
            "each request instead.",
            pk,
            description,
            NOT_LISTED,
        )
    except Exception:  # noqa: BLE001 -- logged; the committed change must stand
        logger.exception(
            "Could not end the sessions of user %s (%s): they stay in the store until they "
            "expire, though Django's ModelBackend refuses an inactive or deleted user on "
            "each request. Run 'manage.py endinactivesessions' once the store is back.",
            pk,
            description,
        )
    return None


def _after_commit(pk: Any, reason: str, using: str | None) -> None:
    transaction.on_commit(lambda: end_user_sessions(pk, reason), using=using)


# --- receivers -------------------------------------------------------------------------


def remember_activity(
    sender: Any,
    instance: Any,
    raw: bool = False,
    using: str | None = None,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    """``pre_save`` of the user model: whether this save deactivates the user.

    The stored row is read only when the instance says inactive and exists (has a pk):
    a save of an active user costs no query."""
    instance.__dict__.pop(_WAS_ACTIVE, None)
    if raw or instance.pk is None or not _has_is_active_field(sender):
        return
    if update_fields is not None and "is_active" not in update_fields:
        return
    if "is_active" in instance.get_deferred_fields() or instance.is_active:
        return
    if not _enabled():
        return
    # _base_manager, as save() itself: a default manager may hide inactive users.
    stored = list(
        sender._base_manager.using(using)
        .filter(pk=instance.pk)
        .values_list("is_active", flat=True)[:1]
    )
    if stored and stored[0]:
        instance.__dict__[_WAS_ACTIVE] = True


def end_sessions_on_deactivation(
    sender: Any,
    instance: Any,
    created: bool = False,
    raw: bool = False,
    using: str | None = None,
    **kwargs: Any,
) -> None:
    """``post_save`` of the user model: a deactivation ends the sessions at commit."""
    if not instance.__dict__.pop(_WAS_ACTIVE, False) or created or raw:
        return
    _after_commit(instance.pk, REASON_DISABLED, using)


def end_sessions_on_deletion(
    sender: Any, instance: Any, using: str | None = None, **kwargs: Any
) -> None:
    """``post_delete`` of the user model: the sessions end at commit. The pk is taken
    now: the deletion sets the instance's pk to None afterwards."""
    if instance.pk is None or not _enabled():
        return
    _after_commit(instance.pk, REASON_DELETED, using)


def _user_models(registry: Any = None) -> list[Any]:
    """The user model, its proxies and its multi-table children: Django sends the save
    signals of a proxy or of a child (``class Employee(User)``) with that class as
    sender, and none for the parent row. ``registry`` defaults to the project's app
    registry."""
    user_model = apps.get_model(settings.AUTH_USER_MODEL)
    return [m for m in (registry or apps).get_models() if issubclass(m, user_model)]


def _receivers(model: Any) -> list[tuple[Any, Any, str]]:
    label = model._meta.label_lower
    return [
        (pre_save, remember_activity, f"{_UID_PRE_SAVE}:{label}"),
        (post_save, end_sessions_on_deactivation, f"{_UID_POST_SAVE}:{label}"),
        (post_delete, end_sessions_on_deletion, f"{_UID_POST_DELETE}:{label}"),
    ]


def connect(registry: Any = None) -> None:
    """Connect the receivers to ``settings.AUTH_USER_MODEL`` and its proxies (once,
    whatever the calls). Senders are named, never ``None``: a ``post_delete`` receiver
    for every model would cost every other model Django's fast delete."""
    for model in _user_models(registry):
        for signal, receiver, uid in _receivers(model):
            signal.connect(receiver, sender=model, dispatch_uid=uid)


def disconnect(registry: Any = None) -> bool:
    """Disconnect the receivers; whether all of them were connected."""
    return all(
        [
            signal.disconnect(sender=model, dispatch_uid=uid)
            for model in _user_models(registry)
            for signal, _, uid in _receivers(model)
        ]
    )


def install() -> None:
    """What ``HardenedSessionsConfig.ready()`` sets up for this feature: the receivers
    on the user model, and the "End all sessions" admin on Django's default UserAdmin."""
    if not apps.is_installed("django.contrib.auth"):
        return
    connect()
    if apps.is_installed("django.contrib.admin"):
        from .admin_user import apply_to_default_user_admin

        apply_to_default_user_admin()


# --- engines that cannot list a user's sessions ---------------------------------------------


def can_list_sessions() -> bool | None:
    """Whether ``SESSION_ENGINE`` can list (and so end) a user's sessions; ``None`` when
    it is not known here (an engine of another package, or one that cannot load, which
    other checks report). Decided from the configuration, without connecting (a check
    must not depend on the servers being up)."""
    from .capabilities import Capability, engine_capabilities

    caps = engine_capabilities()
    if not caps:
        return None
    return Capability.USER_INDEX in caps


@register(Tags.security, "sessions")
def check_sessions_follow_the_account(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``hardened_sessions.W401``: deactivating or deleting a user cannot end their
    sessions here."""
    from .conf import DEFAULTS, validate

    raw = getattr(settings, "HARDENED_SESSIONS", None)
    if validate(raw) or not apps.is_installed("django.contrib.auth"):
        return []  # a bad setting is E001
    if not {**DEFAULTS, **(raw or {})}["END_SESSIONS_ON_DEACTIVATION"]:
        return []
    if can_list_sessions() is not False:
        return []
    return [
        CheckWarning(
            f"{NOT_LISTED} A deactivated user's sessions then rely on Django's own "
            "per-request is_active check (ModelBackend.get_user), and a deleted user's on "
            "the user no longer being found; they stay in the store until they expire.",
            hint="Use the db or cached_db engine, or Redis without Cluster, to end them at "
            "once; or set HARDENED_SESSIONS['END_SESSIONS_ON_DEACTIVATION'] = False to "
            "accept this.",
            id="hardened_sessions.W401",
        )
    ]


# --- bulk updates --------------------------------------------------------------------------


def end_sessions_of_inactive_users(
    queryset: QuerySet[Any] | None = None, *, batch_size: int = 500
) -> int:
    """End the sessions of every user with ``is_active=False`` (in ``queryset``, an
    unsliced queryset of the user model, else all users); return how many sessions
    ended. For bulk updates, which send no signal. Users are read in batches of
    ``batch_size`` by pk; on db and cached_db each batch is intersected with the
    sessions' user column in one query, so only users who have sessions are revoked.
    Raises ``NotImplementedError`` where the store cannot list a user's sessions."""
    from django.contrib.auth import get_user_model

    from .models import HardenedSession

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}.")
    listable = can_list_sessions()
    if listable is False:
        raise NotImplementedError(
            f"{NOT_LISTED} It keeps no per-user index to find them by; use the db or "
            "cached_db engine, or Redis without Cluster."
        )
    if queryset is None:
        queryset = get_user_model()._base_manager.all()
    if not _has_is_active_field(queryset.model):
        return 0  # a user model without the field: no user is ever inactive
    inactive = queryset.filter(is_active=False).order_by("pk").values_list("pk", flat=True)
    model_backed = _model_backed()
    alias = router.db_for_read(HardenedSession)
    ended = 0
    last: Any = None
    while True:
        page = inactive if last is None else inactive.filter(pk__gt=last)
        pks = list(page[:batch_size])
        if not pks:
            return ended
        last = pks[-1]
        if model_backed:
            with_sessions = set(
                HardenedSession.objects.using(alias)
                .filter(user_id__in=[str(pk) for pk in pks])
                .order_by()
                .values_list("user_id", flat=True)
                .distinct()
            )
            pks = [pk for pk in pks if str(pk) in with_sessions]
        for pk in pks:
            ended += revoke_user_sessions(pk, reason=REASON_DISABLED)


def _model_backed() -> bool:
    from .capabilities import Capability, engine_capabilities

    return Capability.ROWS in engine_capabilities()
