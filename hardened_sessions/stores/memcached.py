"""Byte store over memcached: one pymemcache client per server, placement and
failure handling of the package's own.

Built from a ``PyMemcacheCache`` configuration (its ``LOCATION`` and ``OPTIONS``), but
without its serde (pickle), with ``TCP_NODELAY`` on and with ``ignore_exc`` off, so a
failing server is an error, never a silent miss (``memcached_config.py``).

Compare-and-set uses memcached's own ``gets``/``cas``: the :class:`~.token.Token` of
a record carries its cas unique. Right after this store wrote a record the unique is
unknown (the token has only the version), so the next ``cas`` fetches the unique
first, checking that the record still starts with the head the engine expects.

Placement: each session has one server, its *home* (rendezvous hashing, in
``memcached_placement.py``). A record is only ever written to, read from and deleted
on its home, whatever any client thinks of the other servers, so every thread of every
process looks for a session in the same place and a delete that reached the home ended
the session for all of them. A ``hasher`` in ``OPTIONS`` is refused
(``ImproperlyConfigured``): a delete must know where every client looks.

Failures, with pymemcache's meaning of ``retry_attempts``, ``retry_timeout`` and
``dead_timeout`` (defaults 2, 1 and 60 s), in one view per process shared by its
threads (``memcached_health.py``):

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
  ``_send`` for why each verb is safe to repeat).

A server that comes back still holds what it held (after a partition): a session that
counted as missing meanwhile loads again, still checked against its own deadlines
and signature, so the exposure is bounded by the records' own deadlines (see
docs/engines.rst, "Cache configurations", memcached).

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

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from ..capabilities import Capability
from ..exceptions import SessionStoreUnavailable
from . import KEY_NAMESPACE
from .memcached_config import client_config
from .memcached_config import unsupported_options as unsupported_options
from .memcached_health import DEAD, FAILING, PROBE, Health
from .memcached_placement import Placement, node_name
from .memcached_placement import RendezvousNodes as RendezvousNodes
from .token import Handle, Token

__all__ = ["MemcachedByteStore", "RendezvousNodes", "unsupported_options"]

# memcached reads an expiry above 30 days as a Unix timestamp.
_RELATIVE_TTL_LIMIT = 30 * 24 * 3600

# The server did not answer: it counts as failing.
_UNREACHABLE = (OSError, MemcacheUnexpectedCloseError)
# A connection that broke while idle shows as one of these on its next use.
_STALE = (MemcacheUnexpectedCloseError, ConnectionResetError, BrokenPipeError)
# How long a command waits for one of its server's ``max_pool_size`` pooled clients to
# come free (as long as redis-py's BlockingConnectionPool waits by default) before it
# fails closed.
POOL_WAIT = 20.0


def _expire(ttl: int) -> int:
    ttl = max(1, int(ttl))
    return int(time.time()) + ttl if ttl > _RELATIVE_TTL_LIMIT else ttl


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
    #: No per-user index: it could not be updated atomically with the sessions.
    capabilities = Capability(0)

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
        names = [node_name(server) for server in self._servers]
        self._names = names
        self._placement = Placement(names)
        self._health = Health(names, options or {})
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

    @property
    def max_pool_size(self) -> int | None:
        """The per-server limit of pooled clients (``max_pool_size`` with
        ``use_pooling``), or ``None`` when there is none."""
        return self._max_pool_size

    def server_names(self) -> list[str]:
        """The servers in ``LOCATION`` order, named as pymemcache's ``HashClient`` names
        them (``host:port`` or a socket path)."""
        return list(self._names)

    @classmethod
    def capabilities_for(cls, cache: Any) -> Capability:
        return cls.capabilities

    @classmethod
    def from_cache(cls, cache: Any, alias: str) -> MemcachedByteStore:
        """The store of a ``PyMemcacheCache`` (see ``memcached_config.py``)."""
        config = client_config(cache, alias)
        return cls(
            config.servers,
            config.make_client,
            cache.make_key,
            shared=config.pooled,
            options=config.options,
            max_pool_size=config.max_pool_size,
        )

    def _key(self, key: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + key))

    def home_of(self, key: str) -> int:
        """Index (in ``LOCATION`` order) of the server that holds session store key
        ``key`` (no I/O)."""
        return self._placement.home(self._key(key))

    def home(self, k: str) -> int:
        """Index (in ``LOCATION`` order) of the server that holds cache key ``k``."""
        return self._placement.home(k)

    def _unavailable(self, i: int, verdict: int) -> SessionStoreUnavailable:
        state = "declared dead" if verdict == DEAD else "failing"
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
        if verdict in (FAILING, DEAD):
            # It may still hold the record, and other clients may still reach it.
            raise self._unavailable(i, verdict)
        return verdict

    def get(self, key: str) -> tuple[bytes, Handle] | None:
        k = self._key(key)
        i = self.home(k)
        verdict = self._health.verdict(i)
        if verdict == DEAD:
            return None  # counts as missing once declared dead (docs/engines.rst, memcached)
        if verdict == FAILING:
            raise self._unavailable(i, verdict)
        value, unique = self._run(i, verdict == PROBE, "read a session", "gets", k)
        if value is None:
            return None
        return value, unique

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Token | None:
        k = self._key(key)
        i = self.home(k)
        verdict = self._health.verdict(i)
        if verdict in (FAILING, DEAD):
            if self._health.any_up(but=i):
                return None  # not stored, without I/O: the engine draws another key
            raise self._unavailable(i, verdict)
        stored = self._run(
            i, verdict == PROBE, "create a session", "add",
            k, bytes(value), _expire(ttl), noreply=False,
        )  # fmt: skip
        return Token(version) if stored else None

    def cas(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        token: Token,
        version: int,
        user: str | None = None,
        *,
        head: bytes,
    ) -> Token | None:
        k = self._key(key)
        i = self.home(k)
        probe = self._writable(i) == PROBE
        unique = token.cas
        if unique is None:
            # Written by this store: fetch the unique, and check it is still that record.
            current, unique = self._run(i, probe, "read a session", "gets", k)
            if current is None or not bytes(current).startswith(head):
                return None
        if unique is None:
            return None
        stored = self._run(
            i, probe, "save a session", "cas", k, bytes(value), unique, _expire(ttl), noreply=False
        )
        return Token(version) if stored else None

    def delete(self, key: str) -> bool:
        k = self._key(key)
        i = self.home(k)
        probe = self._writable(i) == PROBE
        return bool(self._run(i, probe, "delete a session", "delete", k, noreply=False))
