"""``WAIT`` after a write of a session record (``REDIS_WAIT_REPLICAS``), sync and asyncio.

Redis acknowledges a write before any replica has it, so a failover can lose it. With
``HARDENED_SESSIONS["REDIS_WAIT_REPLICAS"]``, every write of a session record (create,
save, delete, so logout, rotation and revoke) is followed, in the same round trip and on
the same connection, by ``WAIT replicas timeout``; when fewer replicas confirm it in
time the call fails closed (:class:`ReplicationUnconfirmed`, which the stores turn into
``SessionStoreUnavailable``, a 503): the write may still be undone by a failover, so it
is never reported as done. On Redis Cluster such writes go over the pool of the slot
owner's own client (:mod:`.redis_cluster_paths`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from ..conf import get_config

__all__ = ["ReplicationUnconfirmed", "confirmed", "with_wait"]


class ReplicationUnconfirmed(RedisError):
    """``WAIT`` reported fewer replicas holding a write than the settings ask for."""


def with_wait(
    commands: Sequence[tuple[Any, ...]], write: bool
) -> tuple[Sequence[tuple[Any, ...]], int]:
    """``commands``, followed by ``WAIT`` for a ``write`` when ``REDIS_WAIT_REPLICAS`` is
    set, and the number of replicas to wait for (0: none, nothing added)."""
    wait = get_config().redis_wait_replicas if write else 0
    if wait:
        commands = [*commands, ("WAIT", wait, get_config().redis_wait_timeout_ms)]
    return commands, wait


def confirmed(replies: list[Any], wait: int) -> list[Any]:
    """The replies to the commands, without ``WAIT``'s (when ``wait``), which must count
    at least ``wait`` replicas (``ReplicationUnconfirmed`` otherwise)."""
    if wait:
        count = replies.pop()
        if not isinstance(count, int) or count < wait:
            raise ReplicationUnconfirmed(f"{count} of {wait} replicas confirmed the write in time")
    return replies
