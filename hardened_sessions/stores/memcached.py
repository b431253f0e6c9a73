"""Byte store over memcached, with pymemcache's ``HashClient``.

Built from a ``PyMemcacheCache`` configuration (its server list and options),
but without its serde (pickle), with ``TCP_NODELAY`` on (pymemcache defaults to
off, which stalls a get after a set by ~40 ms on loopback) and with
``ignore_exc`` off, so a failing server is an error, never a silent miss.

Compare-and-set uses memcached's own ``gets``/``cas``: the token of a record is
its cas unique. Right after this store wrote a record the unique is unknown, so
the token says which version was written and the next ``cas`` fetches the
unique first, checking the version.

Several servers: keys are spread by the client's hash. While a server is
failing but not yet declared dead (``retry_attempts`` within
``retry_timeout``), its keys answer :class:`SessionStoreUnavailable` (503);
once it is dead (for ``dead_timeout``) they hash to the other servers and count
as missing, so those users log in again. A partitioned server that rejoins
brings back what it held: such records are still checked against their own
deadlines and signature on load, so the exposure is bounded by the records'
own deadlines (see the README).

Threads: pymemcache's plain client is not thread-safe (two threads talking over one
socket read each other's replies), and the store is shared by every thread of the
process, so each thread gets a client of its own, as Django's cache handler gives
each thread its own cache. With ``OPTIONS = {"use_pooling": True}`` pymemcache's
pooled clients are thread-safe and one client serves all threads.

Placement: rendezvous hashing like pymemcache's default, but scored with BLAKE2b
(C) instead of pymemcache's pure-Python murmur3, which costs more than the rest of a
session load; a single server is picked without hashing. A ``hasher`` in OPTIONS is
used as given.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError

from ..exceptions import SessionStoreUnavailable
from ..record import peek_version
from . import KEY_NAMESPACE

__all__ = ["MemcachedByteStore", "RendezvousNodes"]

# memcached reads an expiry above 30 days as a Unix timestamp.
_RELATIVE_TTL_LIMIT = 30 * 24 * 3600
_DROPPED_OPTIONS = ("serde", "serializer", "deserializer", "ignore_exc", "default_noreply")


@dataclass(frozen=True, slots=True)
class _Written:
    """Token of a record this store just wrote: its version; the cas unique is unknown."""

    version: int


def _expire(ttl: int) -> int:
    ttl = max(1, int(ttl))
    return int(time.time()) + ttl if ttl > _RELATIVE_TTL_LIMIT else ttl


class RendezvousNodes:
    """pymemcache ``hasher``: highest-random-weight placement scored with BLAKE2b."""

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


def _score(node: str, key: str) -> bytes:
    return hashlib.blake2b(f"{node}-{key}".encode(), digest_size=8).digest()


class MemcachedByteStore:
    supports_user_index = False

    def __init__(
        self, make_client: Callable[[], HashClient], make_key: Any, *, shared: bool
    ) -> None:
        """``make_client`` builds a client; ``shared``: one client may serve every thread
        (pooled clients), else each thread builds its own."""
        self._make_client = make_client
        self._make_key = make_key
        self._shared: HashClient | None = make_client() if shared else None
        self._local = threading.local()

    @property
    def _client(self) -> HashClient:
        client = self._shared
        if client is not None:
            return client
        try:
            return self._local.client
        except AttributeError:
            client = self._local.client = self._make_client()
            return client

    @classmethod
    def from_cache(cls, cache: Any) -> MemcachedByteStore:
        options = {k: v for k, v in cache._options.items() if k not in _DROPPED_OPTIONS}
        options["no_delay"] = True  # whatever OPTIONS say: see the module docstring
        options.setdefault("hasher", RendezvousNodes)
        servers = cache.client_servers

        def make_client() -> HashClient:
            return HashClient(servers, ignore_exc=False, default_noreply=False, **options)

        # Store keys are always 64 hex digits: Django's per-character key check runs once,
        # here (pymemcache still refuses a malformed key on every command).
        cache.validate_key(cache.make_key(KEY_NAMESPACE + "0" * 64))
        return cls(make_client, cache.make_key, shared=bool(options.get("use_pooling")))

    def _key(self, key: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + key))

    def _check_node(self, k: str) -> None:
        # Inside pymemcache's retry window a failing server answers "not found" /
        # "not stored" without any I/O; here that must be an outage, not a missing or
        # deleted session. (Past the window the call goes through, so that pymemcache
        # retries the server and, if it still fails, declares it dead.)
        client = self._client
        failed = client._failed_clients
        if not failed:
            return
        member = client.clients.get(client.hasher.get_node(k))
        state = failed.get(member.server) if member is not None else None
        if (
            state is not None
            and state["attempts"] < client.retry_attempts
            and time.time() - state["failed_time"] <= client.retry_timeout
        ):
            raise SessionStoreUnavailable("The memcached server holding this session is failing.")

    def _run(self, what: str, k: str, command: str, *args: Any, **kwargs: Any) -> Any:
        self._check_node(k)
        try:
            return getattr(self._client, command)(k, *args, **kwargs)
        except (MemcacheError, OSError) as exc:
            raise SessionStoreUnavailable(
                f"memcached could not {what} ({exc.__class__.__name__})."
            ) from exc

    def get(self, key: str) -> tuple[bytes, Any] | None:
        k = self._key(key)
        answer = self._run("read a session", k, "gets")
        if answer is None:  # pymemcache's default when it did not ask any server
            raise SessionStoreUnavailable("memcached gave no answer for a session.")
        value, unique = answer
        if value is None:
            return None
        return value, unique

    def add(
        self, key: str, value: memoryview, ttl: int, version: int, user: str | None = None
    ) -> Any | None:
        k = self._key(key)
        stored = self._run("create a session", k, "add", bytes(value), _expire(ttl), noreply=False)
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
        if isinstance(token, _Written):
            answer = self._run("read a session", k, "gets")
            if answer is None:
                raise SessionStoreUnavailable("memcached gave no answer for a session.")
            current, unique = answer
            if current is None or peek_version(current) != token.version:
                return None
            token = unique
        if token is None:
            return None
        stored = self._run(
            "save a session", k, "cas", bytes(value), token, _expire(ttl), noreply=False
        )
        return _Written(version) if stored else None

    def delete(self, key: str) -> bool:
        k = self._key(key)
        return bool(self._run("delete a session", k, "delete", noreply=False))
