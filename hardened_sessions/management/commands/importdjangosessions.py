"""``manage.py importdjangosessions``: carry live Django sessions over to hardened records.

Run once when switching ``SESSION_ENGINE`` from ``django.contrib.sessions``' db or
cached_db engine, so that existing cookies keep working. It reads the
``django_session`` table with plain SQL (``django.contrib.sessions`` need not stay
installed), verifies each row's data with Django's own signing under the JSON
serializer (never pickle), and writes a hardened record under the SHA-256 of the
key. Idempotent (a key already imported is skipped), batched, with ``--dry-run``.
Stock *cache* engine entries are never read: they are pickles.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from django.contrib.sessions.serializers import JSONSerializer
from django.core import signing
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from ... import keys, record
from ...backends.db import moment_of
from ...buffers import default_pool
from ...conf import get_config
from ...exceptions import SessionTooLarge

# The salt of django.contrib.sessions' db and cached_db engines (both classes are
# named SessionStore): "django.contrib.sessions." + class qualname.
DJANGO_SALT = "django.contrib.sessions.SessionStore"


class Command(BaseCommand):
    help = "Import the live sessions of django.contrib.sessions' table as hardened records."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--dry-run", action="store_true", help="Report, write nothing.")
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias holding both tables (default: where sessions are written).",
        )
        parser.add_argument(
            "--table", default="django_session", help="Table of the stock sessions."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from ...models import HardenedSession

        alias = options["database"] or router.db_for_write(HardenedSession)
        if alias not in connections:
            raise CommandError(f"Unknown database alias {alias!r}.")
        connection = connections[alias]
        table = options["table"]
        if table not in connection.introspection.table_names():
            raise CommandError(f"No table {table!r} in database {alias!r}: nothing to import.")
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        dry_run = options["dry_run"]
        counts = dict.fromkeys(
            ("imported", "already", "expired", "undecodable", "oversize", "malformed key"), 0
        )
        quoted = connection.ops.quote_name(table)
        last_key = ""
        now = timezone.now()
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT session_key, session_data, expire_date FROM {quoted} "
                    "WHERE session_key > %s ORDER BY session_key LIMIT %s",
                    [last_key, batch_size],
                )
                rows = cursor.fetchall()
            if not rows:
                break
            last_key = rows[-1][0]
            to_create = []
            for session_key, session_data, expire_date in rows:
                outcome, row = self._convert(session_key, session_data, expire_date, now)
                if row is None:
                    counts[outcome] += 1
                else:
                    to_create.append(row)
            existing = set(
                HardenedSession.objects.using(alias)
                .filter(pk__in=[row.pk for row in to_create])
                .values_list("pk", flat=True)
            )
            fresh = [row for row in to_create if row.pk not in existing]
            counts["already"] += len(to_create) - len(fresh)
            if fresh and not dry_run:
                try:
                    with transaction.atomic(using=alias):
                        HardenedSession.objects.using(alias).bulk_create(fresh)
                except IntegrityError:
                    # A concurrent run or a live login took some keys: go one by one.
                    for row in fresh:
                        try:
                            with transaction.atomic(using=alias):
                                row.save(using=alias, force_insert=True)
                        except IntegrityError:
                            counts["already"] += 1
                            counts["imported"] -= 1
            counts["imported"] += len(fresh)
        verb = "would import" if dry_run else "imported"
        self.stdout.write(
            f"{verb} {counts['imported']}; skipped: {counts['already']} already imported, "
            f"{counts['expired']} expired, {counts['undecodable']} undecodable, "
            f"{counts['oversize']} over MAX_BYTES, {counts['malformed key']} with a key "
            "that is not 32 characters of [a-z0-9]."
        )

    def _convert(
        self, session_key: str, session_data: str, expire_date: datetime, now: datetime
    ) -> tuple[str, Any]:
        from ...models import HardenedSession

        if not keys.is_well_formed(session_key):
            return "malformed key", None
        if timezone.is_naive(expire_date) and timezone.is_aware(now):
            expire_date = timezone.make_aware(expire_date, UTC)
        if expire_date <= now:
            return "expired", None
        try:
            data = signing.loads(session_data, salt=DJANGO_SALT, serializer=JSONSerializer)
        except Exception:  # noqa: BLE001 - any failure: not a session we can trust
            return "undecodable", None
        if not isinstance(data, dict):
            return "undecodable", None
        config = get_config()
        now_s = int(time.time())
        expiry = int(expire_date.timestamp())
        rec = record.Record(
            data=data,
            version=1,
            created=now_s,
            activity=now_s,
            expiry=expiry,
            idle_deadline=now_s + config.idle_timeout if config.idle_timeout else None,
            absolute_deadline=now_s + config.absolute_timeout if config.absolute_timeout else None,
            user_id=record.user_id_of(data),
        )
        store_key = keys.store_key(session_key)
        with default_pool.buffer() as buf:
            try:
                size = record.encode(rec, store_key, buf, config.max_bytes)
            except SessionTooLarge:
                return "oversize", None
            except (TypeError, ValueError):
                return "undecodable", None
            raw = buf.getvalue()
        return "imported", HardenedSession(
            key_hash=store_key,
            data=raw,
            expire_date=moment_of(rec.deadline),
            created=moment_of(rec.created),
            last_activity=moment_of(rec.activity),
            user_id=rec.user_id,
            size=size,
            version=rec.version,
        )
