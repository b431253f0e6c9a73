"""The asyncio Redis store's clients, built from the session cache's own configuration.

As the sync store's (:mod:`.redis_clients`):

* Django's ``RedisCache``: the first ``LOCATION`` URL and ``OPTIONS`` as
  :func:`.redis_clients.django_pool_settings` reads them, on redis.asyncio's
  ``BlockingConnectionPool`` (for ``pool_class`` ``ConnectionPool``, the default, it
  waits up to :data:`POOL_TIMEOUT` s for a free connection, and holds at most the
  cache's ``max_connections``, else redis-py's default for a plain pool; before
  redis-py :data:`BLOCKING_POOL_FROM`, the plain pool; for ``BlockingConnectionPool``,
  with the cache's own options);
* django-redis (``DefaultClient`` and its subclasses, ``SentinelClient``): the primary
  URL, with the options django-redis's own connection factory reads
  (``make_connection_params``: ``PASSWORD``, ``USERNAME``, ``SOCKET_TIMEOUT``,
  ``SOCKET_CONNECT_TIMEOUT``) and ``CONNECTION_POOL_KWARGS``, on the pool chosen as
  above from ``CONNECTION_POOL_CLASS``; with ``SentinelConnectionFactory``, a
  ``redis.asyncio.sentinel.Sentinel`` on ``SENTINELS`` (``SENTINEL_KWARGS``) and its
  ``SentinelConnectionPool`` for the service the URL names;
* :class:`hardened_sessions.redis_cluster.RedisClusterCache`:
  ``redis.asyncio.cluster.RedisCluster`` on the seed nodes of ``LOCATION`` with
  ``OPTIONS``.

A ``parser_class`` (``PARSER_CLASS``) is a sync parser: the asyncio pool uses
redis.asyncio's default one (hiredis when installed), which only changes how replies are
parsed. Configurations the asyncio client can't mirror have no builder (:func:`connector`
answers ``None``): a pool class or connection class other than redis-py's own, a
django-redis connection factory of the project's own, a ``retry`` object in the options
(a sync policy; ``retry_on_timeout`` carries over), or options the asyncio connection
refuses (:func:`accepted`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from django.conf import settings

from .redis_clients import django_pool_settings

__all__ = ["Connect", "accepted", "connector"]

# A client of one event loop: builds the client, returns it with the sentinels' own
# clients (closed with it).
Connect = Callable[[], tuple[Any, list[Any]]]


def _async_pool_class(pool_class: Any) -> Any:
    """redis.asyncio's twin of one of redis-py's own sync pool classes, else ``None``."""
    import redis
    import redis.asyncio

    twins = {
        redis.ConnectionPool: redis.asyncio.ConnectionPool,
        redis.BlockingConnectionPool: redis.asyncio.BlockingConnectionPool,
    }
    return twins.get(pool_class)


def _async_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """Connection options for redis.asyncio; ``None`` when one has no asyncio twin."""
    import redis
    import redis.asyncio

    options = dict(options)
    options.pop("parser_class", None)  # a sync parser: redis.asyncio picks its own
    if options.get("retry") is not None:
        return None  # a sync retry policy: nothing public says what it would do
    connection_class = options.get("connection_class")
    if connection_class is not None:
        twins = {
            redis.Connection: redis.asyncio.Connection,
            redis.SSLConnection: redis.asyncio.SSLConnection,
            redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
        }
        if connection_class not in twins:
            return None
        options["connection_class"] = twins[connection_class]
    return options


#: How long a command waits for a free connection of the asyncio pool (redis-py's
#: ``BlockingConnectionPool`` default) before it fails closed (503).
POOL_TIMEOUT = 20
#: From this redis-py on, redis.asyncio's ``BlockingConnectionPool`` connects outside its
#: lock (checked in the sources of 5.2.1, 6.x, 7.0 and 8.1). Before, a failed connect
#: released the connection under that same lock and the task hung until the pool's
#: timeout, a slot lost each time: there the plain pool stays (an exhausted one
#: answers 503 at once).
BLOCKING_POOL_FROM = (5, 2, 1)
#: From this redis-py on a plain pool holds at most 100 connections unless told
#: otherwise (before: 2**31); the blocking pool takes the same default.
FINITE_POOL_FROM = (8, 0, 0)


def _plain_redis(pool_class: Any, url: str, options: dict[str, Any]) -> Connect | None:
    import redis.asyncio

    cls = _async_pool_class(pool_class)
    kwargs = _async_options(options)
    if cls is None or kwargs is None:
        return None
    from .redis_async import redis_version

    version = redis_version()
    if cls is redis.asyncio.ConnectionPool and version >= BLOCKING_POOL_FROM:
        # A plain pool that is exhausted fails every further command at once: under
        # ASGI, with more requests in flight than connections, a burst of 503s. On the
        # event loop a command can wait for a free connection holding no thread, so
        # the asyncio pool blocks, bounded (docs/engines.rst, "Asyncio store for Redis").
        cls = redis.asyncio.BlockingConnectionPool
        kwargs.setdefault("max_connections", 100 if version >= FINITE_POOL_FROM else 2**31)
        kwargs.setdefault("timeout", POOL_TIMEOUT)

    def connect() -> tuple[Any, list[Any]]:
        return redis.asyncio.Redis(connection_pool=cls.from_url(url, **kwargs)), []

    return connect


def _for_django_redis(cache: Any, alias: str) -> Connect | None:
    config: dict[str, Any] = settings.CACHES[alias]
    options: dict[str, Any] = dict(config.get("OPTIONS") or {})
    location = config.get("LOCATION", "")
    servers = location.split(",") if isinstance(location, str) else list(location)
    factory = cache.client.connection_factory  # django-redis's public factory object
    # django-redis's own reading of the connection OPTIONS.
    params: dict[str, Any] = dict(factory.make_connection_params(servers[0]))
    url = params.pop("url")
    params.update(factory.pool_cls_kwargs)
    # django-redis's own factories only: a project's factory may build anything.
    kind = f"{type(factory).__module__}.{type(factory).__qualname__}"
    if kind == "django_redis.pool.ConnectionFactory":
        return _plain_redis(factory.pool_cls, url, params)
    if kind != "django_redis.pool.SentinelConnectionFactory":
        return None
    import redis.sentinel
    from redis.asyncio import Redis
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    if factory.pool_cls is not redis.sentinel.SentinelConnectionPool:
        return None
    kwargs = _async_options(params)
    if kwargs is None:
        return None
    # The primary's pool, as SentinelClient's first server (``is_master=1``) asks.
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query.pop("is_master", None)
    service_url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    sentinels = options.get("SENTINELS")
    sentinel_kwargs = options.get("SENTINEL_KWARGS")

    def connect() -> tuple[Any, list[Any]]:
        # redis-py leaves Sentinel.__init__ unannotated.
        manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
        pool = SentinelConnectionPool.from_url(
            service_url,
            service_name=parts.hostname,
            sentinel_manager=manager,
            is_master=True,
            **kwargs,
        )
        return Redis(connection_pool=pool), list(manager.sentinels)

    return connect


def _for_cluster(alias: str) -> Connect | None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    config: dict[str, Any] = settings.CACHES[alias]
    location = config.get("LOCATION", "")
    if isinstance(location, str):
        location = [s for s in location.replace(";", ",").split(",") if s]
    options = dict(config.get("OPTIONS") or {})
    for name in ("pool_class", "serializer"):  # as RedisClusterCache reads them
        options.pop(name, None)
    kwargs = _async_options(options)
    if kwargs is None:
        return None
    nodes = []
    for url in location:
        parts = urlsplit(url if "://" in url else f"redis://{url}")
        nodes.append((parts.hostname or "127.0.0.1", parts.port or 6379))

    def connect() -> tuple[Any, list[Any]]:
        startup = [ClusterNode(host, port) for host, port in nodes]
        return RedisCluster(startup_nodes=startup, **kwargs), []

    return connect


def connector(cache: Any, alias: str) -> tuple[Connect | None, bool]:
    """How to build a loop's client for cache ``alias`` (``None``: no asyncio twin), and
    whether it is the lean path (one pool, not Redis Cluster)."""
    from ..redis_cluster import RedisClusterCache

    if isinstance(cache, RedisClusterCache):
        return _for_cluster(alias), False
    if type(cache).__module__.startswith("django_redis"):
        return _for_django_redis(cache, alias), True
    url, pool_class, _parser, options = django_pool_settings(alias)
    return _plain_redis(pool_class, url, options), True


def accepted(connect: Connect) -> bool:
    """Whether the asyncio classes accept the options (building opens no connection)."""
    try:
        client, _others = connect()
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.make_connection()
    except (TypeError, ValueError):
        return False
    return True
