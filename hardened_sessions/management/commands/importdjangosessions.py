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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.sessions.serializers import JSONSerializer
from django.core import signing
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ... import keys, record, timeutil
from ...backends.cache import SessionStore as CacheStore
from ...backends.db import SessionStore as DBStore
from ...buffers import default_pool
from ...conf import get_config
from ...exceptions import SessionStoreUnavailable, SessionTooLarge

# The salt of django.contrib.sessions' db and cached_db engines (both classes are
# named SessionStore): "django.contrib.sessions." + class qualname.
DJANGO_SALT = "django.contrib.sessions.SessionStore"

MALFORMED_KEY = "malformed key"
BAD_EXPIRY = "bad expire_date"
EXPIRED = "expired"
UNDECODABLE = "undecodable"
OVERSIZE = "oversize"


@dataclass
class Counts:
    imported: int = 0
    already: int = 0
    failed: int = 0
    skipped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (EXPIRED, BAD_EXPIRY, UNDECODABLE, OVERSIZE, MALFORMED_KEY), 0
        )
    )
    # Rows whose data went through Django's signing, and those that verified: when
    # none verifies, the secret is the likely culprit.
    decode_attempts: int = 0
    verified: int = 0


@dataclass
class Candidate:
    """A stock row worth importing: live, well-formed, not imported before."""

    store_key: str
    session_data: Any
    expire: datetime  # aware


@dataclass
class Converted:
    store_key: str
    expire: datetime  # aware
    raw: bytes
    rec: record.Record


def _text(value: Any) -> Any:
    """Bytes read from SQLite as the text they are, or ``None`` when they are not UTF-8
    (a malformed key, undecodable data, no valid expiry); other values as they are."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return None
    return value


class _StoreFailed(Exception):
    """The session store refused a write: the run stops."""


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
        if isinstance(engine, type) and issubclass(engine, DBStore):
            self.store: CacheStore | None = None
            default_alias = router.db_for_write(HardenedSession)
            needed = [HardenedSession, ImportedDjangoSession]
        elif isinstance(engine, type) and issubclass(engine, CacheStore):
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
        counts = Counts()
        pruned = None
        scanned = False
        try:
            self._scan(connection, table, batch_size, counts)
            scanned = True
            pruned = self._prune(batch_size)
        except DatabaseError as exc:
            self._report(counts, pruned=pruned, stopped=not scanned)
            raise CommandError(
                f"Database {where} failed ({exc.__class__.__name__}: {exc}); the run "
                "stopped. Only what is reported above was done; run the command again."
            ) from exc
        except _StoreFailed as exc:
            self._report(counts, stopped=True)
            raise CommandError(
                f"The session store failed ({exc.__cause__}); the run stopped. Only what "
                "is reported above was done; run the command again once the store is back."
            ) from exc
        self._report(counts, pruned=pruned)
        problems = []
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

    # ------------------------------------------------------------------ the scan

    def _scan(self, connection: Any, table: str, batch_size: int, counts: Counts) -> None:
        """Read the stock table in batches. A value the driver cannot turn into a
        Python one would fail the whole batch, every run: such values are read in a
        form that always converts, and judged row by row."""
        quoted = connection.ops.quote_name(table)
        if connection.vendor == "sqlite":
            # SQLite keeps any bytes in any column: text that is not UTF-8 makes the
            # driver raise, and the datetime converter raises on some text. Read bytes,
            # decode them here; page by rowid (Django's tables have one), as a key that is
            # not UTF-8 could not be handed back as the next page's bound.
            sql = (
                # A key kept as bytes or a number never matched a text key: stock
                # Django never served it.
                "SELECT rowid, CASE WHEN typeof(session_key) = 'text' "
                "THEN CAST(session_key AS BLOB) END, CAST(session_data AS BLOB), "
                f"CAST(expire_date AS BLOB) FROM {quoted} WHERE rowid > %s "
                "ORDER BY rowid LIMIT %s"
            )
            last: Any = -1
        else:
            # PostgreSQL keeps dates a Python datetime cannot hold ('infinity', years
            # beyond 9999 or BC): read those as NULL, a row without a valid expiry.
            expire_column = (
                "CASE WHEN EXTRACT(YEAR FROM expire_date) BETWEEN 1 AND 9999 THEN expire_date END"
                if connection.vendor == "postgresql"
                else "expire_date"
            )
            sql = (
                f"SELECT session_key, session_key, session_data, {expire_column} "
                f"FROM {quoted} WHERE session_key > %s ORDER BY session_key LIMIT %s"
            )
            last = ""
        while True:
            with connection.cursor() as cursor:
                cursor.execute(sql, [last, batch_size])
                rows = cursor.fetchall()
            if not rows:
                return
            last = rows[-1][0]
            self._batch([(_text(k), _text(d), _text(e)) for _, k, d, e in rows], counts)

    def _batch(self, rows: list[tuple[Any, Any, Any]], counts: Counts) -> None:
        candidates: dict[str, Candidate] = {}
        for session_key, session_data, expire_date in rows:
            if not isinstance(session_key, str) or not keys.is_well_formed(session_key):
                counts.skipped[MALFORMED_KEY] += 1
                continue
            expire = self._aware(expire_date)
            if expire is None:
                counts.skipped[BAD_EXPIRY] += 1
                continue
            if expire <= self.now:
                counts.skipped[EXPIRED] += 1
                continue
            store_key = keys.store_key(session_key)
            candidates[store_key] = Candidate(store_key, session_data, expire)

        marked = self._marked(list(candidates))
        counts.already += len(marked)
        self._refresh(
            [
                (key_hash, candidates[key_hash].expire)
                for key_hash, seen in marked.items()
                if candidates[key_hash].expire > seen
            ]
        )
        unmarked = [c for key_hash, c in candidates.items() if key_hash not in marked]
        adopted: list[Candidate] = []
        if self.store is None:
            # A record with no marker: written by a run before markers existed. Keep
            # it, and mark it so that it is never imported again.
            existing = self._existing_rows([c.store_key for c in unmarked])
            adopted = [c for c in unmarked if c.store_key in existing]
            unmarked = [c for c in unmarked if c.store_key not in existing]
            if self.dry_run:
                counts.already += len(adopted)

        fresh = []
        for candidate in unmarked:
            outcome = self._convert(candidate, counts)
            if isinstance(outcome, str):
                counts.skipped[outcome] += 1
            else:
                fresh.append(outcome)
        if self.dry_run:
            counts.imported += len(fresh)
        elif self.store is None:
            self._write_rows(fresh, adopted, counts)
        else:
            self._write_cache(self.store, fresh, counts)

    def _aware(self, value: object) -> datetime | None:
        """The stock row's expire_date as an aware datetime, or ``None`` if it is none."""
        moment: datetime | None
        if isinstance(value, str):
            try:
                moment = parse_datetime(value.strip())
            except ValueError:
                return None
        elif isinstance(value, datetime):
            moment = value
        else:
            return None
        if moment is None:
            return None
        if timezone.is_naive(moment):
            # Django writes UTC under USE_TZ, local time otherwise.
            zone = UTC if settings.USE_TZ else timezone.get_default_timezone()
            moment = timezone.make_aware(moment, zone)
        return moment.astimezone(UTC)

    def _convert(self, candidate: Candidate, counts: Counts) -> Converted | str:
        counts.decode_attempts += 1
        session_data = candidate.session_data
        if not isinstance(session_data, str) or not session_data:
            return UNDECODABLE
        try:
            data = signing.loads(session_data, salt=DJANGO_SALT, serializer=JSONSerializer)
        except Exception:  # noqa: BLE001 - any failure: not a session we can trust
            return UNDECODABLE
        if not isinstance(data, dict):
            return UNDECODABLE
        counts.verified += 1
        config = get_config()
        now_s = int(timeutil.now())
        rec = record.Record(
            data=data,
            version=1,
            created=now_s,
            activity=now_s,
            expiry=min(int(candidate.expire.timestamp()), record.MAX_TIMESTAMP),
            idle_deadline=now_s + config.idle_timeout if config.idle_timeout else None,
            absolute_deadline=now_s + config.absolute_timeout if config.absolute_timeout else None,
            user_id=record.user_id_of(data),
        )
        with default_pool.buffer() as buf:
            try:
                record.encode(rec, candidate.store_key, buf, config.max_bytes)
            except SessionTooLarge:
                return OVERSIZE
            except (TypeError, ValueError):
                return UNDECODABLE
            raw = buf.getvalue()
        return Converted(candidate.store_key, candidate.expire, raw, rec)

    # ------------------------------------------------------------------ markers

    def _field_moment(self, moment: datetime) -> datetime:
        """An aware moment as the DateTimeField value Django expects."""
        if settings.USE_TZ:
            return moment
        return timezone.make_naive(moment, timezone.get_default_timezone())

    def _marker(self, key_hash: str, expire: datetime) -> Any:
        from ...models import ImportedDjangoSession

        return ImportedDjangoSession(
            key_hash=key_hash,
            stock_expire_date=self._field_moment(expire),
            imported_at=self._field_moment(self.now),
        )

    def _marked(self, key_hashes: list[str]) -> dict[str, datetime]:
        """The key hashes among ``key_hashes`` imported before, with the stock expiry
        their markers hold (aware)."""
        from ...models import ImportedDjangoSession

        if not key_hashes:
            return {}
        found = (
            ImportedDjangoSession.objects.using(self.alias)
            .filter(pk__in=key_hashes)
            .values_list("pk", "stock_expire_date")
        )
        return {key_hash: self._aware(expire) or self.now for key_hash, expire in found}

    def _existing_rows(self, key_hashes: list[str]) -> set[str]:
        from ...models import HardenedSession

        if not key_hashes:
            return set()
        return set(
            HardenedSession.objects.using(self.alias)
            .filter(pk__in=key_hashes)
            .values_list("pk", flat=True)
        )

    def _refresh(self, extended: list[tuple[str, datetime]]) -> None:
        """Old instances still extend stock rows: a marker must outlive its stock row,
        so it takes the later date (and comes back if a concurrent prune took it)."""
        from ...models import ImportedDjangoSession

        if self.dry_run or not extended:
            return
        markers = ImportedDjangoSession.objects.using(self.alias)
        with transaction.atomic(using=self.alias):
            for key_hash, expire in extended:
                if markers.filter(pk=key_hash).update(stock_expire_date=self._field_moment(expire)):
                    continue
                try:
                    with transaction.atomic(using=self.alias):
                        self._marker(key_hash, expire).save(using=self.alias, force_insert=True)
                except IntegrityError:
                    pass  # another run put it back first

    def _prune(self, batch_size: int) -> int:
        """Delete the markers of stock rows that expired before this run began.

        Runs after a complete scan only: the scan refreshed the marker of every stock
        row still alive, so a marker still dated before the run's start stands for a
        row that has expired or is gone, and can never be imported again."""
        from ...models import ImportedDjangoSession

        stale = ImportedDjangoSession.objects.using(self.alias).filter(
            stock_expire_date__lte=self._field_moment(self.now)
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

    # ------------------------------------------------------------------ writes

    def _write_rows(self, fresh: list[Converted], adopted: list[Candidate], counts: Counts) -> None:
        """db engines: each marker and its row in one transaction."""
        from ...models import HardenedSession, ImportedDjangoSession

        alias = self.alias
        rows = {item.store_key: self._row(item) for item in fresh}
        markers = [self._marker(item.store_key, item.expire) for item in fresh]
        markers += [self._marker(item.store_key, item.expire) for item in adopted]
        if not markers:
            return
        try:
            with transaction.atomic(using=alias):
                ImportedDjangoSession.objects.using(alias).bulk_create(markers)
                HardenedSession.objects.using(alias).bulk_create(list(rows.values()))
        except IntegrityError:
            pass  # a concurrent run took some keys: one by one below
        else:
            counts.imported += len(rows)
            counts.already += len(adopted)
            return
        for marker in markers:
            row = rows.get(marker.key_hash)
            try:
                with transaction.atomic(using=alias):
                    if not self._insert(marker):
                        counts.already += 1
                        continue
                    if row is not None and not self._insert(row):
                        row = None  # a live record holds the key: it stays, now marked
            except IntegrityError:
                # Refused by the database for another reason (a constraint, a trigger):
                # neither the marker nor the row was written.
                counts.failed += 1
                continue
            if row is None:
                counts.already += 1
            else:
                counts.imported += 1

    def _insert(self, obj: Any) -> bool:
        """INSERT ``obj``; ``False`` when its primary key is taken (raises
        ``IntegrityError`` when the database refuses it for another reason)."""
        try:
            with transaction.atomic(using=self.alias):
                obj.save(using=self.alias, force_insert=True)
        except IntegrityError:
            if type(obj)._default_manager.using(self.alias).filter(pk=obj.pk).exists():
                return False
            raise
        return True

    def _row(self, item: Converted) -> Any:
        from ...models import HardenedSession

        rec = item.rec
        return HardenedSession(
            key_hash=item.store_key,
            data=item.raw,
            expire_date=timeutil.moment_of(rec.deadline),
            created=timeutil.moment_of(rec.created),
            last_activity=timeutil.moment_of(rec.activity),
            user_id=rec.user_id,
            size=len(item.raw),
            version=rec.version,
        )

    def _write_cache(self, store: CacheStore, fresh: list[Converted], counts: Counts) -> None:
        """Cache engine: the markers first (committed), then the records.

        A marker without its record is a session lost (its user logs in again); a
        record without its marker could be imported again after it ended."""
        from ...models import ImportedDjangoSession

        if not fresh:
            return
        alias = self.alias
        markers = [self._marker(item.store_key, item.expire) for item in fresh]
        try:
            with transaction.atomic(using=alias):
                ImportedDjangoSession.objects.using(alias).bulk_create(markers)
            todo = fresh
        except IntegrityError:
            # A concurrent run took some keys: one by one, and only ours go on.
            todo = []
            for item, marker in zip(fresh, markers, strict=True):
                try:
                    if self._insert(marker):
                        todo.append(item)
                    else:
                        counts.already += 1
                except IntegrityError:
                    counts.failed += 1
        sent = 0
        try:
            for item in todo:
                sent += 1
                view = memoryview(item.raw)
                try:
                    token = store._write_new(item.store_key, view, item.rec)
                finally:
                    view.release()
                if token is None:
                    counts.already += 1  # a live record holds the key: it stays
                else:
                    counts.imported += 1
        except BaseException as exc:
            # The rows never sent can have no record: their markers go, so that a later
            # run imports them. The one being written keeps its marker (it may have
            # been stored: fail closed).
            unsent = [item.store_key for item in todo[sent:]]
            if unsent:
                ImportedDjangoSession.objects.using(alias).filter(pk__in=unsent).delete()
            if isinstance(exc, SessionStoreUnavailable):
                counts.failed += 1
                raise _StoreFailed() from exc
            raise

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
