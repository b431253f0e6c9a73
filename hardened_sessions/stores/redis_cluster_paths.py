"""The sync Redis store's paths on Redis Cluster: a slot owner's own pool for ``WAIT``,
redirections (MOVED, ASK), scripts through the cluster client, and the delete of a
migrating slot.

Redis Cluster clients have no single pool and keep redis-py's command path, with the
record as a script argument (scripts through ``register_script``, which loads one on
NOSCRIPT on every primary).

With ``REDIS_WAIT_REPLICAS`` (:mod:`.redis_wait`), a write of a session record goes over
the pool of the slot owner's own client (``get_node_from_key`` /
``get_redis_connection``), as ``RedisCluster``'s command path cannot keep ``WAIT`` on the
write's connection; a "moved" answer (the node refused the command) sends it once to the
owner named there, an "ask" answer (a slot migration) once to the node named there,
behind ``ASKING``.

Slot migrations: while a slot moves, Redis refuses a command over several of its keys
(``TRYAGAIN``) unless one node holds them all. A delete's tombstone is a new key on both
nodes, so for the length of the migration the delete script is refused there; the delete
is then a plain ``DEL``, which either node serves (a re-sent one answers "already gone":
the safe side, as when no tombstone name exists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import AskError, ClusterDownError, ClusterError, MovedError, TryAgainError

from ..conf import get_config
from .redis_scripts import DELETE_SCRIPT, TOMBSTONE_TTL
from .redis_send import send

__all__ = ["ClusterPaths"]


class ClusterPaths:
    """The Redis Cluster half of :class:`~hardened_sessions.stores.redis.RedisByteStore`
    (its base class)."""

    _client: Callable[[], Any]
    _lean: bool
    _scripts: dict[str, Any]

    if TYPE_CHECKING:

        def _tombstone(self, record_key: str) -> str | None: ...

        def _evalsha(
            self,
            source: str,
            commands: list[tuple[Any, ...]],
            scripts: int = 1,
            *,
            write: bool = False,
            node: Any = None,
        ) -> list[Any]: ...

        def _execute(
            self, commands: Sequence[tuple[Any, ...]], *, write: bool = False, node: Any = None
        ) -> list[Any]: ...

    def _run_script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        client = self._client()
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script(keys=keys, args=args, client=client)

    def _waiting_node(self, record_key: str) -> Any:
        """On Redis Cluster with ``REDIS_WAIT_REPLICAS``: the client of the primary that
        holds ``record_key`` (``WAIT`` must follow the write on the same connection, which
        ``RedisCluster``'s command path does not offer); else ``None``. A write that meets
        a moved or migrating slot follows the redirection once (``_on_node``); the cluster
        client learns the new owner at its next command."""
        if self._lean or not get_config().redis_wait_replicas:
            return None
        cluster = self._client()
        return cluster.get_redis_connection(cluster.get_node_from_key(record_key))

    def _on_node(self, node: Any, commands: Sequence[tuple[Any, ...]], write: bool) -> list[Any]:
        """``_execute`` over the pool of ``node``, a Redis Cluster node's client. When that
        node answers that the slot has moved (a failover, a resharding), it refused the
        commands, so they go once to the owner its answer names. When it answers "ask"
        (the slot is migrating and the key is not, or no longer, on that node), they go
        once to the node named there, each behind ``ASKING``, as the cluster protocol
        asks."""
        try:
            return send(node.connection_pool, commands, write)
        except AskError as redirect:  # MovedError is an AskError too
            cluster = self._client()
            owner = cluster.get_node(host=redirect.host, port=redirect.port)
            if owner is None:
                raise
            pool = cluster.get_redis_connection(owner).connection_pool
            if isinstance(redirect, MovedError):
                return send(pool, commands, write)
            asked = [part for command in commands for part in (("ASKING",), command)]
            return send(pool, asked, write)[1::2]

    def _delete_one(self, record_key: str) -> int:
        tombstone = self._tombstone(record_key)
        node = self._waiting_node(record_key)
        if tombstone is not None:
            try:
                if node is not None:
                    command = (2, record_key, tombstone, TOMBSTONE_TTL)
                    (deleted,) = self._evalsha(DELETE_SCRIPT, [command], write=True, node=node)
                    return int(deleted)
                keys = [record_key, tombstone]
                return int(self._run_script("delete", DELETE_SCRIPT, keys, [TOMBSTONE_TTL]))
            except (TryAgainError, ClusterError) as exc:
                # TRYAGAIN (redis-py's own path retries it, then gives up with "TTL
                # exhausted"): the slot is migrating, and Redis runs no command over
                # several of its keys unless one node holds them all, while the tombstone
                # is new on both. That lasts until the migration ends, so the record
                # goes with a plain DEL, which either node serves; a re-sent one answers
                # "already gone" (the safe side, as without a tombstone).
                if isinstance(exc, ClusterDownError):
                    raise
        if node is not None:
            (deleted,) = self._execute([("DEL", record_key)], write=True, node=node)
            return int(deleted)
        # No same-slot name for a tombstone, or a migrating slot: a plain DEL (see
        # docs/engines.rst, "Cache configurations", the "Retries" paragraph).
        return int(self._client().delete(record_key))
