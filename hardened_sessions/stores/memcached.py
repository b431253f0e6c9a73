"""Byte store over memcached: one pymemcache client per server, placement and
failure handling of the package's own.

Built from a ``PyMemcacheCache`` configuration (its ``LOCATION`` and ``OPTIONS``), but
without its serde (pickle), with ``TCP_NODELAY`` on (pymemcache defaults to off,
which stalls a get after a set by ~40 ms on loopback) and with ``ignore_exc`` off,
so a failing server is an error, never a silent miss.

Compare-and-set uses memcached's own ``gets``/``cas``: the token of a record is
its cas unique. Right after this store wrote a record the unique is unknown, so
the token says which version was written and the next ``cas`` fetches the
unique first, checking the version.

Placement: each session has one server, its *home*: the first of the configured
servers in the rendezvous (highest-random-weight) order of its key, scored with
BLAKE2b (in C, where pymemcache's murmur3 is pure Python and costs more than the rest
of a load); a single server is picked without hashing. A record is only ever written
to, read from and deleted on its home, whatever any client thinks of the other
servers, so every thread of every process looks for a session in the same place and
a delete that reached the home ended the session for all of them. pymemcache's
``HashClient`` instead moves a dead server's keys to the next server in each client's
own view: a thread whose connection broke for a moment deleted on the wrong server
and reported a logout while the session still loaded everywhere else. A ``hasher`` in
``OPTIONS`` is therefore refused (``ImproperlyConfigured``): a delete must know where
every client looks.

Failures, with pymemcache's meaning of ``retry_attempts``, ``retry_timeout`` and
``dead_timeout`` (defaults 2, 1 and 60 s), in one view per process shared by its
threads:

* a server whose connection fails is *failing*: its keys answer
  :class:`SessionStoreUnavailable` (503) without I/O; after ``retry_timeout`` one
  request tries it again; success brings it back, and ``retry_attempts`` failed tries
  make it *dead*;
* while dead (``dead_timeout``, then one request tries it again), reads of its keys
  count as missing (those users log in again);
* while failing or dead, a new session is given another key (``add`` answers ``None``
  without I/O, so the engine draws a key that lands on a live server), and a save,
  delete, rotation or revoke of a session homed there fails closed: the server may
  still hold the record, and other processes may still reach it, so nothing else can
  report it gone;
* a command whose connection broke since its last use (an idle connection cut) is
  sent once more on a new connection before the server counts as failing (see
  ``_run`` for why each verb is safe to repeat).

A server that comes back still holds what it held (after a partition): a session that
counted as missing meanwhile loads again, still checked against its own deadlines
and signature, so the exposure is bounded by the records' own deadlines (see the
README).

Threads: pymemcache's plain client is not thread-safe (two threads talking over one
socket read each other's replies), and the store is shared by every thread of the
process, so each thread gets clients of its own, as Django's cache handler gives
each thread its own cache. With ``OPTIONS = {"use_pooling": True}`` one pymemcache
``PooledClient`` per server serves every thread; with ``max_pool_size`` too, a thread
(or gevent greenlet) waits up to ``POOL_WAIT`` seconds for a free client of the server
rather than fail at once.

Processes: a forked child (a pre-fork server's worker) drops the clients it inherited
(``os.register_at_fork``) and opens connections of its own, so parent and child never
share a socket.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pymemcache import Client, PooledClient
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from ..exceptions import SessionStoreUnavailable
from ..record import peek_version
from . import KEY_NAMESPACE

__all__ = ["MemcachedByteStore", "RendezvousNodes", "unsupported_options"]

logger = logging.getLogger("hardened_sessions")

# memcached reads an expiry above 30 days as a Unix timestamp.
_RELATIVE_TTL_LIMIT = 30 * 24 * 3600

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
_FAILURE_OPTIONS = {"retry_attempts": 2, "retry_timeout": 1, "dead_timeout": 60}
# Replaced by this store's own: bytes only, errors raised, replies awaited, TCP_NODELAY.
_OVERRIDDEN_OPTIONS = frozenset(
    {"serde", "serializer", "deserializer", "ignore_exc", "default_noreply", "no_delay"}
)
_KNOWN_OPTIONS = (
    _CLIENT_OPTIONS
    | _POOLED_OPTIONS
    | _FAILURE_OPTIONS.keys()
    | _OVERRIDDEN_OPTIONS
    | {"use_pooling", "hasher"}
)

# The server did not answer: it counts as failing.
_UNREACHABLE = (OSError, MemcacheUnexpectedCloseError)
# A connection that broke while idle shows as one of these on its next use.
_STALE = (MemcacheUnexpectedCloseError, ConnectionResetError, BrokenPipeError)
# How long a command waits for one of its server's ``max_pool_size`` pooled clients to
# come free (as long as redis-py's BlockingConnectionPool waits by default) before it
# fails closed.
POOL_WAIT = 20.0


@dataclass(frozen=True, slots=True)
class _Written:
    """Token of a record this store just wrote: its version; the cas unique is unknown."""

    version: int


def _expire(ttl: int) -> int:
    ttl = max(1, int(ttl))
    return int(time.time()) + ttl if ttl > _RELATIVE_TTL_LIMIT else ttl


def _score(node: str, key: str) -> bytes:
    return hashlib.blake2b(f"{node}-{key}".encode(), digest_size=8).digest()


class RendezvousNodes:
    """Highest-random-weight placement scored with BLAKE2b, as the store places keys."""

    def __init__(self) -> None:
        self.nodes: list[str] = []

    def add_node(self, node: str) -> None:
        if node not in self.nodes:
            self.nodes.append(node)

    def remove_node(self, node: str) -> None:
        self.nodes.remove(node)  # ValueError when absent, as pymemcache's own hasher

    def get_node(self, key: str) -> str | None:
        nodes = self.nodes
        if len(nodes) < 2:
            return nodes[0] if nodes else None
        return max(nodes, key=lambda node: (_score(node, key), node))


def _server(spec: Any) -> tuple[str, int] | str:
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


def _node_name(server: Any) -> str:
    # HashClient's name of a server, so that placement matches earlier releases'.
    if isinstance(server, tuple) and len(server) == 2:
        return f"{server[0]}:{server[1]}"
    return str(server)


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
    for name in _FAILURE_OPTIONS:
        value = options.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
            problems.append(f"OPTIONS[{name!r}] must be a number of at least 0.")
    return problems


def _cache_options(cache: Any, alias: str | None) -> dict[str, Any]:
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


class _Down:
    """A server this process saw fail: since when, how many retries failed, dead or not."""

    __slots__ = ("attempts", "dead", "since")

    def __init__(self, since: float, attempts: int, dead: bool) -> None:
        self.since = since
        self.attempts = attempts
        self.dead = dead


_LIVE, _PROBE, _FAILING, _DEAD = range(4)


class _Health:
    """Which servers are failing or dead, for every thread of the process."""

    def __init__(self, names: list[str], options: Mapping[str, Any]) -> None:
        self.names = names
        self.retry_attempts = options.get("retry_attempts", _FAILURE_OPTIONS["retry_attempts"])
        self.retry_timeout = options.get("retry_timeout", _FAILURE_OPTIONS["retry_timeout"])
        self.dead_timeout = options.get("dead_timeout", _FAILURE_OPTIONS["dead_timeout"])
        self.down: list[_Down | None] = [None] * len(names)
        self._lock = threading.Lock()

    def verdict(self, i: int) -> int:
        """``_LIVE``, ``_FAILING``, ``_DEAD``, or ``_PROBE``: the caller tries the server
        again, and its outcome counts (the others keep waiting another period meanwhile)."""
        if self.down[i] is None:
            return _LIVE
        with self._lock:
            state = self.down[i]
            if state is None:
                return _LIVE
            now = time.time()
            elapsed = now - state.since
            # A clock that went backwards makes the server due for a retry, not stuck.
            if 0 <= elapsed <= (self.dead_timeout if state.dead else self.retry_timeout):
                return _DEAD if state.dead else _FAILING
            state.since = now
            return _PROBE

    def failed(self, i: int, probe: bool) -> None:
        with self._lock:
            state = self.down[i]
            now = time.time()
            if state is None:
                dead = self.retry_attempts <= 0
                self.down[i] = _Down(now, 0, dead)
            elif probe:
                state.since = now
                if not state.dead:
                    state.attempts += 1
                    dead = state.dead = state.attempts >= self.retry_attempts
                else:
                    return
            else:
                return  # already failing: one failure seen by several threads counts once
        if dead:
            logger.warning("memcached server %s is declared dead.", self.names[i])
        else:
            logger.warning("memcached server %s is failing.", self.names[i])

    def answered(self, i: int) -> None:
        if self.down[i] is None:
            return
        with self._lock:
            was, self.down[i] = self.down[i], None
        if was is not None:
            logger.info("memcached server %s answers again.", self.names[i])

    def renew_lock(self) -> None:
        # In a forked child: another thread of the parent may have held the lock.
        self._lock = threading.Lock()

    def any_up(self, but: int) -> bool:
        return any(state is None for n, state in enumerate(self.down) if n != but)


# Every store of the process, for the fork handler below.
_stores: weakref.WeakSet[MemcachedByteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._forget_clients()


# A forked worker (gunicorn, uWSGI, multiprocessing) must not talk over its parent's
# sockets: both would read each other's replies. Registered once per process; the
# WeakSet keeps it from holding stores alive.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class MemcachedByteStore:
    supports_user_index = False

    def __init__(
        self,
        servers: Sequence[Any],
        make_client: Callable[[Any], Any],
        make_key: Any,
        *,
        shared: bool,
        options: Mapping[str, Any] | None = None,
        max_pool_size: int | None = None,
    ) -> None:
        """``servers``: normalised pymemcache server specs; ``make_client(server)`` builds a
        client of one server; ``shared``: one client per server may serve every thread
        (pooled clients), else each thread builds its own; ``options``: the failure
        options (``retry_attempts``, ``retry_timeout``, ``dead_timeout``)."""
        if not servers:
            raise ImproperlyConfigured("The memcached session cache has no server.")
        self._servers = list(servers)
        names = [_node_name(server) for server in self._servers]
        self._names = names
        self._prefixes = [f"{name}-".encode() for name in names]
        self._single = len(names) == 1
        self._health = _Health(names, options or {})
        self._make_client = make_client
        self._make_key = make_key
        self._pooled = shared
        self._max_pool_size = max_pool_size
        self._shared = self._new_clients() if shared else None
        self._local = threading.local()
        # pymemcache's pool raises RuntimeError instead of waiting when max_pool_size
        # clients are in use, so more threads (or gevent greenlets) than that would
        # fail: a semaphore per server makes the others wait for a free client.
        self._slots = self._new_slots()
        _stores.add(self)

    def _new_slots(self) -> list[threading.BoundedSemaphore] | None:
        size = self._max_pool_size
        if not (self._pooled and size):
            return None
        return [threading.BoundedSemaphore(size) for _ in self._names]

    def _new_clients(self) -> tuple[Any, ...]:
        return tuple(self._make_client(server) for server in self._servers)

    def _forget_clients(self) -> None:
        """In a forked child: new clients (new sockets, new pool locks), new slots and a
        new health lock from here on (the parent's other threads may have held them).
        The parent's clients are dropped, not closed: the child's copies of their
        sockets close with them, and the parent's connections stay as they were."""
        self._health.renew_lock()
        self._local = threading.local()
        self._shared = self._new_clients() if self._pooled else None
        self._slots = self._new_slots()

    def clients(self) -> tuple[Any, ...]:
        """The pymemcache clients this thread uses, one per server in
        :meth:`server_names` order (``PooledClient`` instances shared by every thread
        with ``use_pooling``), for diagnostics: commands sent through them bypass the
        store's placement and failure handling."""
        shared = self._shared
        if shared is not None:
            return shared
        try:
            clients: tuple[Any, ...] = self._local.clients
        except AttributeError:
            clients = self._local.clients = self._new_clients()
        return clients

    def server_names(self) -> list[str]:
        """The servers in ``LOCATION`` order, named as pymemcache's ``HashClient`` names
        them (``host:port`` or a socket path)."""
        return list(self._names)

    @classmethod
    def from_cache(cls, cache: Any, alias: str | None = None) -> MemcachedByteStore:
        options = _cache_options(cache, alias)
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
            server = _server(spec)
            if server not in servers:
                servers.append(server)
        # Store keys are always 64 hex digits: Django's per-character key check runs once,
        # here (pymemcache still refuses a malformed key on every command).
        cache.validate_key(cache.make_key(KEY_NAMESPACE + "0" * 64))
        limit = options.get("max_pool_size") if pooled else None
        return cls(
            servers,
            make_client,
            cache.make_key,
            shared=pooled,
            options=options,
            max_pool_size=limit if isinstance(limit, int) and limit > 0 else None,
        )

    def _key(self, key: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + key))

    def home(self, k: str) -> int:
        """Index (in ``LOCATION`` order) of the server that holds cache key ``k``."""
        if self._single:
            return 0
        kb = k.encode()
        prefixes = self._prefixes
        names = self._names
        return max(
            range(len(prefixes)),
            key=lambda i: (hashlib.blake2b(prefixes[i] + kb, digest_size=8).digest(), names[i]),
        )

    def _unavailable(self, i: int, verdict: int) -> SessionStoreUnavailable:
        state = "declared dead" if verdict == _DEAD else "failing"
        return SessionStoreUnavailable(
            f"The memcached server holding this session ({self._names[i]}) is {state}."
        )

    def _run(self, i: int, probe: bool, what: str, command: str, *args: Any, **kw: Any) -> Any:
        """``command`` on server ``i``, keeping the process's view of it up to date."""
        slots = self._slots
        if slots is None:
            return self._send(i, probe, what, command, *args, **kw)
        if not slots[i].acquire(timeout=POOL_WAIT):
            raise SessionStoreUnavailable(
                f"memcached server {self._names[i]} could not {what}: no pooled client "
                f"came free within {POOL_WAIT:g} s (max_pool_size)."
            )
        try:
            return self._send(i, probe, what, command, *args, **kw)
        finally:
            slots[i].release()

    def _send(self, i: int, probe: bool, what: str, command: str, *args: Any, **kw: Any) -> Any:
        client = self.clients()[i]
        try:
            try:
                answer = getattr(client, command)(*args, **kw)
            except _STALE:
                if probe:
                    raise
                # A connection that broke while idle (pymemcache reconnects). Repeating
                # is safe even if the first attempt landed: a read is a read, a delete
                # then answers "not found" (a rotation starts empty), an add "not
                # stored" (the engine draws another key; the first one was never
                # issued), a cas "changed" (the engine re-reads and merges).
                answer = getattr(client, command)(*args, **kw)
        except _UNREACHABLE as exc:
            self._health.failed(i, probe)
            raise SessionStoreUnavailable(
                f"memcached server {self._names[i]} could not {what} ({exc.__class__.__name__})."
            ) from exc
        except MemcacheError as exc:
            self._health.answered(i)
            raise SessionStoreUnavailable(
                f"memcached server {self._names[i]} could not {what} ({exc.__class__.__name__})."
            ) from exc
        except RuntimeError as exc:
            if not self._pooled:
                raise
            # pymemcache's pool raises RuntimeError("Too many objects ...") when all its
            # max_pool_size clients are in use (pymemcache 4.0); the slots above keep
            # this store's own threads from getting there. The server is fine.
            raise SessionStoreUnavailable(
                f"memcached server {self._names[i]} could not {what}: every pooled "
                "client is in use (max_pool_size)."
            ) from exc
        self._health.answered(i)
        return answer

    def _writable(self, i: int) -> int:
        """The verdict on server ``i`` for a write to an existing record there."""
        verdict = self._health.verdict(i)
        if verdict in (_FAILING, _DEAD):
            # It may still hold the record, and other clients may still reach it.
            raise self._unavailable(i, verdict)
        return verdict

    def get(self, key: str) -> tuple[bytes, Any] | None:
        k = self._key(key)
        i = self.home(k)
        verdict = self._health.verdict(i)
        if verdict == _DEAD:
            return None  # docs/design.rst: counts as missing once the server is declared dead
        if verdict == _FAILING:
            raise self._unavailable(i, verdict)
        value, unique = self._run(i, verdict == _PROBE, "read a session", "gets", k)
        if value is None:
            return None
        return value, unique

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Any | None:
        k = self._key(key)
        i = self.home(k)
        verdict = self._health.verdict(i)
        if verdict in (_FAILING, _DEAD):
            if self._health.any_up(but=i):
                return None  # not stored, without I/O: the engine draws another key
            raise self._unavailable(i, verdict)
        stored = self._run(
            i, verdict == _PROBE, "create a session", "add",
            k, bytes(value), _expire(ttl), noreply=False,
        )  # fmt: skip
        return _Written(version) if stored else None

    def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Any,
        version: int,
        user: str | None = None,
    ) -> Any | None:
        k = self._key(key)
        i = self.home(k)
        probe = self._writable(i) == _PROBE
        if isinstance(token, _Written):
            current, unique = self._run(i, probe, "read a session", "gets", k)
            if current is None or peek_version(current) != token.version:
                return None
            token = unique
        if token is None:
            return None
        stored = self._run(
            i, probe, "save a session", "cas", k, bytes(value), token, _expire(ttl), noreply=False
        )
        return _Written(version) if stored else None

    def delete(self, key: str) -> bool:
        k = self._key(key)
        i = self.home(k)
        probe = self._writable(i) == _PROBE
        return bool(self._run(i, probe, "delete a session", "delete", k, noreply=False))
