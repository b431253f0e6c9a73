"""The compare-and-set token every store and engine hands back with a record.

A write that replaces a record names the record it expects to find by a
:class:`Token`: the version the stored record must still carry, and, where the
store has one, its own compare-and-set handle for that record (memcached's cas
unique). Stores never read a version out of the bytes they hold: their ``get``
answers the bytes and the handle (or ``None``), the engine builds the token once
the record verified, and hands a store's ``cas`` the exact bytes the stored
record must start with (computed by :mod:`hardened_sessions.record`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Handle", "Token"]

#: The store's own compare-and-set handle of a record: memcached's cas unique, the
#: database row's version column, or ``None`` where the version is all a store needs.
Handle = bytes | int | None


@dataclass(frozen=True, slots=True)
class Token:
    """The record a version-checked write expects to replace."""

    #: The version of the record the next write expects (records count from 1).
    version: int
    #: The store's own compare-and-set handle of that record, if it has one; ``None``
    #: right after a write, when the store does not know it yet.
    cas: Handle = None
