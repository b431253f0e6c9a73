"""Byte store over Redis, through the session cache's own connection pools.

Served backends: django-redis's ``RedisCache`` (default and Sentinel clients),
Django's ``RedisCache`` and :class:`hardened_sessions.cache.RedisClusterCache`.
The store asks the backend for its *primary* client (``write=True``) for every
command, reads included, so a replica lagging behind a logout is never
consulted, and sends plain bytes: the backend's serializer (pickle by default)
is never on the path. redis-py sets ``TCP_NODELAY`` on its sockets.

The compare-and-set is a short Lua script: it replaces the record only when
the stored one still starts with the version the request loaded, and never
creates one (so a late save cannot bring back a deleted session).

Per-user index (not on Redis Cluster): a write that names a user also adds the
session's store key to that user's sorted set, in the same script, scored with the
moment the record expires (Redis's clock: ``TIME`` + the record's TTL), and trims
members whose records have expired (``ZREMRANGEBYSCORE``). A login (a create) also
checks a few members picked at random and drops those whose records are gone (logged
out, rotated, revoked), so the set stays near the number of live sessions instead of
growing with every login. The index is never missing a session; readers check each
member and prune. The previous release kept a plain set under another key; it is
still read, and its members are moved over, while it exists (it expires on its own).
On a cluster the index and the sessions live in other slots, where no script can
update both, so there is no index there.

``MAX_SESSIONS_PER_USER`` (:mod:`hardened_sessions.cap`): the script that writes a
login's record (a create, or a save of a session gaining its user) also reads the
user's other members' records, drops gone ones from the index, and ends the oldest (by
the creation time in each record's head) beyond the cap, each delete leaving a
tombstone as ``DELETE_SCRIPT`` does; or, under the refuse policy, stores nothing and
answers -2. Scripts run one at a time, so logins of one user take turns. It needs the
records' names (``supports_user_cap``: a ``KEY_FUNCTION`` that keeps the key).

Retries: redis-py re-sends a command when a timeout or dropped connection hides its
reply (``retry_on_timeout``, a ``retry`` policy, ``RedisCluster``'s own retries).
Reads, the staging ``SET`` and the compare-and-set are safe to re-send (a re-sent
compare-and-set sees the version it wrote, answers "changed", and the engine merges
onto its own record). ``DEL`` and ``SET NX`` are not: a re-sent ``DEL`` answers 0 and
a re-sent ``SET NX`` answers "taken". So a delete is a script that also writes a
short-lived tombstone named with a nonce of the call, and answers "deleted" when it
finds its own tombstone; a create that finds the key taken checks whether the stored
record's signature is its own.

The hot commands (load, save, create, delete) skip redis-py's per-command layers: each
takes a connection out of the client's own pool (``get_connection()``; so the pool's
``max_connections``, its health check at checkout, Sentinel's replacement of connections
to a demoted primary, TLS and a forked child's fresh start all apply), sends its commands
packed in one write (``pack_commands`` / ``send_packed_command``), reads the replies
(``read_response``) and gives the connection back (``release()``). A connection whose
replies were not all read is disconnected before it goes back. A save sends two commands
in one write: ``SET`` of the new record under a staging key that expires within a minute,
then the compare-and-set script, which renames the staging key over the record when the
version still matches (and deletes it otherwise). So the record's bytes never pass
through Lua, which doubled the cost of a 40 KiB save. Redis Cluster clients have no
single pool and keep redis-py's command path, with the record as a script argument.

Replication (``HARDENED_SESSIONS["REDIS_WAIT_REPLICAS"]``): Redis acknowledges a write
before any replica has it, so a failover can lose it. With the setting, every write of a
session record (create, save, delete, so logout, rotation and revoke) is followed, in
the same round trip and on the same connection, by ``WAIT replicas timeout``; when fewer
replicas confirm it in time the call fails closed (``SessionStoreUnavailable``, a 503):
the write may still be undone by a failover, so it is never reported as done. On Redis
Cluster such writes go over the pool of the slot owner's own client
(``get_node_from_key`` / ``get_redis_connection``), as ``RedisCluster``'s command path
cannot keep ``WAIT`` on the write's connection; a "moved" answer (the node refused the
command) sends it once to the owner named there, an "ask" answer (a slot migration) once
to the node named there, behind ``ASKING``.

Slot migrations (Redis Cluster): while a slot moves, Redis refuses a command over several
of its keys (``TRYAGAIN``) unless one node holds them all. A delete's tombstone is a new
key on both nodes, so for the length of the migration the delete script is refused
there; the delete is then a plain ``DEL``, which either node serves (a re-sent one
answers "already gone": the safe side, as when no tombstone name exists).
"""

from __future__ import annotations

import hashlib
import inspect
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)

from ..cap import UserCap
from ..conf import get_config
from ..exceptions import SessionLimitReached, SessionStoreUnavailable
from ..record import version_head
from . import KEY_NAMESPACE, UnsupportedCache

__all__ = ["RedisByteStore"]

# Index keys (before the cache's KEY_PREFIX/VERSION): the sorted set of this release,
# and the plain set of the previous one (read, and emptied into the new one, while it
# exists). A new name, not a new type under the old one: an old-release server still
# running would get WRONGTYPE on every login.
INDEX_NAMESPACE = KEY_NAMESPACE + "by-user:"
LEGACY_INDEX_NAMESPACE = KEY_NAMESPACE + "user:"
# Members a login checks for records that are gone. Each login adds one member and
# removes the gone ones among these, so the set settles near live / (1 - 1/SAMPLE).
INDEX_SAMPLE = 4
# Commands per write when a reader fetches many records (bounds the reply in memory).
BATCH = 100
# Seconds a delete's tombstone lives: longer than any retry of that delete takes.
TOMBSTONE_TTL = 120
_SIGNATURE_TAIL = 43  # the record's signature (record._SIG_LEN): unique to one write

_TIME_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(redis.call('TIME')[1])
"""


def _index_lua(index: str, member: str, ttl: str, *, sample: bool = False) -> str:
    """Lua that records ``member`` (expiring in ``ttl`` seconds) in the sorted set
    ``index`` when ``index`` is given, trimming expired members; with ``sample``, also
    drops gone records among INDEX_SAMPLE members from a random rank (ARGV: record key
    prefix, suffix, sample size (0 = off), random rank)."""
    lua = f"""
if {index} then
  local index, member, ttl = {index}, {member}, tonumber({ttl})
  {_TIME_LUA}
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now)
  redis.call('ZADD', index, now + ttl + 1, member)
  if redis.call('TTL', index) <= ttl then redis.call('EXPIRE', index, ttl + 1) end
"""
    if sample:
        lua += """
  local size, count = redis.call('ZCARD', index), tonumber(ARGV[6])
  if count > 0 and size > 1 then
    local start = tonumber(ARGV[7]) % size
    for _, other in ipairs(redis.call('ZRANGE', index, start, start + count - 1)) do
      -- pcall: a server that refuses keys a script did not declare (or an ACL key
      -- pattern) ends the check, never the login.
      local found = redis.pcall('EXISTS', ARGV[4] .. other .. ARGV[5])
      if type(found) ~= 'number' then break end
      if found == 0 and other ~= member then redis.call('ZREM', index, other) end
    end
  end
"""
    return lua + "end\n"


# On redis-py's command path, record bytes go as bytes, not as a view of the engine's
# buffer: redis-py sends a memoryview argument in a write of its own, one more packet per
# command. The lean path joins the packed command into one write, so it takes the view.
# KEYS[1] = record, KEYS[2] = user index (optional);
# ARGV[1] = record bytes, ARGV[2] = ttl seconds, ARGV[3] = expected head, ARGV[4] = member.
# Returns 1 when replaced, 0 when the record changed, -1 when it is gone.
CAS_SCRIPT = (
    """
-- Only the head is read (GETRANGE, not GET): copying a 40 KiB record into Lua to compare
-- a dozen bytes costs a third of the script's time. Records are never empty.
local head = redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[3]) - 1)
if head == '' then return -1 end
if head ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
"""
    + _index_lua("KEYS[2]", "ARGV[4]", "ARGV[2]")
    + "return 1\n"
)
# MAX_SESSIONS_PER_USER (hardened_sessions.cap), in the script that writes a login's
# record and index entry, so that logins of one user take turns through it. The cap's
# ARGV come last and are optional (none: no cap): ``cap`` (0: none), ``refuse`` ("1":
# refuse the login while ``cap`` others are live), the record key's prefix and suffix
# around a member, this call's tombstone nonce and the tombstones' ttl. The user's other
# members whose records are gone leave the index; the live ones are ordered newest first
# by the creation time their record's head carries (``"c"``, record.py).
_CAP_FUNCTIONS_LUA = """
local function hs_cap_others(index, member, prefix, suffix)
  local found = {}
  for _, other in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if other ~= member then
      local head = redis.call('GETRANGE', prefix .. other .. suffix, 0, 63)
      if head == '' then
        redis.call('ZREM', index, other)
      else
        local created = tonumber(string.match(head, '^hs1:{"n":%d+,"c":(%d+),')) or 0
        found[#found + 1] = {other, created}
      end
    end
  end
  table.sort(found, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] > b[1]
  end)
  return found
end
-- Ends the others beyond the newest ``keep``, each delete leaving a tombstone as
-- DELETE_SCRIPT does; returns {1, members ended...}.
local function hs_cap_trim(index, others, keep, prefix, suffix, nonce, ttl)
  local reply = {1}
  for i = keep + 1, #others do
    local other = others[i][1]
    local record = prefix .. other .. suffix
    if redis.call('DEL', record) == 1 then
      redis.call('SET', record .. ':gone:' .. nonce, '1', 'EX', ttl)
      reply[#reply + 1] = other
    end
    redis.call('ZREM', index, other)
  end
  return reply
end
"""


def _cap_check_lua(index: str, member: str, first: int, refused: str) -> str:
    """Lua that, with a cap in ARGV[first...], lists the user's other live sessions
    (``others``) and, under the refuse policy with ``cap`` of them live, runs
    ``refused`` and returns -2."""
    return f"""
local cap, others = tonumber(ARGV[{first}] or '0'), nil
if cap > 0 and {index} then
  others = hs_cap_others({index}, {member}, ARGV[{first + 2}], ARGV[{first + 3}])
  if ARGV[{first + 1}] == '1' and #others >= cap then
    {refused}
    return -2
  end
end
"""


def _cap_trim_lua(index: str, first: int) -> str:
    return f"""
if others then
  return hs_cap_trim({index}, others, cap - 1, ARGV[{first + 2}], ARGV[{first + 3}],
    ARGV[{first + 4}], ARGV[{first + 5}])
end
"""


# The same with the record staged under KEYS[2] (written by the SET sent just before);
# KEYS[3] = user index (optional); ARGV[1] = expected head, ARGV[2] = ttl seconds,
# ARGV[3] = index member; ARGV[4...9] = the cap (see _CAP_FUNCTIONS_LUA). Returns as
# CAS_SCRIPT, {1, members ended...} with a cap, -2 when the cap refused the login (the
# record, which was the session before it gained the user, is deleted); the staging
# key is gone afterwards.
STAGED_CAS_SCRIPT = (
    _CAP_FUNCTIONS_LUA
    + """
local head = redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1)
if head ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
  if head == '' then return -1 end
  return 0
end
"""
    + _cap_check_lua(
        "KEYS[3]",
        "ARGV[3]",
        4,
        "redis.call('DEL', KEYS[2], KEYS[1]); redis.call('ZREM', KEYS[3], ARGV[3])",
    )
    + """
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""
    + _index_lua("KEYS[3]", "ARGV[3]", "ARGV[2]")
    + _cap_trim_lua("KEYS[3]", 4)
    + "return 1\n"
)
# Seconds a staging key may outlive a save whose script never ran (connection lost).
STAGING_TTL = 60
# A create that names a user. KEYS as CAS_SCRIPT; ARGV[1] = record bytes, ARGV[2] = ttl,
# ARGV[3] = member, ARGV[4]/ARGV[5] = record key prefix/suffix around a member,
# ARGV[6] = members to check (0: none), ARGV[7] = a random rank; ARGV[8...13] = the cap
# (see _CAP_FUNCTIONS_LUA). Returns 1 when created, 0 when taken; with a cap,
# {1, members ended...} when created, -2 when the cap refused it (nothing stored).
ADD_SCRIPT = (
    _CAP_FUNCTIONS_LUA
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
"""
    + _cap_check_lua("KEYS[2]", "ARGV[3]", 8, "redis.call('DEL', KEYS[1])")
    + _index_lua("KEYS[2]", "ARGV[3]", "ARGV[2]", sample=True)
    + _cap_trim_lua("KEYS[2]", 8)
    + "return 1\n"
)
# KEYS[1] = record, KEYS[2] = this call's tombstone; ARGV[1] = tombstone ttl.
# Returns 1 when this call deleted the record (now or in an earlier run of the same
# call, which left the tombstone), 0 when it was already gone.
DELETE_SCRIPT = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
  return 1
end
return redis.call('EXISTS', KEYS[2])
"""
# Moves the previous release's index (a set, KEYS[1]) into the sorted set (KEYS[2]).
# KEYS[3..] = the records of the members ARGV[1..]: live ones get their TTL as score.
MIGRATE_SCRIPT = (
    _TIME_LUA
    + """
local longest = 0
for i = 1, #ARGV do
  local ttl = redis.call('TTL', KEYS[i + 2])
  if ttl > 0 then
    redis.call('ZADD', KEYS[2], now + ttl + 1, ARGV[i])
    if ttl > longest then longest = ttl end
  end
  redis.call('SREM', KEYS[1], ARGV[i])
end
if longest > 0 and redis.call('TTL', KEYS[2]) <= longest then
  redis.call('EXPIRE', KEYS[2], longest + 1)
end
return 1
"""
)


# SHA-1 of each script's source, as EVALSHA names it.
_SHAS: dict[str, str] = {}
# Whether a pool class's get_connection() takes no command name (redis-py 5.3 and later
# deprecate it; earlier releases require one, and ignore it).
_CHECKOUT_WITHOUT_NAME: dict[type, bool] = {}


class ReplicationUnconfirmed(RedisError):
    """``WAIT`` reported fewer replicas holding a write than the settings ask for."""


def _unavailable(exc: Exception, what: str) -> SessionStoreUnavailable:
    return SessionStoreUnavailable(f"Redis could not {what} ({exc.__class__.__name__}).")


def _sha(source: str) -> str:
    sha = _SHAS.get(source)
    if sha is None:
        sha = _SHAS[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    return sha


def _text(member: Any) -> str:
    return member.decode("ascii") if isinstance(member, bytes) else str(member)


def _nonce() -> str:
    # Unique among the deletes of one key within TOMBSTONE_TTL, not secret: the module's
    # generator (reseeded in forked children) keeps deletes off the OS random source.
    return f"{random.getrandbits(64):016x}"  # noqa: S311


def _tombstone_name(record_key: str, keyslot: Callable[[str], int] | None) -> str | None:
    """A delete's tombstone name in ``record_key``'s slot by ``keyslot`` (a cluster
    client's; ``None``: one server, any name will do), or ``None`` when there is none."""
    name = f"{record_key}:gone:{_nonce()}"
    if keyslot is None:
        return name
    slot = keyslot(record_key)
    for candidate in (name, "{" + record_key + "}" + name[len(record_key) :]):
        if keyslot(candidate) == slot:
            return candidate
    return None


def _checkout_args(pool: Any) -> tuple[str, ...]:
    """The arguments that ``pool.get_connection()`` takes (sync and asyncio pools)."""
    without_name = _CHECKOUT_WITHOUT_NAME.get(type(pool))
    if without_name is None:
        params = list(inspect.signature(pool.get_connection).parameters.values())
        without_name = not params or params[0].default is not inspect.Parameter.empty
        _CHECKOUT_WITHOUT_NAME[type(pool)] = without_name
    return () if without_name else ("GET",)


def _checkout(pool: Any) -> Any:
    """A connection out of ``pool``, connected and checked by the pool (public API)."""
    return pool.get_connection(*_checkout_args(pool))


def django_primary_client(alias: str) -> Any:
    """A redis-py client, over a connection pool of its own, for the primary (the first
    ``LOCATION``) of Django's ``RedisCache`` named ``alias``.

    Django's ``RedisCache`` offers no public way to its redis-py client or pools
    (checked: Django 5.2, 6.0 and 6.1, ``django/core/cache/backends/redis.py``; both are
    private attributes of the backend). So the pool is built here from the cache's public
    configuration, ``settings.CACHES[alias]``, as Django documents it and as its
    ``RedisCacheClient`` reads it: ``LOCATION`` one URL or several (a list, or a string
    split at ``,`` and ``;``), the first one the primary; ``OPTIONS`` ``pool_class``
    (default ``redis.ConnectionPool``) and ``parser_class`` (default redis-py's default
    parser), dotted paths or classes; ``serializer`` is the cache's own business (this
    store sends bytes); every other option goes to ``pool_class.from_url()``. Django 6.1
    adds only a client name (``driver_info`` / ``lib_name``), left out here.
    ``tests/test_store_clients.py`` compares these pools with the ones Django builds, so a
    change in Django's reading of OPTIONS fails there.

    The pool is the session store's own: its ``max_connections`` (an OPTION) bounds the
    store's connections, and Django's cache keeps its own pool for other uses.
    """
    import redis

    url, pool_class, parser_class, options = django_pool_settings(alias)
    pool = pool_class.from_url(url, parser_class=parser_class, **options)
    return redis.Redis(connection_pool=pool)


def django_pool_settings(alias: str) -> tuple[str, Any, Any, dict[str, Any]]:
    """``(primary URL, pool_class, parser_class, other OPTIONS)`` of Django's
    ``RedisCache`` named ``alias``, read as ``django_primary_client`` describes (classes
    imported); the asyncio store (:mod:`.redis_async`) reads them here too."""
    import redis
    from django.conf import settings
    from django.utils.module_loading import import_string

    config: dict[str, Any] = settings.CACHES[alias]
    location = config.get("LOCATION", "")
    servers = re.split("[;,]", location) if isinstance(location, str) else list(location)
    options: dict[str, Any] = dict(config.get("OPTIONS") or {})
    options.pop("serializer", None)
    pool_class = options.pop("pool_class", None) or redis.ConnectionPool
    parser_class = options.pop("parser_class", None) or redis.connection.DefaultParser
    if isinstance(pool_class, str):
        pool_class = import_string(pool_class)
    if isinstance(parser_class, str):
        parser_class = import_string(parser_class)
    return servers[0], pool_class, parser_class, options


class RedisByteStore:
    def __init__(
        self,
        client: Callable[[], Any],
        make_key: Callable[[str], str],
        *,
        supports_user_index: bool = True,
    ) -> None:
        self._client = client
        self._make_key = make_key
        self.supports_user_index = supports_user_index
        self._scripts: dict[str, Any] = {}
        # Clients with one connection pool take the lean path (module docstring). The
        # pool is the client's for good (django-redis keeps one pool per URL and process,
        # Sentinel's included, also across its close(); Django's comes from the settings).
        self._pool: Any = getattr(client(), "connection_pool", None)
        self._lean = self._pool is not None
        self._record_key_template = self._template()

    def _template(self) -> tuple[str, str] | None:
        """``(prefix, suffix)`` with ``_key(k) == prefix + k + suffix`` for every store key,
        when the cache's key function puts the key in verbatim (Django's default does); a
        login's script then finds a member's record by name. ``None`` otherwise."""
        probes = ["a" * 64, "b" * 64, "0123456789abcdef" * 4]
        first = self._key(probes[0])
        at = first.rfind(probes[0])
        if at < 0:
            return None
        prefix, suffix = first[:at], first[at + 64 :]
        if any(self._key(probe) != prefix + probe + suffix for probe in probes):
            return None
        return prefix, suffix

    @classmethod
    def from_cache(cls, cache: Any, alias: str) -> RedisByteStore:
        # Store keys are always 64 hex digits: validate the shape once here instead of
        # running Django's per-character memcached-compatibility check on every command.
        cache.validate_key(cache.make_key(KEY_NAMESPACE + "0" * 64))
        make_key = cache.make_key
        from ..cache import RedisClusterCache

        if isinstance(cache, RedisClusterCache):
            cluster = cache.get_client(write=True)
            return cls(lambda: cluster, make_key, supports_user_index=False)
        if type(cache).__module__.startswith("django_redis"):
            client = cache.client  # django-redis's public client object
            if type(client).__name__ == "ShardClient":
                raise UnsupportedCache(
                    "django-redis's ShardClient spreads keys over servers by itself, and "
                    "hardened_sessions can't reach a shard's primary through it; use "
                    "Redis Cluster (hardened_sessions.cache.RedisClusterCache) instead."
                )
            return cls(lambda: client.get_client(write=True), make_key)
        primary = django_primary_client(alias)
        return cls(lambda: primary, make_key)

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
            return _tombstone_name(record_key, None)  # one server: any name will do
        return _tombstone_name(record_key, getattr(self._client(), "keyslot", None))

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
        a moved or migrating slot follows the redirection once (``_execute``); the cluster
        client learns the new owner at its next command."""
        if self._lean or not get_config().redis_wait_replicas:
            return None
        cluster = self._client()
        return cluster.get_redis_connection(cluster.get_node_from_key(record_key))

    def _keys(self, key: str, user: str | None) -> list[str]:
        keys = [self._key(key)]
        if user is not None and self.supports_user_index:
            keys.append(self._index_key(user))
        return keys

    def _execute(
        self, commands: Sequence[tuple[Any, ...]], *, write: bool = False, node: Any = None
    ) -> list[Any]:
        """Replies to ``commands``, sent in one write over a connection of the client's
        pool; with ``write`` and ``REDIS_WAIT_REPLICAS`` set, followed by ``WAIT``
        (``ReplicationUnconfirmed`` when too few replicas confirm).

        The connection's retry policy applies as in redis-py's own command path (every
        command sent here is safe to re-send: see the module docstring); any other
        failure drops the connection, so no reply is ever left for the next user.
        ``node``: a Redis Cluster node's client, whose pool is used instead; when that
        node answers that the slot has moved (a failover, a resharding), it refused the
        commands, so they go once to the owner its answer names. When it answers "ask"
        (the slot is migrating and the key is not, or no longer, on that node), they go
        once to the node named there, each behind ``ASKING``, as the cluster protocol
        asks.
        """
        if node is None:
            return self._send(self._pool, commands, write)
        try:
            return self._send(node.connection_pool, commands, write)
        except AskError as redirect:  # MovedError is an AskError too
            cluster = self._client()
            owner = cluster.get_node(host=redirect.host, port=redirect.port)
            if owner is None:
                raise
            pool = cluster.get_redis_connection(owner).connection_pool
            if isinstance(redirect, MovedError):
                return self._send(pool, commands, write)
            asked = [part for command in commands for part in (("ASKING",), command)]
            return self._send(pool, asked, write)[1::2]

    def _send(self, pool: Any, commands: Sequence[tuple[Any, ...]], write: bool) -> list[Any]:
        wait = get_config().redis_wait_replicas if write else 0
        if wait:
            commands = [*commands, ("WAIT", wait, get_config().redis_wait_timeout_ms)]
        conn = _checkout(pool)
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

            replies: list[Any] = conn.retry.call_with_retry(
                attempt, lambda _error: conn.disconnect()
            )
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if wait:
            confirmed = replies.pop()
            if not isinstance(confirmed, int) or confirmed < wait:
                raise ReplicationUnconfirmed(
                    f"{confirmed} of {wait} replicas confirmed the write in time"
                )
        return replies

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
        sha = _sha(source)
        commands = list(commands)
        for i in range(len(commands) - scripts, len(commands)):
            commands[i] = ("EVALSHA", sha, *commands[i])
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

    def get(self, key: str) -> tuple[bytes, Any] | None:
        try:
            if self._lean:
                (value,) = self._execute((("GET", self._key(key)),))
            else:
                value = self._client().get(self._key(key))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "read a session") from exc
        if value is None:
            return None
        return value, None  # the token is the record's version: the engine reads it there

    @property
    def supports_user_cap(self) -> bool:
        """Whether a login's script can enforce MAX_SESSIONS_PER_USER: it needs the index,
        and the names of the members' records (a KEY_FUNCTION that keeps the key)."""
        return self.supports_user_index and self._record_key_template is not None

    def _cap_args(self, cap: UserCap | None, keys: list[str]) -> list[Any]:
        """The cap's script arguments (see _CAP_FUNCTIONS_LUA); none without a cap."""
        if cap is None or len(keys) < 2 or not self.supports_user_cap:
            return []
        assert self._record_key_template is not None
        prefix, suffix = self._record_key_template
        return [cap.limit, int(cap.refuse), prefix, suffix, _nonce(), TOMBSTONE_TTL]

    @staticmethod
    def _capped(reply: Any, cap: UserCap | None) -> Any:
        """A script's reply with the members the cap ended moved into ``cap``;
        ``SessionLimitReached`` when the cap refused the login."""
        if cap is None:
            return reply
        if isinstance(reply, list):
            cap.ended.extend(_text(member) for member in reply[1:])
            return reply[0]
        if reply == -2:
            raise SessionLimitReached(cap.limit)
        return reply

    def add(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Any | None:
        keys = self._keys(key, user)
        signature = bytes(value[-_SIGNATURE_TAIL:])
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
                created = self._capped(created, cap)
            if not created:
                # Taken, or created by this very call and re-sent after a lost reply: the
                # record's signature (over this key and payload) tells which.
                created = self._holds(keys[0], signature)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "create a session") from exc
        return version if created else None

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
        token: Any,
        version: int,
        user: str | None = None,
        *,
        cap: UserCap | None = None,
    ) -> Any | None:
        if token is None:
            return None
        return version if self._replace(key, value, ttl, token, user, cap) else None

    def _replace(
        self,
        key: str,
        value: memoryview,
        ttl: int,
        expected_version: int,
        user: str | None = None,
        cap: UserCap | None = None,
    ) -> bool:
        keys = self._keys(key, user)
        head = version_head(expected_version)
        capping = self._cap_args(cap, keys)
        try:
            if self._lean:
                # Named after the new record's signature: unique to this write.
                staging = f"{keys[0]}:next:{bytes(value[-16:]).decode('ascii')}"
                *_, outcome = self._evalsha(
                    STAGED_CAS_SCRIPT,
                    [
                        ("SET", staging, value, "EX", STAGING_TTL),
                        (len(keys) + 1, keys[0], staging, *keys[1:], head, ttl, key, *capping),
                    ],
                    write=True,
                )
                outcome = self._capped(outcome, cap)
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
            raise _unavailable(exc, "save a session") from exc
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
            raise _unavailable(exc, "delete a session") from exc
        return deleted

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
        # No same-slot name for a tombstone, or a migrating slot: a plain DEL (README,
        # Redis Cluster).
        return int(self._client().delete(record_key))

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
            old_members = sorted({_text(m) for m in old})
            for start in range(0, len(old_members), BATCH):
                chunk = old_members[start : start + BATCH]
                record_keys = [self._key(k) for k in chunk]
                self._script(MIGRATE_SCRIPT, "migrate", [legacy, index, *record_keys], chunk)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc, "list a user's sessions") from exc
        return sorted({_text(m) for m in current} | set(old_members))

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
                raise _unavailable(exc, "list a user's sessions") from exc
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
            raise _unavailable(exc, "update a user's session index") from exc
