"""Stock Django sessions read for ``importdjangosessions``, and decoded without unpickling.

The rows of ``django.contrib.sessions``' table are read with plain SQL, in batches and
in a form that every driver converts (:func:`stock_batches`), so that
``django.contrib.sessions`` need not stay installed. Each row is judged on its own
(:func:`candidates`: a well-formed key, a valid expiry still ahead), and its data is
verified with Django's own signing under the JSON serializer, never pickle, before it
becomes a hardened record (:func:`convert`). Stock *cache* engine entries are never
read: they are pickles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.sessions.serializers import JSONSerializer
from django.core import signing
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import keys, record, timeutil
from .buffers import default_pool
from .conf import get_config
from .exceptions import SessionTooLarge

__all__ = [
    "BAD_EXPIRY",
    "DJANGO_SALT",
    "EXPIRED",
    "MALFORMED_KEY",
    "OVERSIZE",
    "UNDECODABLE",
    "Candidate",
    "Converted",
    "Counts",
    "StockRow",
    "aware",
    "candidates",
    "convert",
    "stock_batches",
]

# The salt of django.contrib.sessions' db and cached_db engines (both classes are
# named SessionStore): "django.contrib.sessions." + class qualname.
DJANGO_SALT = "django.contrib.sessions.SessionStore"

# Why a stock row was skipped.
MALFORMED_KEY = "malformed key"
BAD_EXPIRY = "bad expire_date"
EXPIRED = "expired"
UNDECODABLE = "undecodable"
OVERSIZE = "oversize"

# A stock row as judged: (session_key, session_data, expire_date), each the text it
# holds, ``None`` when it is bytes that are not UTF-8, or the value the driver gave.
StockRow = tuple[object, object, object]


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
    session_data: object
    expire: datetime  # aware


@dataclass
class Converted:
    store_key: str
    expire: datetime  # aware
    raw: bytes
    rec: record.Record


def _text(value: object) -> object:
    """Bytes read from SQLite as the text they are, or ``None`` when they are not UTF-8
    (a malformed key, undecodable data, no valid expiry); other values as they are."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return None
    return value


def stock_batches(
    connection: BaseDatabaseWrapper, table: str, batch_size: int
) -> Iterator[list[StockRow]]:
    """Read the stock table in batches. A value the driver cannot turn into a Python
    one would fail the whole batch, every run: such values are read in a form that
    always converts, and judged row by row."""
    quoted = connection.ops.quote_name(table)
    last: int | str
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
        last = -1
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
        yield [(_text(k), _text(d), _text(e)) for _, k, d, e in rows]


def aware(value: object) -> datetime | None:
    """A stock row's expire_date as an aware datetime, or ``None`` if it is none."""
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


def candidates(rows: list[StockRow], now: datetime, counts: Counts) -> dict[str, Candidate]:
    """The rows of a batch with a well-formed key and an expiry after ``now``, by the
    key hash they are stored under; the others are counted as skipped."""
    found: dict[str, Candidate] = {}
    for session_key, session_data, expire_date in rows:
        if not isinstance(session_key, str) or not keys.is_well_formed(session_key):
            counts.skipped[MALFORMED_KEY] += 1
            continue
        expire = aware(expire_date)
        if expire is None:
            counts.skipped[BAD_EXPIRY] += 1
            continue
        if expire <= now:
            counts.skipped[EXPIRED] += 1
            continue
        store_key = keys.store_key(session_key)
        found[store_key] = Candidate(store_key, session_data, expire)
    return found


def convert(candidate: Candidate, counts: Counts) -> Converted | str:
    """The hardened record of a stock session whose data verifies, or why it cannot be
    imported (:data:`UNDECODABLE`, :data:`OVERSIZE`)."""
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
