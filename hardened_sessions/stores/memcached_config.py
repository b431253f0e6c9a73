"""The memcached store's servers and clients, built from a ``PyMemcacheCache`` entry.

The store is built from the ``LOCATION`` and ``OPTIONS`` of the ``CACHES`` entry the
session cache comes from, read as ``PyMemcacheCache`` reads them, and builds one
pymemcache client per server from them: a ``Client``, or a ``PooledClient`` with
``"use_pooling": True`` (``max_pool_size`` and the other pool options go to it). Each
client is built without the cache's serde (pickle), with ``TCP_NODELAY`` on (pymemcache
defaults to off, which stalls a get after a set by ~40 ms on loopback) and with
``ignore_exc`` off, so a failing server is an error, never a silent miss.

:func:`unsupported_options` says what the store cannot honour (system check
``hardened_sessions.E105`` reports it; :func:`client_config` refuses it): an unknown option, a failure option
that is not a number of at least 0, and a ``hasher``, since the store places each
session by its own rendezvous hashing (:mod:`hardened_sessions.stores.memcached_placement`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pymemcache import Client, PooledClient

from . import KEY_NAMESPACE
from .memcached_health import FAILURE_OPTIONS

__all__ = ["ClientConfig", "cache_options", "client_config", "parse_server", "unsupported_options"]

# HashClient's keyword arguments (pymemcache 4.0), which PyMemcacheCache passes on from
# OPTIONS, and what this store does with each.
_CLIENT_OPTIONS = frozenset(
    {
        "connect_timeout",
        "timeout",
        "socket_module",
        "socket_keepalive",
        "key_prefix",
        "allow_unicode_keys",
        "encoding",
        "tls_context",
    }
)
_POOLED_OPTIONS = frozenset({"max_pool_size", "pool_idle_timeout", "lock_generator"})
# Replaced by this store's own: bytes only, errors raised, replies awaited, TCP_NODELAY.
_OVERRIDDEN_OPTIONS = frozenset(
    {"serde", "serializer", "deserializer", "ignore_exc", "default_noreply", "no_delay"}
)
_KNOWN_OPTIONS = (
    _CLIENT_OPTIONS
    | _POOLED_OPTIONS
    | FAILURE_OPTIONS.keys()
    | _OVERRIDDEN_OPTIONS
    | {"use_pooling", "hasher"}
)


def parse_server(spec: Any) -> tuple[str, int] | str:
    """A ``LOCATION`` entry as pymemcache's ``Client`` takes it: ``(host, port)`` or a
    UNIX socket path. The forms Django documents (``host:port``, ``[v6 address]:port``,
    ``unix:/path``), read as pymemcache 4's ``HashClient`` reads them."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        host, port = spec
    elif isinstance(spec, str) and spec.startswith("unix:"):
        return spec[5:]
    elif isinstance(spec, str) and spec.startswith("/"):
        return spec
    elif isinstance(spec, str):
        host, port = (spec, 11211) if ":" not in spec or spec.endswith("]") else spec.rsplit(":", 1)
    else:
        raise ImproperlyConfigured(f"Unsupported memcached server in LOCATION: {spec!r}.")
    try:
        return str(host).strip("[]"), int(port)
    except ValueError:
        raise ImproperlyConfigured(f"Unsupported memcached server in LOCATION: {spec!r}.") from None


def unsupported_options(options: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ``PyMemcacheCache``'s ``OPTIONS`` for this store (empty: fine)."""
    problems = []
    if "hasher" in options:
        problems.append(
            "OPTIONS['hasher'] is not supported: hardened_sessions places each session on "
            "one server by its own rendezvous hashing, so that a logout deletes where "
            "every client looks."
        )
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        problems.append(f"Unknown pymemcache OPTIONS: {', '.join(map(repr, unknown))}.")
    for name in FAILURE_OPTIONS:
        value = options.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
            problems.append(f"OPTIONS[{name!r}] must be a number of at least 0.")
    return problems


def cache_options(cache: Any, alias: str | None) -> dict[str, Any]:
    """``OPTIONS`` of the ``CACHES`` entry that ``cache`` was built from."""
    if alias is None:
        from django.core.cache import InvalidCacheBackendError, caches

        servers = list(cache.client_servers)
        for name, params in settings.CACHES.items():
            location = params.get("LOCATION")
            candidates = (
                location.replace(";", ",").split(",") if isinstance(location, str) else location
            )
            if list(candidates or ()) != servers:
                continue
            try:
                # The handler gives this thread the instance it gave the caller.
                found = caches[name] is cache
            except InvalidCacheBackendError:
                continue
            if found:
                alias = name
                break
        else:
            raise ImproperlyConfigured("The memcached session cache is not one of CACHES.")
    options: object = settings.CACHES[alias].get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"CACHES[{alias!r}]['OPTIONS'] is not a dict.")
    return dict(options)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the store is built from: its servers (normalised, without repeats, in
    ``LOCATION`` order), how to build a client of one, whether those clients are pooled
    (one per server shared by every thread), the ``OPTIONS`` (the failure options among
    them) and the pool's size limit, if any."""

    servers: list[Any]
    make_client: Callable[[Any], Any]
    pooled: bool
    options: dict[str, Any]
    max_pool_size: int | None


def client_config(cache: Any, alias: str | None = None) -> ClientConfig:
    """The :class:`ClientConfig` of ``cache`` (the ``CACHES`` entry ``alias``, or the one
    it was built from); ``ImproperlyConfigured`` for what the store cannot honour."""
    options = cache_options(cache, alias)
    problems = unsupported_options(options)
    if problems:
        raise ImproperlyConfigured(" ".join(problems))
    pooled = bool(options.get("use_pooling"))
    kwargs = {k: v for k, v in options.items() if k in _CLIENT_OPTIONS}
    kwargs.setdefault("allow_unicode_keys", True)  # as PyMemcacheCache
    if pooled:
        kwargs.update({k: v for k, v in options.items() if k in _POOLED_OPTIONS})
    # See the module docstring: no serde, errors raised, replies awaited, TCP_NODELAY.
    kwargs.update(ignore_exc=False, default_noreply=False, no_delay=True)
    factory = PooledClient if pooled else Client

    def make_client(server: Any) -> Any:
        return factory(server, **kwargs)

    servers: list[Any] = []
    for spec in cache.client_servers:
        server = parse_server(spec)
        if server not in servers:
            servers.append(server)
    # Store keys are always 64 hex digits: Django's per-character key check runs once,
    # here (pymemcache still refuses a malformed key on every command).
    cache.validate_key(cache.make_key(KEY_NAMESPACE + "0" * 64))
    limit = options.get("max_pool_size") if pooled else None
    return ClientConfig(
        servers=servers,
        make_client=make_client,
        pooled=pooled,
        options=options,
        max_pool_size=limit if isinstance(limit, int) and limit > 0 else None,
    )
