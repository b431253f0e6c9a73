"""Time, in one place: the clock the session policy reads, and its conversions.

Records carry whole seconds since the epoch (``created``, ``activity``, the
deadlines); the database columns are ``DateTimeField`` values; cache stores take a
TTL in seconds. Every part of the package that reads the clock for a record goes
through :func:`now`, so a test can move time for all of them at once
(``tests/support/clock.py`` replaces this module's ``time``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django.conf import settings

__all__ = ["moment_of", "now", "ttl_for"]


def now() -> float:
    """Seconds since the epoch, as the policy sees them."""
    return time.time()


def moment_of(ts: int) -> datetime:
    """A stored timestamp as the ``DateTimeField`` value Django expects under ``USE_TZ``."""
    if settings.USE_TZ:
        return datetime.fromtimestamp(ts, tz=UTC)
    return datetime.fromtimestamp(ts)


def ttl_for(deadline: int) -> int:
    """Seconds a store should keep a record whose earliest deadline is ``deadline``
    (at least 1: a TTL of 0 means "forever" to some stores)."""
    return max(1, deadline - int(now()))
