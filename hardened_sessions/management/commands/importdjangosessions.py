"""``manage.py importdjangosessions``: carry live Django sessions over to hardened records.

Run when switching ``SESSION_ENGINE`` from ``django.contrib.sessions``' db or
cached_db engine, so that existing cookies keep working. It reads the
``django_session`` table with plain SQL (``django.contrib.sessions`` need not stay
installed), verifies each row's data with Django's own signing under the JSON
serializer (never pickle), and writes a hardened record under the SHA-256 of the
key, with the configured hardened engine: a row on the db and cached_db engines, a
cache entry on the cache engine. Stock *cache* engine entries are never read: they
are pickles.

A stock session is imported at most once. Each imported key hash is recorded in
:class:`~hardened_sessions.models.ImportedDjangoSession`, so that a session ended
after its import (logout, revoke, rotation) stays ended when the command runs again,
while ``django_session`` is left untouched (a rollback, or old instances during a
rolling deploy, still read it):

* db engines: the marker and the record are inserted in one transaction per batch;
* cache engine: the markers of a batch are committed first, then the records are
  written. A crash in between loses those sessions (their users log in again), but
  never leaves a record that a later run could bring back after it ended. On a store
  failure the run stops, and the markers of the rows it never sent are withdrawn.

``--database`` names the database that holds ``django_session``; the records and the
markers always go where the database routers send them, as the engine reads them.

Two runs at once are safe: the marker's primary key admits one of them per key, the
other counts the key as already imported. A marker is pruned at the end of a complete
run once the stock row it stands for has expired (the date is refreshed whenever the
run sees the stock row extended, as old instances may still do). ``--dry-run`` writes
nothing, markers included. Rows that cannot be used are counted and skipped; the exit
status is non-zero when a record could not be written or when no row verified at all.

This module is the command: its options, the order of a run and its report. Its parts
each have a module of their own: ``importing.py`` reads and decodes the stock rows,
``importing_markers.py`` keeps the markers, ``importing_writes.py`` writes the records
with their markers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections, router
from django.utils import timezone

from ...backends.cache import SessionStore as CacheStore
from ...capabilities import Capability, capabilities_of
from ...importing import (
    BAD_EXPIRY,
    EXPIRED,
    MALFORMED_KEY,
    OVERSIZE,
    UNDECODABLE,
    Candidate,
    Converted,
    Counts,
    StockRow,
    candidates,
    convert,
    stock_batches,
)
from ...importing_markers import Markers
from ...importing_writes import StoreFailed, write_cache, write_rows


class Command(BaseCommand):
    help = "Import the live sessions of django.contrib.sessions' table as hardened records."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--dry-run", action="store_true", help="Report, write nothing.")
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias holding the stock table (default: where sessions, or on "
            "the cache engine the import markers, are written). Records and markers "
            "always go where the database routers send them, as the engine reads them.",
        )
        parser.add_argument(
            "--table", default="django_session", help="Table of the stock sessions."
        )

    # ------------------------------------------------------------------ set-up

    def handle(self, *args: Any, **options: Any) -> None:
        from ...models import HardenedSession, ImportedDjangoSession

        engine = import_module(settings.SESSION_ENGINE).SessionStore
        caps = capabilities_of(engine)
        if Capability.ROWS in caps:
            self.store: CacheStore | None = None
            default_alias = router.db_for_write(HardenedSession)
            needed = [HardenedSession, ImportedDjangoSession]
        elif Capability.CACHE in caps:
            self.store = engine()
            default_alias = router.db_for_write(ImportedDjangoSession)
            needed = [ImportedDjangoSession]
        else:
            raise CommandError(
                f"SESSION_ENGINE is {settings.SESSION_ENGINE!r}, not one of "
                "hardened_sessions' engines: switch to one before importing."
            )
        # The stock table is read from --database; the records and their markers are
        # written where the engine (the routers) will look for them, never elsewhere:
        # a record there would be reported imported yet never load, and markers kept
        # apart from the sessions could not stop a later run from importing again.
        source = options["database"] or default_alias
        for alias in (source, default_alias):
            if alias not in connections:
                raise CommandError(f"Unknown database alias {alias!r}.")
        self.alias = alias = default_alias
        where = repr(alias) if source == alias else f"{source!r} or {alias!r}"
        connection = connections[source]
        table = options["table"]
        if table not in connection.introspection.table_names():
            raise CommandError(f"No table {table!r} in database {source!r}: nothing to import.")
        tables = connections[alias].introspection.table_names()
        for model in needed:
            if model._meta.db_table not in tables:
                raise CommandError(
                    f"No table {model._meta.db_table!r} in database {alias!r}: "
                    f"run `manage.py migrate --database {alias}` first."
                )
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        self.dry_run = bool(options["dry_run"])
        self.now = timezone.now().astimezone(UTC)
        self.markers = Markers(alias, self.now, dry_run=self.dry_run)
        counts = Counts()
        pruned = None
        scanned = False
        try:
            for rows in stock_batches(connection, table, batch_size):
                self._batch(rows, counts)
            scanned = True
            pruned = self.markers.prune(batch_size)
        except DatabaseError as exc:
            self._report(counts, pruned=pruned, stopped=not scanned)
            raise CommandError(
                f"Database {where} failed ({exc.__class__.__name__}: {exc}); the run "
                "stopped. Only what is reported above was done; run the command again."
            ) from exc
        except StoreFailed as exc:
            self._report(counts, stopped=True)
            raise CommandError(
                f"The session store failed ({exc.__cause__}); the run stopped. Only what "
                "is reported above was done; run the command again once the store is back."
            ) from exc
        self._report(counts, pruned=pruned)
        problems: list[str] = []
        if counts.failed:
            problems.append(
                f"{counts.failed} sessions could not be written (see above): the database "
                "refused them."
            )
        if counts.decode_attempts and not (counts.verified or counts.already):
            problems.append(
                f"None of the {counts.decode_attempts} rows that reached verification "
                "verified. Were they signed with another SECRET_KEY? Add the old key to "
                "SECRET_KEY_FALLBACKS (or check that the stock engine used the JSON "
                "serializer)."
            )
        if problems:
            raise CommandError(" ".join(problems))

    # ------------------------------------------------------------------ a batch

    def _batch(self, rows: list[StockRow], counts: Counts) -> None:
        found = candidates(rows, self.now, counts)
        marked = self._marked(list(found))
        counts.already += len(marked)
        self.markers.refresh(
            [
                (store_key, found[store_key].expire)
                for store_key, seen in marked.items()
                if found[store_key].expire > seen
            ]
        )
        unmarked = [c for store_key, c in found.items() if store_key not in marked]
        adopted: list[Candidate] = []
        if self.store is None:
            # A record with no marker: written by a run before markers existed. Keep
            # it, and mark it so that it is never imported again.
            existing = self._existing_rows([c.store_key for c in unmarked])
            adopted = [c for c in unmarked if c.store_key in existing]
            unmarked = [c for c in unmarked if c.store_key not in existing]
            if self.dry_run:
                counts.already += len(adopted)

        fresh: list[Converted] = []
        for candidate in unmarked:
            outcome = convert(candidate, counts)
            if isinstance(outcome, str):
                counts.skipped[outcome] += 1
            else:
                fresh.append(outcome)
        if self.dry_run:
            counts.imported += len(fresh)
        elif self.store is None:
            write_rows(self.markers, fresh, adopted, counts)
        else:
            write_cache(self.markers, self.store, fresh, counts)

    def _marked(self, store_keys: list[str]) -> dict[str, datetime]:
        """The key hashes among ``key_hashes`` imported before, with the stock expiry
        their markers hold (aware)."""
        return self.markers.marked(store_keys)

    def _existing_rows(self, store_keys: list[str]) -> set[str]:
        """The key hashes among ``key_hashes`` that have a session row."""
        return self.markers.existing_rows(store_keys)

    # ------------------------------------------------------------------ report

    def _report(self, counts: Counts, *, pruned: int | None = None, stopped: bool = False) -> None:
        verb = "would import" if self.dry_run else "imported"
        skipped = counts.skipped
        self.stdout.write(
            f"{verb} {counts.imported}; skipped: {counts.already} already imported, "
            f"{skipped[EXPIRED]} expired, {skipped[BAD_EXPIRY]} without a valid "
            f"expire_date, {skipped[UNDECODABLE]} undecodable, {skipped[OVERSIZE]} over "
            f"MAX_BYTES, {skipped[MALFORMED_KEY]} with a key that is not 32 characters "
            "of [a-z0-9]."
        )
        if counts.failed:
            self.stderr.write(
                f"failed: {counts.failed} could not be written; their users log in again."
            )
        if stopped:
            self.stderr.write("The run stopped before the end of the table.")
        if pruned is not None:
            prune_verb = "would prune" if self.dry_run else "pruned"
            self.stdout.write(
                f"{prune_verb} {pruned} import markers of stock sessions that have expired."
            )
