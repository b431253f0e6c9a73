"""``manage.py clearexpiredsessions``: delete expired sessions in batches.

Bounded memory (one batch of primary keys at a time), one short transaction per
batch (so live traffic on the table is never blocked for long), a progress bar
on a terminal, and one runner at a time: on PostgreSQL an advisory lock, on
MySQL/MariaDB ``GET_LOCK``; a second runner exits at once saying so.
On the cache engine there is nothing to do: the store expires entries itself.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, router, transaction
from django.utils import timezone

LOCK_NAME = "hardened_sessions.clearexpiredsessions"
# A stable 63-bit number for pg_try_advisory_lock, derived from the name.
LOCK_ID = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big") >> 1


def mysql_lock_name(database: str) -> str:
    """GET_LOCK names are server-wide (PostgreSQL's advisory locks are per database), so
    the name says which database it guards; hashed to stay within MySQL's 64 characters."""
    return f"{LOCK_NAME}:{hashlib.sha256(database.encode()).hexdigest()[:24]}"


@contextmanager
def single_runner(alias: str) -> Iterator[bool]:
    """Hold the database's advisory lock for the block; yield whether it was obtained
    (True where the database has no such lock)."""
    connection = connections[alias]
    vendor = connection.vendor
    if vendor not in ("postgresql", "mysql"):
        yield True
        return
    name = mysql_lock_name(connection.settings_dict["NAME"])
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_ID])
        else:
            cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
        obtained = bool(cursor.fetchone()[0])
    try:
        yield obtained
    finally:
        if obtained:
            with connection.cursor() as cursor:
                if vendor == "postgresql":
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
                else:
                    cursor.execute("SELECT RELEASE_LOCK(%s)", [name])


class Command(BaseCommand):
    help = (
        "Delete expired hardened sessions in batches (a no-op on the cache engine, whose "
        "store expires entries itself)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows deleted per transaction (default 1000).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count the expired sessions, delete none."
        )
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias (default: where the routers write sessions).",
        )
        parser.add_argument("--no-progress", action="store_true", help="Never show a progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        engine = settings.SESSION_ENGINE
        if engine == "hardened_sessions.backends.cache":
            self.stdout.write(
                "The session engine is the cache engine: the cache expires sessions by "
                "itself (each entry's TTL is its record's earliest deadline), so there is "
                "nothing to clear."
            )
            return
        from ...models import HardenedSession

        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        alias = options["database"] or router.db_for_write(HardenedSession)
        if alias not in connections:
            raise CommandError(f"Unknown database alias {alias!r}.")
        now = timezone.now()
        expired = HardenedSession.objects.using(alias).filter(expire_date__lt=now)
        if options["dry_run"]:
            count = expired.count()
            self.stdout.write(f"{count} expired session(s) would be deleted from {alias!r}.")
            return
        with single_runner(alias) as obtained:
            if not obtained:
                raise CommandError(
                    "Another clearexpiredsessions holds the lock on this database; not "
                    "starting a second one."
                )
            started = time.monotonic()
            deleted = self._clear(expired, alias, batch_size, options)
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"Deleted {deleted} expired session(s) from {alias!r} in {elapsed:.1f} s."
        )

    def _clear(self, expired: Any, alias: str, batch_size: int, options: Any) -> int:
        show = (
            not options["no_progress"]
            and options.get("verbosity", 1) >= 1
            and getattr(self.stdout, "isatty", lambda: False)()
            and sys.stderr.isatty()
        )
        progress: Any = None
        if show:
            from tqdm import tqdm

            progress = tqdm(total=expired.count(), unit="session", desc="clearing")
        deleted = 0
        try:
            while True:
                with transaction.atomic(using=alias):
                    batch = list(expired.order_by().values_list("pk", flat=True)[:batch_size])
                    if not batch:
                        break
                    count, _ = (
                        expired.model.objects.using(alias)
                        .filter(pk__in=batch, expire_date__lt=timezone.now())
                        .delete()
                    )
                deleted += count
                if not count:
                    break  # what is left was renewed meanwhile: not expired any more
                if progress is not None:
                    progress.update(count)
        finally:
            if progress is not None:
                progress.close()
        return deleted
