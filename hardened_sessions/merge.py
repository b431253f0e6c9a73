"""The three-way merge of a stale save onto the latest record: pure functions.

A save is version-checked (docs/architecture.rst, "Conflict"). When another request
wrote the record since this one loaded it, only what *this* request changed or
deleted is applied onto the latest record, so a flag another request removed stays
removed and a value it added stays. Afterwards the other requests' changes are
brought into this request's in-memory dict too, except for keys this request (or
another thread on the same session object) changed meanwhile.

Nothing here does I/O, takes a lock or knows about records: the engine
(``backends/save.py``) decodes the payloads, holds the locks and calls these with
plain dicts. ``tests/test_merge.py`` checks them with property tests.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["Changes", "apply", "diff", "merge_onto_latest", "their_changes_for_memory"]

# Marks "no such key" where None is a valid session value.
_MISSING: Any = object()


class Changes:
    """What one side changed between a base dict and its own: keys set to a new or
    changed value, and keys deleted."""

    __slots__ = ("changed", "deleted")

    def __init__(self, changed: dict[str, Any], deleted: set[str]) -> None:
        self.changed = changed
        self.deleted = deleted

    def __repr__(self) -> str:
        return f"Changes(changed={self.changed!r}, deleted={self.deleted!r})"

    def touched(self) -> set[str]:
        return set(self.changed) | self.deleted


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Changes:
    """The changes that turn ``old`` into ``new``."""
    changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
    return Changes(changed, set(old) - set(new))


def apply(target: MutableMapping[str, Any], changes: Changes) -> None:
    """Apply ``changes`` to ``target`` in place."""
    target.update(changes.changed)
    for k in changes.deleted:
        target.pop(k, None)


def merge_onto_latest(
    base: Mapping[str, Any],
    ours: Mapping[str, Any],
    latest: Mapping[str, Any],
    *,
    cleared: bool,
) -> dict[str, Any]:
    """The data to store when this request saves ``ours`` (loaded as ``base``) but the
    store now holds ``latest``.

    ``cleared``: this request emptied the session (``clear()``/``flush()``) before
    setting what ``ours`` holds; then ``ours`` wins whole, since nothing the other
    requests added may survive a deliberate clear.
    """
    if cleared:
        return dict(ours)
    merged = dict(latest)
    apply(merged, diff(base, ours))
    return merged


def their_changes_for_memory(
    base: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    theirs: Mapping[str, Any],
    current: Mapping[str, Any],
) -> Changes:
    """After a merged save: the other requests' changes (``base`` → ``theirs``) to bring
    into the in-memory dict, which is ``current`` now and was ``snapshot`` when the save
    encoded it.

    Left out: keys this request changed itself (``base`` → ``snapshot``: its own value
    was stored and stays), and keys changed in memory after the snapshot (newer than
    both records).
    """
    their = diff(base, theirs)
    ours = diff(base, snapshot)
    for k in ours.touched():
        their.changed.pop(k, None)
        their.deleted.discard(k)
    changed_since = {
        k for k in their.touched() if current.get(k, _MISSING) != snapshot.get(k, _MISSING)
    }
    return Changes(
        {k: v for k, v in their.changed.items() if k not in changed_since},
        their.deleted - changed_since,
    )
