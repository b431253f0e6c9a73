"""The Redis stores' round trip: commands packed in one write over a pool's connection.

The hot commands (load, save, create, delete) skip redis-py's per-command layers: each
takes a connection out of the client's own pool (``get_connection()``; so the pool's
``max_connections``, its health check at checkout, Sentinel's replacement of connections
to a demoted primary, TLS and a forked child's fresh start all apply), sends its commands
packed in one write (``pack_commands`` / ``send_packed_command``), reads the replies
(``read_response``) and gives the connection back (``release()``), followed by ``WAIT``
on the same connection when set (:mod:`.redis_wait`). A connection whose replies were
not all read (an error, a cancelled task) is disconnected before it goes back. The
connection's retry policy applies as in redis-py's own command path: every command sent
here is safe to re-send (:mod:`.redis`, "Retries"). :func:`send` is the sync store's,
:func:`send_async` the asyncio store's (redis.asyncio's same public calls).

A failure to answer becomes ``SessionStoreUnavailable`` (:func:`unavailable`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from ..exceptions import SessionStoreUnavailable
from .redis_wait import confirmed, with_wait

__all__ = ["checkout", "checkout_args", "send", "send_async", "unavailable"]

# Whether a pool class's get_connection() takes no command name (redis-py 5.3 and later
# deprecate it; earlier releases require one, and ignore it).
_CHECKOUT_WITHOUT_NAME: dict[type, bool] = {}


def unavailable(exc: Exception, what: str) -> SessionStoreUnavailable:
    """The store's failure for a Redis error ``exc`` met trying to ``what``."""
    return SessionStoreUnavailable(f"Redis could not {what} ({exc.__class__.__name__}).")


def checkout_args(pool: Any) -> tuple[str, ...]:
    """The arguments that ``pool.get_connection()`` takes (sync and asyncio pools)."""
    without_name = _CHECKOUT_WITHOUT_NAME.get(type(pool))
    if without_name is None:
        params = list(inspect.signature(pool.get_connection).parameters.values())
        without_name = not params or params[0].default is not inspect.Parameter.empty
        _CHECKOUT_WITHOUT_NAME[type(pool)] = without_name
    return () if without_name else ("GET",)


def checkout(pool: Any) -> Any:
    """A connection out of ``pool``, connected and checked by the pool (public API)."""
    return pool.get_connection(*checkout_args(pool))


def send(pool: Any, commands: Sequence[tuple[Any, ...]], write: bool) -> list[Any]:
    """Replies to ``commands``, sent in one write over a connection of ``pool``; with
    ``write`` and ``REDIS_WAIT_REPLICAS`` set, followed by ``WAIT``
    (``ReplicationUnconfirmed`` when too few replicas confirm)."""
    commands, wait = with_wait(commands, write)
    conn = checkout(pool)
    try:
        packed = b"".join(conn.pack_commands(commands))
        retried = False

        def attempt() -> list[Any]:
            nonlocal retried
            if retried:
                # The pool handed the connection out connected; a retry reconnects
                # it (a Sentinel-managed connection asks the sentinels there).
                conn.connect()
            retried = True
            conn.send_packed_command([packed])
            return [conn.read_response() for _ in commands]

        replies: list[Any] = conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return confirmed(replies, wait)


async def send_async(pool: Any, commands: Sequence[tuple[Any, ...]], write: bool) -> list[Any]:
    """:func:`send` on a redis.asyncio pool."""
    commands, wait = with_wait(commands, write)
    conn = await pool.get_connection(*checkout_args(pool))
    try:
        packed = b"".join(conn.pack_commands(commands))
        retried = False

        async def attempt() -> list[Any]:
            nonlocal retried
            if retried:
                await conn.connect()
            retried = True
            await conn.send_packed_command([packed])
            return [await conn.read_response() for _ in commands]

        async def fail(_error: BaseException) -> None:
            await conn.disconnect()

        replies: list[Any] = await conn.retry.call_with_retry(attempt, fail)
    except BaseException:
        with suppress(Exception):  # the failure that brought us here is the one to raise
            await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    return confirmed(replies, wait)
