"""``RedisClusterCache``: a Django cache backend on a Redis Cluster.

Neither Django's nor django-redis's cache backend speaks the cluster protocol;
redis-py's ``RedisCluster`` does. This backend is a ``BaseCache`` over one
``RedisCluster`` client (which discovers the nodes and routes each key to its
primary), with the values stored as Django's ``RedisCache`` stores them (integers as
such, anything else pickled by Django's own serializer, or the ``serializer`` OPTION),
so the session engines (and any other cache use) work on a cluster::

    CACHES = {
        "sessions": {
            "BACKEND": "hardened_sessions.redis_cluster.RedisClusterCache",
            "LOCATION": ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"],  # seed nodes
            "OPTIONS": {"socket_timeout": 1.0},   # passed to RedisCluster
        }
    }
    SESSION_CACHE_ALIAS = "sessions"

Multi-key operations (``get_many``, ``set_many``, ``delete_many``) are split per
key, since the keys of one call can live on different nodes; ``clear()``
flushes every primary. The session engines never use the serializer: they send
bytes through :meth:`RedisClusterCache.get_client`.

Only Django's public cache API is used (``BaseCache``, the documented base class of
custom backends); nothing of Django's own ``RedisCache`` internals.

The old path, ``hardened_sessions.cache.RedisClusterCache``, still loads this class, with
a ``DeprecationWarning`` and the system check ``hardened_sessions.W213``, until the next
major release.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.utils.module_loading import import_string

__all__ = ["DJANGO_SERIALIZER", "RedisClusterCache"]


# The values of other cache users are stored as Django's RedisCache stores them, through
# Django's own serializer class (an int as is, anything else pickled by Django): this
# package never pickles or unpickles anything itself. Django has no public name for that
# class; it is the default of RedisCache's ``serializer`` option in Django 5.2, 6.0 and
# 6.1 (tests/test_scaleout.py checks the path still imports and round-trips).
DJANGO_SERIALIZER = "django.core.cache.backends.redis.RedisSerializer"


class RedisClusterCache(BaseCache):
    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(params)
        if isinstance(server, str):
            server = [s for s in server.replace(";", ",").split(",") if s]
        self._seed_nodes = list(server)
        options = dict(params.get("OPTIONS") or {})
        # Django's RedisCache options that mean nothing to RedisCluster.
        options.pop("pool_class", None)
        options.pop("parser_class", None)
        serializer = options.pop("serializer", None) or DJANGO_SERIALIZER
        if isinstance(serializer, str):
            serializer = import_string(serializer)
        if callable(serializer):
            serializer = serializer()
        self._serializer = serializer
        self._cluster_options = options
        self._cluster: Any = None
        self._cluster_lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        """The ``RedisCluster`` client (one per cache object, thread-safe)."""
        if self._cluster is None:
            from redis.cluster import ClusterNode, RedisCluster

            with self._cluster_lock:
                if self._cluster is None:
                    nodes = []
                    for url in self._seed_nodes:
                        parts = urlsplit(url if "://" in url else f"redis://{url}")
                        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
                        # redis-py leaves ClusterNode.__init__ unannotated.
                        nodes.append(ClusterNode(host, port))  # type: ignore[no-untyped-call]
                    self._cluster = RedisCluster(startup_nodes=nodes, **self._cluster_options)
        return self._cluster

    def close_client(self) -> None:
        """Close the ``RedisCluster`` client's connections (``close()``, which Django
        calls after each request, leaves them open, as Django's ``RedisCache`` does)."""
        with self._cluster_lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None:
        if timeout == DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        # None: no expiry; zero or less: the key is deleted (as Django's RedisCache).
        return None if timeout is None else max(0, int(timeout))

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        client = self.get_client(key, write=True)
        ttl = self.get_backend_timeout(timeout)
        data = self._serializer.dumps(value)
        if ttl == 0:
            created = bool(client.set(key, data, nx=True))
            if created:
                client.delete(key)
            return created
        return bool(client.set(key, data, ex=ttl, nx=True))

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        value = self.get_client(key).get(key)
        return default if value is None else self._serializer.loads(value)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        client = self.get_client(key, write=True)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            client.delete(key)
        else:
            client.set(key, self._serializer.dumps(value), ex=ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        client = self.get_client(key, write=True)
        ttl = self.get_backend_timeout(timeout)
        if ttl is None:
            return bool(client.persist(key))
        return bool(client.expire(key, ttl))

    def delete(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(self.get_client(key, write=True).delete(key))

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        found = {}
        for key in keys:
            value = self.get(key, None, version=version)
            if value is not None:
                found[key] = value
        return found

    def has_key(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(self.get_client(key).exists(key))

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        client = self.get_client(key, write=True)
        if not client.exists(key):
            raise ValueError(f"Key '{key}' not found.")
        return int(client.incr(key, delta))

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        for key, value in data.items():
            self.set(key, value, timeout, version=version)
        return []

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        for key in keys:
            self.delete(key, version=version)

    def clear(self) -> bool:  # type: ignore[override]  # as Django's RedisCache
        from redis.cluster import RedisCluster

        return bool(self.get_client().flushdb(target_nodes=RedisCluster.PRIMARIES))
