"""Byte store over Redis, through the session cache's own connection pools.

:class:`RedisByteStore` serves django-redis's ``RedisCache`` (default and Sentinel
clients), Django's ``RedisCache`` and
:class:`hardened_sessions.redis_cluster.RedisClusterCache`, through the primary's client
(:mod:`.redis_clients`), and sends plain bytes: the backend's serializer (pickle by
default) is never on the path. redis-py sets ``TCP_NODELAY`` on its sockets. Its parts:

* :mod:`.redis_scripts`: the Lua scripts (the compare-and-set, the create and the delete,
  the per-user index and ``MAX_SESSIONS_PER_USER``) and the names of keys (staging keys,
  tombstones, the per-user index);
* :mod:`.redis_send`: the round trip, commands packed in one write over a connection
  checked out of the client's pool, and :mod:`.redis_wait`: ``WAIT`` after a write
  (``REDIS_WAIT_REPLICAS``);
* :mod:`.redis_cap`: the cap's arguments to a login's script, and its reply;
* :mod:`.redis_cluster_paths`: Redis Cluster, whose clients keep redis-py's command path
  (redirections, a migrating slot's delete).

A save sends two commands in one write: ``SET`` of the new record under a staging key
that expires within a minute, then the compare-and-set script, which renames the staging
key over the record when the version still matches (and deletes it otherwise). So the
record's bytes never pass through Lua, which doubled the cost of a 40 KiB save.

Retries: redis-py re-sends a command when a timeout or dropped connection hides its
reply (``retry_on_timeout``, a ``retry`` policy, ``RedisCluster``'s own retries).
Reads, the staging ``SET`` and the compare-and-set are safe to re-send (a re-sent
compare-and-set sees the version it wrote, answers "changed", and the engine merges
onto its own record). ``DEL`` and ``SET NX`` are not: a re-sent ``DEL`` answers 0 and
a re-sent ``SET NX`` answers "taken". So a delete is a script that also writes a
short-lived tombstone named with a nonce of the call, and answers "deleted" when it
finds its own tombstone; a create that finds the key taken checks whether the stored
record's signature is its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from ..cap import UserCap
from ..capabilities import Capability
from . import KEY_NAMESPACE
from .redis_cap import cap_args, capped

# Also importable from here, as before the clients and WAIT had modules of their own.
from .redis_clients import django_pool_settings as django_pool_settings
from .redis_clients import django_primary_client as django_primary_client
from .redis_clients import primary_client
from .redis_cluster_paths import ClusterPaths
from .redis_scripts import (
    ADD_SCRIPT,
    BATCH,
    CAS_SCRIPT,
    DELETE_SCRIPT,
    INDEX_NAMESPACE,
    INDEX_SAMPLE,
    LEGACY_INDEX_NAMESPACE,
    MIGRATE_SCRIPT,
    SIGNATURE_TAIL,
    STAGED_CAS_SCRIPT,
    STAGING_TTL,
    TOMBSTONE_TTL,
    key_template,
    sha,
    staging_name,
    text,
    tombstone_name,
)
from .redis_send import send, unavailable
from .redis_wait import ReplicationUnconfirmed as ReplicationUnconfirmed
from .token import Handle, Token

__all__ = ["RedisByteStore"]


def _capabilities(index: bool, template: tuple[str, str] | None) -> Capability:
    """``USER_INDEX`` with the per-user index; ``USER_CAP`` too when a login's script
    can enforce MAX_SESSIONS_PER_USER: it needs the index, and the names of the members'
    records (a KEY_FUNCTION that keeps the key)."""
    if not index:
        return Capability(0)
    if template is None:
        return Capability.USER_INDEX
    return Capability.USER_INDEX | Capability.USER_CAP


class RedisByteStore(ClusterPaths):
    def __init__(
        self,
        client: Callable[[], Any],
        make_key: Callable[[str], str],
        *,
        user_index: bool = True,
    ) -> None:
        self._client = client
        self._make_key = make_key
        self._scripts: dict[str, Any] = {}
        # Clients with one connection pool take the lean path (redis_send.py). The
        # pool is the client's for good (django-redis keeps one pool per URL and process,
        # Sentinel's included, also across its close(); Django's comes from the settings).
        self._pool: Any = getattr(client(), "connection_pool", None)
        self._lean = self._pool is not None
        self._record_key_template = key_template(self._key)
        self.capabilities = _capabilities(user_index, self._record_key_template)

    @classmethod
    def capabilities_for(cls, cache: Any) -> Capability:
        """The capabilities of the store of ``cache``, from its configuration: the
        per-user index everywhere but on Redis Cluster, and with it the cap where the
        cache's key function keeps the key as it is (see :attr:`capabilities`)."""
        from ..redis_cluster import RedisClusterCache

        template = key_template(lambda key: str(cache.make_key(KEY_NAMESPACE + key)))
        return _capabilities(not isinstance(cache, RedisClusterCache), template)

    @classmethod
    def from_cache(cls, cache: Any, alias: str) -> RedisByteStore:
        # Store keys are always 64 hex digits: validate the shape once here instead of
        # running Django's per-character memcached-compatibility check on every command.
        cache.validate_key(cache.make_key(KEY_NAMESPACE + "0" * 64))
        client, user_index = primary_client(cache, alias)
        return cls(client, cache.make_key, user_index=user_index)

    def _key(self, key: str) -> str:
        return str(self._make_key(KEY_NAMESPACE + key))

    def _index_key(self, user: str) -> str:
        return str(self._make_key(INDEX_NAMESPACE + user))

    def _legacy_index_key(self, user: str) -> str:
        return str(self._make_key(LEGACY_INDEX_NAMESPACE + user))

    def _tombstone(self, record_key: str) -> str | None:
        """A name for this delete's tombstone, in the record's cluster slot; ``None``
        when no such name can be made (a ``KEY_PREFIX`` whose braces make an empty hash
        tag, ``{}``)."""
        if self._lean:
            return tombstone_name(record_key, None)  # one server: any name will do
        return tombstone_name(record_key, getattr(self._client(), "keyslot", None))

    def _keys(self, key: str, user: str | None) -> list[str]:
        keys = [self._key(key)]
        if user is not None and Capability.USER_INDEX in self.capabilities:
            keys.append(self._index_key(user))
        return keys

    def _execute(
        self, commands: Sequence[tuple[Any, ...]], *, write: bool = False, node: Any = None
    ) -> list[Any]:
        """Replies to ``commands``, sent in one write over a connection of the client's
        pool (:func:`.redis_send.send`, with ``WAIT`` after a ``write`` when set);
        ``node``: a Redis Cluster node's client, whose pool is used instead, following a
        redirection once (``_on_node``)."""
        if node is None:
            return send(self._pool, commands, write)
        return self._on_node(node, commands, write)

    def _evalsha(
        self,
        source: str,
        commands: list[tuple[Any, ...]],
        scripts: int = 1,
        *,
        write: bool = False,
        node: Any = None,
    ) -> list[Any]:
        """``_execute`` of commands whose last ``scripts`` ones run the script ``source``
        (given as ``(numkeys, *keys, *args)``); the script is loaded on NOSCRIPT and all
        the commands sent again, which each of them is safe to be."""
        digest = sha(source)
        commands = list(commands)
        for i in range(len(commands) - scripts, len(commands)):
            commands[i] = ("EVALSHA", digest, *commands[i])
        try:
            return self._execute(commands, write=write, node=node)
        except NoScriptError:
            # RedisCluster loads it on every primary (the slot's owner may have changed).
            self._client().script_load(source)
            return self._execute(commands, write=write, node=node)

    def _batch(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Replies to ``commands`` (reads), pipelined."""
        if self._lean:
            return self._execute(commands)
        pipe = self._client().pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())

    def get(self, key: str) -> tuple[bytes, Handle] | None:
        try:
            if self._lean:
                (value,) = self._execute((("GET", self._key(key)),))
            else:
                value = self._client().get(self._key(key))
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, None  # no handle: the record's version is the whole token

    def _cap_args(self, cap: UserCap | None, keys: list[str]) -> list[Any]:
        """The cap's script arguments (:func:`.redis_cap.cap_args`); none without a cap."""
        template = self._record_key_template if Capability.USER_CAP in self.capabilities else None
        return cap_args(cap, keys, template)

    def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Token | None:
        keys = self._keys(key, user)
        signature = bytes(value[-SIGNATURE_TAIL:])
        try:
            if len(keys) == 1:
                node = self._waiting_node(keys[0])
                if self._lean or node is not None:
                    (created,) = self._execute(
                        (("SET", keys[0], value, "EX", ttl, "NX"),), write=True, node=node
                    )
                else:
                    created = self._client().set(keys[0], bytes(value), ex=ttl, nx=True)
            else:
                template = self._record_key_template
                prefix, suffix = template or ("", "")
                sample = INDEX_SAMPLE if template else 0
                rank = random.getrandbits(31)  # noqa: S311 (spreads the check, no secret)
                args = [ttl, key, prefix, suffix, sample, rank, *self._cap_args(cap, keys)]
                if self._lean:
                    (created,) = self._evalsha(
                        ADD_SCRIPT, [(len(keys), *keys, value, *args)], write=True
                    )
                else:
                    created = self._run_script("add", ADD_SCRIPT, keys, [bytes(value), *args])
                created = capped(created, cap)
            if not created:
                # Taken, or created by this very call and re-sent after a lost reply: the
                # record's signature (over this key and payload) tells which.
                created = self._holds(keys[0], signature)
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "create a session") from exc
        return Token(version) if created else None

    def _holds(self, record_key: str, signature: bytes) -> bool:
        """Whether the record stored under ``record_key`` ends with ``signature``."""
        command = ("GETRANGE", record_key, -len(signature), -1)
        if self._lean:
            (tail,) = self._execute((command,))
        else:
            tail = self._client().execute_command(*command)
        return bytes(tail or b"") == signature

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
        cap: UserCap | None = None,
    ) -> Token | None:
        """``head``: the bytes the stored record must start with (the engine's
        ``record.version_head(token.version)``); the script compares them."""
        return Token(version) if self._replace(key, value, ttl, head, user, cap) else None

    def _replace(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        head: bytes,
        user: str | None = None,
        cap: UserCap | None = None,
    ) -> bool:
        keys = self._keys(key, user)
        capping = self._cap_args(cap, keys)
        try:
            if self._lean:
                staging = staging_name(keys[0], value)
                *_, outcome = self._evalsha(
                    STAGED_CAS_SCRIPT,
                    [
                        ("SET", staging, value, "EX", STAGING_TTL),
                        (len(keys) + 1, keys[0], staging, *keys[1:], head, ttl, key, *capping),
                    ],
                    write=True,
                )
                outcome = capped(outcome, cap)
            elif (node := self._waiting_node(keys[0])) is not None:
                (outcome,) = self._evalsha(
                    CAS_SCRIPT,
                    [(len(keys), *keys, bytes(value), ttl, head, key)],
                    write=True,
                    node=node,
                )
            else:
                outcome = self._run_script("cas", CAS_SCRIPT, keys, [bytes(value), ttl, head, key])
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "save a session") from exc
        return bool(outcome == 1)

    def delete(self, key: str) -> bool:
        """Whether this call deleted the record, also when redis-py re-sent it after a
        lost reply (the tombstone written with the delete tells; module docstring)."""
        return self.delete_many([key])[0]

    def delete_many(self, keys: Iterable[str]) -> list[bool]:
        """``delete`` of each key, pipelined (one write per BATCH keys); whether each
        was deleted by this call."""
        record_keys = [self._key(key) for key in keys]
        deleted: list[bool] = []
        try:
            for start in range(0, len(record_keys), BATCH):
                chunk = record_keys[start : start + BATCH]
                if self._lean:
                    commands = [(2, k, self._tombstone(k), TOMBSTONE_TTL) for k in chunk]
                    replies = self._evalsha(
                        DELETE_SCRIPT, commands, scripts=len(commands), write=True
                    )
                else:
                    replies = [self._delete_one(k) for k in chunk]
                deleted.extend(bool(reply) for reply in replies)
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "delete a session") from exc
        return deleted

    # -- per-user index -------------------------------------------------------------

    def user_members(self, user: str) -> list[str]:
        """Store keys of the user's sessions (possibly some that ended since)."""
        return self._members(user)

    def _members(self, user: str) -> list[str]:
        """Members of both generations of the user's index; the earlier build's are moved
        into the sorted set first (the live ones, scored with their records' TTL)."""
        index, legacy = self._index_key(user), self._legacy_index_key(user)
        try:
            current, old = self._batch([("ZRANGE", index, 0, -1), ("SMEMBERS", legacy)])
            old_members = sorted({text(m) for m in old})
            for start in range(0, len(old_members), BATCH):
                chunk = old_members[start : start + BATCH]
                record_keys = [self._key(k) for k in chunk]
                self._script(MIGRATE_SCRIPT, "migrate", [legacy, index, *record_keys], chunk)
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "list a user's sessions") from exc
        return sorted({text(m) for m in current} | set(old_members))

    def user_records(self, user: str) -> Iterator[tuple[str, bytes | None]]:
        """``(store key, stored bytes or None)`` for each member of the user's index
        (possibly ones that ended since), in pipelined reads: a round trip for the index
        and one per BATCH members, fetched as the caller iterates (so memory holds a
        batch of records, not all of them)."""
        members = self._members(user)
        for start in range(0, len(members), BATCH):
            chunk = members[start : start + BATCH]
            try:
                values = self._batch([("GET", self._key(k)) for k in chunk])
            except (RedisError, OSError) as exc:
                raise unavailable(exc, "list a user's sessions") from exc
            for key, value in zip(chunk, values, strict=True):
                yield key, None if value is None else bytes(value)

    def _script(self, source: str, name: str, keys: list[str], args: list[Any]) -> Any:
        if self._lean:
            return self._evalsha(source, [(len(keys), *keys, *args)])[0]
        return self._run_script(name, source, keys, args)

    def forget_members(self, user: str, keys: Iterable[str]) -> None:
        """Drop ``keys`` from the user's index (both generations of it)."""
        keys = list(keys)
        index, legacy = self._index_key(user), self._legacy_index_key(user)
        try:
            for start in range(0, len(keys), BATCH):
                chunk = keys[start : start + BATCH]
                self._batch([("ZREM", index, *chunk), ("SREM", legacy, *chunk)])
        except (RedisError, OSError) as exc:
            raise unavailable(exc, "update a user's session index") from exc
