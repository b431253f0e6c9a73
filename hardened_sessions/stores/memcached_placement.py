"""Where the memcached store keeps a session: on one server, its home.

Each session has one server, its *home*: the first of the configured servers in the
rendezvous (highest-random-weight) order of its key, scored with BLAKE2b (in C, where
pymemcache's murmur3 is pure Python and costs more than the rest of a load); a single
server is picked without hashing. A record is only ever written to, read from and
deleted on its home, whatever any client thinks of the other servers, so every thread
of every process looks for a session in the same place and a delete that reached the
home ended the session for all of them. pymemcache's ``HashClient`` instead moves a
dead server's keys to the next server in each client's own view: a thread whose
connection broke for a moment deleted on the wrong server and reported a logout while
the session still loaded everywhere else. A ``hasher`` in ``OPTIONS`` is therefore
refused (:mod:`hardened_sessions.stores.memcached_config`): a delete must know where
every client looks.

Servers are named as ``HashClient`` names them (``host:port`` or a socket path), so
that placement matches earlier releases'. :class:`Placement` is what the store asks;
:class:`RendezvousNodes` is the same order behind pymemcache's hasher interface.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["Placement", "RendezvousNodes", "node_name"]


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


def node_name(server: Any) -> str:
    """HashClient's name of a server, so that placement matches earlier releases'."""
    if isinstance(server, tuple) and len(server) == 2:
        return f"{server[0]}:{server[1]}"
    return str(server)


class Placement:
    """The home of each cache key among the named servers (in ``LOCATION`` order)."""

    __slots__ = ("_names", "_prefixes", "_single")

    def __init__(self, names: Sequence[str]) -> None:
        self._names = list(names)
        self._prefixes = [f"{name}-".encode() for name in self._names]
        self._single = len(self._names) == 1

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
