"""``MAX_SESSIONS_PER_USER``: what every engine shares to enforce it.

A session that *gains* its user (a login: the record names a user that the record it
replaces did not) is the only write that enforces the cap. Each engine does it in one
serialised step with that write, so that two logins racing through it cannot each end
the other (docs/settings.rst, ``MAX_SESSIONS_PER_USER``):

* db and cached_db: one transaction that writes the session's row, under a per-user
  lock (PostgreSQL ``pg_advisory_xact_lock``, MySQL/MariaDB ``GET_LOCK``, SQLite the
  database's write lock), trims or refuses (``hardened_sessions.backends.db``);
* cache engine on Redis: the Lua script that writes the record and its index entry
  (``hardened_sessions.stores.redis``); on ``LocMemCache``: under the store's lock;
* memcached and Redis Cluster keep no per-user index, so they cannot enforce it:
  ``hardened_sessions.W402`` says so.

Under ``MAX_SESSIONS_POLICY = "end_oldest"`` (default) the user's other live sessions
are trimmed to the newest N - 1 (by creation) and each one ended sends
``session_revoked`` with ``Reason.CAP``; under ``"refuse"`` a login that finds N live
sessions is not stored, sends ``session_rejected`` with ``Reason.SESSION_LIMIT`` and
raises :class:`~hardened_sessions.exceptions.SessionLimitReached` (the middleware
answers 409).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning

from .conf import Config
from .exceptions import SessionLimitReached
from .signals import Reason, emit, session_rejected, session_revoked

__all__ = [
    "UserCap",
    "cap_for",
    "check_cap_enforced",
    "mysql_user_lock_name",
    "peek_created",
    "report",
    "user_lock_id",
]

logger = logging.getLogger("hardened_sessions")

# A record starts ``hs1:{"n":<version>,"c":<created>,`` (record.py).
_CREATED = re.compile(rb'^hs1:\{"n":\d+,"c":(\d+),')
_LOCK_NAME = "hardened_sessions.user:"


@dataclass(slots=True)
class UserCap:
    """The cap one login's write enforces, and what the store did about it."""

    user: str
    limit: int
    refuse: bool = False
    #: Store keys (key hashes) of the user's sessions this write ended.
    ended: list[str] = field(default_factory=list)


def cap_for(config: Config, user: str | None, previous: str | None) -> UserCap | None:
    """The cap a write of a record naming ``user`` enforces: ``None`` unless a cap is
    set and the record gains that user (``previous`` is the user the replaced record
    named, ``None`` for a new record)."""
    limit = config.max_sessions_per_user
    if limit is None or user is None or user == previous:
        return None
    return UserCap(user, limit, refuse=config.max_sessions_policy == "refuse")


def peek_created(raw: bytes) -> int:
    """The creation time a record carries (0 when it cannot be read): for ordering a
    user's sessions, never for trusting one."""
    found = _CREATED.match(raw[:64])
    return int(found.group(1)) if found else 0


def user_lock_id(user: str) -> int:
    """A stable 63-bit number for ``pg_advisory_xact_lock``, derived from the user's pk."""
    digest = hashlib.sha256((_LOCK_NAME + user).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def mysql_user_lock_name(database: str, user: str) -> str:
    """The ``GET_LOCK`` name of a user's logins on ``database`` (names are server-wide;
    hashed to stay within MySQL's 64 characters)."""
    digest = hashlib.sha256(f"{database}\0{user}".encode()).hexdigest()[:40]
    return f"hs:cap:{digest}"


def report(sender: Any, cap: UserCap, ended: Iterable[str]) -> None:
    """``session_revoked`` (``Reason.CAP``) for each session the cap ended."""
    from .backends.base import hash_prefix

    for store_key in ended:
        emit(
            session_revoked,
            sender,
            key_hash_prefix=hash_prefix(store_key),
            user_id=cap.user,
            reason=Reason.CAP,
        )


def refuse(sender: Any, store_key: str, cap: UserCap) -> SessionLimitReached:
    """Log and signal a refused login; the exception to raise."""
    from .backends.base import hash_prefix

    logger.info(
        "Login refused for session %s…: the user has %d live session(s) "
        "(MAX_SESSIONS_PER_USER, MAX_SESSIONS_POLICY='refuse').",
        hash_prefix(store_key),
        cap.limit,
    )
    emit(
        session_rejected,
        sender,
        key_hash_prefix=hash_prefix(store_key),
        reason=Reason.SESSION_LIMIT,
    )
    return SessionLimitReached(cap.limit)


# --- hardened_sessions.W402 ----------------------------------------------------------


def _unenforced_reason() -> str | None:
    """Why the configured engine cannot enforce the cap, or ``None`` when it can."""
    from .capabilities import Capability, engine_capabilities

    caps = engine_capabilities()
    if not caps or Capability.USER_CAP in caps:
        return None  # db and cached_db enforce it; other engines are W201's business
    from django.core.cache import caches

    from .stores import store_class_for

    try:
        cache = caches[settings.SESSION_CACHE_ALIAS]
        store_class_for(cache)
    except Exception:  # noqa: BLE001 -- reported by hardened_sessions.E010/E211
        return None
    name = f"{type(cache).__module__}.{type(cache).__qualname__}"
    if Capability.USER_INDEX in caps:
        return (
            f"the session cache ({name}) has a KEY_FUNCTION that does not keep the key as "
            "it is, so a login's script cannot name the user's other sessions"
        )
    return f"the session cache ({name}) keeps no per-user index (memcached, Redis Cluster)"


@register(Tags.security, "sessions")
def check_cap_enforced(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``hardened_sessions.W402``: MAX_SESSIONS_PER_USER is set but the session store
    cannot enforce it."""
    from .conf import DEFAULTS, validate

    raw = getattr(settings, "HARDENED_SESSIONS", None)
    if validate(raw):
        return []  # a bad setting is E001
    if {**DEFAULTS, **(raw or {})}["MAX_SESSIONS_PER_USER"] is None:
        return []
    reason = _unenforced_reason()
    if reason is None:
        return []
    return [
        CheckWarning(
            "HARDENED_SESSIONS['MAX_SESSIONS_PER_USER'] is set, but it is not enforced: "
            f"{reason}. Logins are neither capped nor refused.",
            hint="Use the db or cached_db engine, or Redis without Cluster (and with "
            "Django's default KEY_FUNCTION), to cap a user's sessions; or remove the "
            "setting.",
            id="hardened_sessions.W402",
        )
    ]
