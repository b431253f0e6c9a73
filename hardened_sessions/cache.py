"""Deprecated: the Redis Cluster cache backend is now :mod:`hardened_sessions.redis_cluster`.

``hardened_sessions.cache.RedisClusterCache`` still loads it (``CACHES`` entries, imports),
with a ``DeprecationWarning`` naming the new path; the system check
``hardened_sessions.W213`` points at each ``CACHES`` entry that still uses it. This module
is removed in the next major release.
"""

from __future__ import annotations

import warnings
from typing import Any

# Served by __getattr__ below (PEP 562), so that each use of the old path warns.
__all__ = ["DJANGO_SERIALIZER", "RedisClusterCache"]  # noqa: F822


def __getattr__(name: str) -> Any:
    # At each use rather than once at import: Django resolves CACHES[alias]["BACKEND"]
    # by attribute each time it builds the cache, and a module is imported only once.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import redis_cluster

    warnings.warn(
        f"hardened_sessions.cache.{name} is deprecated and will be removed in the next "
        f"major release: use hardened_sessions.redis_cluster.{name}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(redis_cluster, name)
