"""What a session engine or byte store can do, asked in one way.

Every engine of this package answers :meth:`capabilities` (a classmethod: the db and
cached_db engines answer a constant, the cache engine what its cache's store can do,
decided from the settings without connecting), and every byte store of
:mod:`hardened_sessions.stores` has a ``capabilities`` attribute.
:func:`engine_capabilities` answers for the configured ``SESSION_ENGINE``: an empty
flag for an engine of another package, or one that cannot be imported (which
``hardened_sessions.E200`` reports). Subclasses of an engine inherit its answer.
"""

from __future__ import annotations

import enum
from importlib import import_module
from typing import Any

from django.conf import settings

__all__ = ["Capability", "capabilities_of", "engine_capabilities"]


class Capability(enum.Flag):
    #: Sessions are rows of the ``HardenedSession`` model (db, cached_db): the admin's
    #: table, the expiry sweep, the import target and the device metadata columns.
    ROWS = enum.auto()
    #: Sessions, or copies of them, live in a cache (cache, cached_db).
    CACHE = enum.auto()
    #: A user's sessions can be listed (and so revoked): the rows, or a store's
    #: per-user index (Redis without Cluster, LocMemCache).
    USER_INDEX = enum.auto()
    #: ``MAX_SESSIONS_PER_USER`` is enforced in the write of a login itself.
    USER_CAP = enum.auto()


NONE = Capability(0)


def engine_capabilities() -> Capability:
    """The capabilities of ``SESSION_ENGINE``'s ``SessionStore``; empty when it is not a
    hardened engine or cannot be imported."""
    try:
        engine = import_module(settings.SESSION_ENGINE).SessionStore
    except Exception:  # noqa: BLE001 -- reported by hardened_sessions.E200
        return NONE
    return capabilities_of(engine)


def capabilities_of(engine: Any) -> Capability:
    """The capabilities of the engine class ``engine`` (a ``SessionStore``); empty when
    it is not a hardened engine."""
    from .backends.base import HardenedSessionBase

    if not (isinstance(engine, type) and issubclass(engine, HardenedSessionBase)):
        return NONE
    caps = getattr(engine, "capabilities", lambda: NONE)()
    return caps if isinstance(caps, Capability) else NONE
