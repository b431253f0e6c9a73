"""The writes of ``importdjangosessions``: each imported record together with its marker.

* db engines (:func:`write_rows`): the marker and the record are inserted in one
  transaction per batch;
* cache engine (:func:`write_cache`): the markers of a batch are committed first, then
  the records are written. A crash in between loses those sessions (their users log in
  again), but never leaves a record that a later run could bring back after it ended.
  On a store failure the run stops (:class:`StoreFailed`), and the markers of the rows
  it never sent are withdrawn.

Two runs at once are safe: the marker's primary key admits one of them per key, the
other counts the key as already imported.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import Model

from . import timeutil
from .backends.cache import SessionStore as CacheStore
from .exceptions import SessionStoreUnavailable
from .importing import Candidate, Converted, Counts
from .importing_markers import Markers
from .models import HardenedSession, ImportedDjangoSession

__all__ = ["StoreFailed", "write_cache", "write_rows"]


class StoreFailed(Exception):
    """The session store refused a write: the run stops."""


def _insert(obj: Model, alias: str) -> bool:
    """INSERT ``obj``; ``False`` when its primary key is taken (raises
    ``IntegrityError`` when the database refuses it for another reason)."""
    try:
        with transaction.atomic(using=alias):
            obj.save(using=alias, force_insert=True)
    except IntegrityError:
        if type(obj)._default_manager.using(alias).filter(pk=obj.pk).exists():
            return False
        raise
    return True


def _row(item: Converted) -> HardenedSession:
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


def write_rows(
    markers: Markers, fresh: list[Converted], adopted: list[Candidate], counts: Counts
) -> None:
    """db engines: each marker and its row in one transaction. ``adopted`` are rows
    already there without a marker: they only get one."""
    alias = markers.alias
    rows = {item.store_key: _row(item) for item in fresh}
    new_markers = [markers.marker(item.store_key, item.expire) for item in fresh]
    new_markers += [markers.marker(item.store_key, item.expire) for item in adopted]
    if not new_markers:
        return
    try:
        with transaction.atomic(using=alias):
            ImportedDjangoSession.objects.using(alias).bulk_create(new_markers)
            HardenedSession.objects.using(alias).bulk_create(list(rows.values()))
    except IntegrityError:
        pass  # a concurrent run took some keys: one by one below
    else:
        counts.imported += len(rows)
        counts.already += len(adopted)
        return
    for marker in new_markers:
        row = rows.get(marker.key_hash)
        try:
            with transaction.atomic(using=alias):
                if not _insert(marker, alias):
                    counts.already += 1
                    continue
                if row is not None and not _insert(row, alias):
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


def write_cache(
    markers: Markers, store: CacheStore, fresh: list[Converted], counts: Counts
) -> None:
    """Cache engine: the markers first (committed), then the records.

    A marker without its record is a session lost (its user logs in again); a
    record without its marker could be imported again after it ended."""
    if not fresh:
        return
    alias = markers.alias
    new_markers = [markers.marker(item.store_key, item.expire) for item in fresh]
    try:
        with transaction.atomic(using=alias):
            ImportedDjangoSession.objects.using(alias).bulk_create(new_markers)
        todo = fresh
    except IntegrityError:
        # A concurrent run took some keys: one by one, and only ours go on.
        todo = []
        for item, marker in zip(fresh, new_markers, strict=True):
            try:
                if _insert(marker, alias):
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
            raise StoreFailed() from exc
        raise
