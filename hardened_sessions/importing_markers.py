"""The import markers of ``importdjangosessions``: each stock session imported at most once.

Each imported key hash is recorded in
:class:`~hardened_sessions.models.ImportedDjangoSession`, so that a session ended after
its import (logout, revoke, rotation) stays ended when the command runs again, while
``django_session`` is left untouched. A marker keeps the expiry of the stock row it
stands for, refreshed whenever a run sees the row extended (as old instances may still
do), and is pruned at the end of a complete run once that row has expired.

:class:`Markers` reads and writes them for one run, in the database the routers send
them to; under ``--dry-run`` it writes nothing.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .importing import aware
from .models import HardenedSession, ImportedDjangoSession

__all__ = ["Markers"]


class Markers:
    """The import markers in database ``alias``, for a run that began at ``now``."""

    def __init__(self, alias: str, now: datetime, *, dry_run: bool) -> None:
        self.alias = alias
        self.now = now  # aware
        self.dry_run = dry_run

    @staticmethod
    def field_moment(moment: datetime) -> datetime:
        """An aware moment as the DateTimeField value Django expects."""
        if settings.USE_TZ:
            return moment
        return timezone.make_naive(moment, timezone.get_default_timezone())

    def marker(self, store_key: str, expire: datetime) -> ImportedDjangoSession:
        """The (unsaved) marker of ``key_hash``, whose stock row expires at ``expire``."""
        return ImportedDjangoSession(
            key_hash=store_key,
            stock_expire_date=self.field_moment(expire),
            imported_at=self.field_moment(self.now),
        )

    def marked(self, store_keys: list[str]) -> dict[str, datetime]:
        """The key hashes among ``key_hashes`` imported before, with the stock expiry
        their markers hold (aware)."""
        if not store_keys:
            return {}
        found = (
            ImportedDjangoSession.objects.using(self.alias)
            .filter(pk__in=store_keys)
            .values_list("pk", "stock_expire_date")
        )
        return {store_key: aware(expire) or self.now for store_key, expire in found}

    def existing_rows(self, store_keys: list[str]) -> set[str]:
        """The key hashes among ``key_hashes`` that have a session row."""
        if not store_keys:
            return set()
        return set(
            HardenedSession.objects.using(self.alias)
            .filter(pk__in=store_keys)
            .values_list("pk", flat=True)
        )

    def refresh(self, extended: list[tuple[str, datetime]]) -> None:
        """Old instances still extend stock rows: a marker must outlive its stock row,
        so it takes the later date (and comes back if a concurrent prune took it)."""
        if self.dry_run or not extended:
            return
        markers = ImportedDjangoSession.objects.using(self.alias)
        with transaction.atomic(using=self.alias):
            for store_key, expire in extended:
                if markers.filter(pk=store_key).update(stock_expire_date=self.field_moment(expire)):
                    continue
                try:
                    with transaction.atomic(using=self.alias):
                        self.marker(store_key, expire).save(using=self.alias, force_insert=True)
                except IntegrityError:
                    pass  # another run put it back first

    def prune(self, batch_size: int) -> int:
        """Delete the markers of stock rows that expired before this run began.

        Runs after a complete scan only: the scan refreshed the marker of every stock
        row still alive, so a marker still dated before the run's start stands for a
        row that has expired or is gone, and can never be imported again."""
        stale = ImportedDjangoSession.objects.using(self.alias).filter(
            stock_expire_date__lte=self.field_moment(self.now)
        )
        if self.dry_run:
            return stale.count()
        total = 0
        while True:
            batch = list(stale.values_list("pk", flat=True)[:batch_size])
            if not batch:
                return total
            # The date is checked again in the DELETE: a concurrent run may have just
            # refreshed one.
            deleted, _ = stale.filter(pk__in=batch).delete()
            total += deleted
            if not deleted:
                return total
