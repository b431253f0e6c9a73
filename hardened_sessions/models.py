"""The database table behind ``hardened_sessions.backends.db`` (and ``cached_db``).

A row is keyed by the SHA-256 hex digest of the session key, never the key
itself, and ``data`` holds the signed ``hs1:`` record (see
:mod:`hardened_sessions.record`). The other columns repeat what the record
says, for queries only (expiry sweeps, per-user lists, the admin); the
record is what counts on load.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import Exact
from django.utils.translation import gettext_lazy as _

__all__ = ["HardenedSession", "ImportedDjangoSession"]


class HardenedSession(models.Model):
    key_hash = models.CharField(
        _("key hash"),
        max_length=64,
        primary_key=True,
        help_text=_("SHA-256 of the session key; the key itself is never stored."),
    )
    data = models.BinaryField(_("signed record"))
    expire_date = models.DateTimeField(_("expires"), db_index=True)
    created = models.DateTimeField(_("created"))
    last_activity = models.DateTimeField(_("last activity"))
    # NULL, not "", for "no user": the pk of a user may be any string, even an empty one.
    user_id = models.CharField(  # noqa: DJ001
        _("user id"), max_length=255, null=True, blank=True, db_index=True
    )
    # Optional device metadata (HARDENED_SESSIONS["DEVICE_METADATA"]): personal data.
    ip_address = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.CharField(_("user agent"), max_length=300, blank=True, default="")
    size = models.PositiveIntegerField(_("size in bytes"))
    version = models.PositiveBigIntegerField(_("version"))

    class Meta:
        db_table = "hardened_sessions_session"
        verbose_name = _("session")
        verbose_name_plural = _("sessions")
        constraints = [
            models.CheckConstraint(
                condition=Exact(Length("key_hash"), 64), name="hardened_session_key_hash_len"
            ),
            models.CheckConstraint(condition=models.Q(size__gte=1), name="hardened_session_size"),
            models.CheckConstraint(
                condition=models.Q(version__gte=1), name="hardened_session_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_hash[:16]}…"

    @classmethod
    def get_session_store_class(cls) -> Any:
        from .backends.db import SessionStore

        return SessionStore

    @property
    def is_expired(self) -> bool:
        from django.utils import timezone

        expire: datetime = self.expire_date
        return expire <= timezone.now()


class ImportedDjangoSession(models.Model):
    """A row of ``django_session`` that ``manage.py importdjangosessions`` imported.

    The command imports a stock session at most once: a session that ended after its
    import (logout, revoke, rotation) stays ended when the command runs again, while
    ``django_session`` is left as it was (a rollback, or old instances of a rolling
    deploy, still read it). Keyed by the SHA-256 of the session key, like the sessions
    themselves. A row is pruned once the stock row it stands for has expired.
    """

    key_hash = models.CharField(
        _("key hash"),
        max_length=64,
        primary_key=True,
        help_text=_("SHA-256 of the stock session key; the key itself is never stored."),
    )
    stock_expire_date = models.DateTimeField(
        _("stock expiry"),
        db_index=True,
        help_text=_("The latest expire_date the import saw on the stock row."),
    )
    imported_at = models.DateTimeField(_("imported at"))

    class Meta:
        db_table = "hardened_sessions_imported_django_session"
        verbose_name = _("imported Django session")
        verbose_name_plural = _("imported Django sessions")
        constraints = [
            models.CheckConstraint(
                condition=Exact(Length("key_hash"), 64), name="hardened_imported_key_hash_len"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_hash[:16]}…"
