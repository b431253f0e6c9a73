"""The sync Redis store's client, from the session cache's own configuration.

Served backends: django-redis's ``RedisCache`` (default and Sentinel clients; not
``ShardClient``), Django's ``RedisCache`` and
:class:`hardened_sessions.redis_cluster.RedisClusterCache`. The store asks the backend
for its *primary* client (``write=True``) for every command, reads included, so a
replica lagging behind a logout is never consulted. Django's ``RedisCache`` offers no
public way to its client, so the store builds a pool of its own from the cache's
public configuration (:func:`django_primary_client`); the asyncio store reads the same
settings (:func:`django_pool_settings`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import UnsupportedCache

__all__ = ["django_pool_settings", "django_primary_client", "primary_client"]


def primary_client(cache: Any, alias: str) -> tuple[Callable[[], Any], bool]:
    """How the store reaches the primary of cache ``alias`` (a callable answering the
    redis-py client), and whether the store keeps the per-user index there (not on Redis
    Cluster). ``UnsupportedCache`` for django-redis's ``ShardClient``."""
    from ..redis_cluster import RedisClusterCache

    if isinstance(cache, RedisClusterCache):
        cluster = cache.get_client(write=True)
        return (lambda: cluster), False
    if type(cache).__module__.startswith("django_redis"):
        client = cache.client  # django-redis's public client object
        if type(client).__name__ == "ShardClient":
            raise UnsupportedCache(
                "django-redis's ShardClient spreads keys over servers by itself, and "
                "hardened_sessions can't reach a shard's primary through it; use "
                "Redis Cluster (hardened_sessions.redis_cluster.RedisClusterCache) instead."
            )
        return (lambda: client.get_client(write=True)), True
    primary = django_primary_client(alias)
    return (lambda: primary), True


def django_primary_client(alias: str) -> Any:
    """A redis-py client, over a connection pool of its own, for the primary (the first
    ``LOCATION``) of Django's ``RedisCache`` named ``alias``.

    Django's ``RedisCache`` offers no public way to its redis-py client or pools
    (checked: Django 5.2, 6.0 and 6.1, ``django/core/cache/backends/redis.py``; both are
    private attributes of the backend). So the pool is built here from the cache's public
    configuration, ``settings.CACHES[alias]``, as Django documents it and as its
    ``RedisCacheClient`` reads it: ``LOCATION`` one URL or several (a list, or a string
    split at ``,`` and ``;``), the first one the primary; ``OPTIONS`` ``pool_class``
    (default ``redis.ConnectionPool``) and ``parser_class`` (default redis-py's default
    parser), dotted paths or classes; ``serializer`` is the cache's own business (this
    store sends bytes); every other option goes to ``pool_class.from_url()``. Django 6.1
    adds only a client name (``driver_info`` / ``lib_name``), left out here.
    ``tests/test_store_clients.py`` compares these pools with the ones Django builds, so a
    change in Django's reading of OPTIONS fails there.

    The pool is the session store's own: its ``max_connections`` (an OPTION) bounds the
    store's connections, and Django's cache keeps its own pool for other uses.
    """
    import redis

    url, pool_class, parser_class, options = django_pool_settings(alias)
    pool = pool_class.from_url(url, parser_class=parser_class, **options)
    return redis.Redis(connection_pool=pool)


def django_pool_settings(alias: str) -> tuple[str, Any, Any, dict[str, Any]]:
    """``(primary URL, pool_class, parser_class, other OPTIONS)`` of Django's
    ``RedisCache`` named ``alias``, read as ``django_primary_client`` describes (classes
    imported); the asyncio store (:mod:`.redis_async_clients`) reads them here too."""
    import redis
    from django.conf import settings
    from django.utils.module_loading import import_string

    config: dict[str, Any] = settings.CACHES[alias]
    location = config.get("LOCATION", "")
    servers = re.split("[;,]", location) if isinstance(location, str) else list(location)
    options: dict[str, Any] = dict(config.get("OPTIONS") or {})
    options.pop("serializer", None)
    pool_class = options.pop("pool_class", None) or redis.ConnectionPool
    parser_class = options.pop("parser_class", None) or redis.connection.DefaultParser
    if isinstance(pool_class, str):
        pool_class = import_string(pool_class)
    if isinstance(parser_class, str):
        parser_class = import_string(parser_class)
    return servers[0], pool_class, parser_class, options
