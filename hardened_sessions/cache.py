"""``RedisClusterCache``: Django's ``RedisCache`` on a Redis Cluster.

Neither Django's nor django-redis's cache backend speaks the cluster protocol;
redis-py's ``RedisCluster`` does. This backend is Django's ``RedisCache`` with
its client swapped for one ``RedisCluster`` (which discovers the nodes and
routes each key to its primary), so the session engines (and any other cache
use) work on a cluster::

    CACHES = {
        "sessions": {
            "BACKEND": "hardened_sessions.cache.RedisClusterCache",
            "LOCATION": ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"],  # seed nodes
            "OPTIONS": {"socket_timeout": 1.0},   # passed to RedisCluster
        }
    }
    SESSION_CACHE_ALIAS = "sessions"

Multi-key operations (``get_many``, ``set_many``, ``delete_many``) are split per
key, since the keys of one call can live on different nodes; ``clear()``
flushes every primary.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

__all__ = ["RedisClusterCache"]


class RedisClusterCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        options.pop("pool_class", None)
        options.pop("parser_class", None)
        super().__init__(servers, **{k: v for k, v in options.items() if k == "serializer"})
        self._seed_nodes = list(servers)
        self._cluster_options = {k: v for k, v in options.items() if k != "serializer"}
        self._cluster: Any = None
        self._cluster_lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        if self._cluster is None:
            from redis.cluster import ClusterNode, RedisCluster

            with self._cluster_lock:
                if self._cluster is None:
                    nodes = []
                    for url in self._seed_nodes:
                        parts = urlsplit(url if "://" in url else f"redis://{url}")
                        nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
                    self._cluster = RedisCluster(startup_nodes=nodes, **self._cluster_options)
        return self._cluster

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        found = {}
        for key in keys:
            value = self.get(key, None)
            if value is not None:
                found[key] = value
        return found

    def set_many(self, data: Mapping[Any, Any], timeout: Any) -> None:
        for key, value in data.items():
            self.set(key, value, timeout)

    def delete_many(self, keys: Iterable[Any]) -> Any:
        return sum(bool(self.delete(key)) for key in keys)

    def clear(self) -> bool:
        from redis.cluster import RedisCluster

        return bool(self.get_client().flushdb(target_nodes=RedisCluster.PRIMARIES))


class RedisClusterCache(RedisCache):
    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisClusterCacheClient
