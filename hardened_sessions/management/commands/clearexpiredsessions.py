"""``manage.py clearexpiredsessions``: delete expired sessions in batches.

The sweep is the db engine's (:meth:`hardened_sessions.backends.db.SessionStore.delete_expired`,
also what ``SessionStore.clear_expired()`` and ``manage.py clearsessions`` run): bounded
memory (one batch of primary keys at a time), one ``DELETE`` per batch that checks the
deadline again (a session renewed since the batch was listed stays), a progress bar on
a terminal, and one runner at a time: on PostgreSQL an advisory lock, on MySQL/MariaDB
``GET_LOCK``; a second runner exits at once saying so.
On the cache engine there is nothing to do: the store expires entries itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, router
from django.utils import timezone

from ...backends.db import SessionStore
from ...backends.db_sweep import LOCK_ID, LOCK_NAME, mysql_lock_name, single_runner
from ...capabilities import Capability, engine_capabilities
from ...exceptions import SessionStoreUnavailable

__all__ = ["LOCK_ID", "LOCK_NAME", "Command", "mysql_lock_name", "single_runner"]


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
            help="Rows deleted per statement (default 1000).",
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
        caps = engine_capabilities()
        if Capability.CACHE in caps and Capability.ROWS not in caps:
            self.stdout.write(
                "The session engine is the cache engine: the cache expires sessions by "
                "itself (each entry's TTL is its record's earliest deadline), so there is "
                "nothing to clear."
            )
            return
        model = SessionStore.get_model_class()
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        alias = options["database"] or router.db_for_write(model)
        if alias not in connections:
            raise CommandError(f"Unknown database alias {alias!r}.")
        expired = model.objects.using(alias).filter(expire_date__lte=timezone.now())
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
            progress = self._progress(expired, options)
            try:
                deleted = SessionStore.delete_expired(
                    batch_size,
                    using=alias,
                    progress=progress.update if progress is not None else None,
                )
            except SessionStoreUnavailable as exc:
                raise CommandError(str(exc)) from exc
            finally:
                if progress is not None:
                    progress.close()
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"Deleted {deleted} expired session(s) from {alias!r} in {elapsed:.1f} s."
        )

    def _progress(self, expired: Any, options: Any) -> Any:
        """A progress bar on a terminal (quiet otherwise)."""
        show = (
            not options["no_progress"]
            and options.get("verbosity", 1) >= 1
            and getattr(self.stdout, "isatty", lambda: False)()
            and sys.stderr.isatty()
        )
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=expired.count(), unit="session", desc="clearing")
