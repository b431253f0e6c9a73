"""The Redis stores' Lua scripts and key names, shared by the sync and asyncio stores.

The compare-and-set is a short Lua script: it replaces the record only when the stored
one still starts with the version the request loaded, and never creates one (so a late
save cannot bring back a deleted session). A save stages the new record under a key
that expires within a minute (:func:`staging_name`) and the script renames it over the
record, so the record's bytes never pass through Lua.

Per-user index (not on Redis Cluster): a write that names a user also adds the
session's store key to that user's sorted set, in the same script, scored with the
moment the record expires (Redis's clock: ``TIME`` + the record's TTL), and trims
members whose records have expired (``ZREMRANGEBYSCORE``). A login (a create) also
checks a few members picked at random and drops those whose records are gone (logged
out, rotated, revoked), so the set stays near the number of live sessions instead of
growing with every login. The index is never missing a session; readers check each
member and prune. The previous release kept a plain set under another key; it is
still read, and its members are moved over (``MIGRATE_SCRIPT``), while it exists (it
expires on its own). On a cluster the index and the sessions live in other slots, where
no script can update both, so there is no index there.

``MAX_SESSIONS_PER_USER`` (:mod:`hardened_sessions.cap`): the script that writes a
login's record (a create, or a save of a session gaining its user) also reads the
user's other members' records, drops gone ones from the index, and ends the oldest (by
the creation time in each record's head) beyond the cap, each delete leaving a
tombstone as ``DELETE_SCRIPT`` does; or, under the refuse policy, stores nothing and
answers -2. Scripts run one at a time, so logins of one user take turns. It needs the
records' names (:func:`key_template`: a ``KEY_FUNCTION`` that keeps the key).

A delete is a script that also writes a short-lived tombstone named with a nonce of the
call (:func:`tombstone_name`), so a delete re-sent after a lost reply still answers
"deleted" (:mod:`.redis`, "Retries").
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from . import KEY_NAMESPACE

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
SIGNATURE_TAIL = 43  # the record's signature (record._SIG_LEN): unique to one write

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


def sha(source: str) -> str:
    """The SHA-1 of a script's source, as ``EVALSHA`` names it."""
    digest = _SHAS.get(source)
    if digest is None:
        digest = _SHAS[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    return digest


def text(member: Any) -> str:
    """An index member (or a key) as Redis answers it, as ``str``."""
    return member.decode("ascii") if isinstance(member, bytes) else str(member)


def nonce() -> str:
    """A tombstone's nonce."""
    # Unique among the deletes of one key within TOMBSTONE_TTL, not secret: the module's
    # generator (reseeded in forked children) keeps deletes off the OS random source.
    return f"{random.getrandbits(64):016x}"  # noqa: S311


def tombstone_name(record_key: str, keyslot: Callable[[str], int] | None) -> str | None:
    """A delete's tombstone name in ``record_key``'s slot by ``keyslot`` (a cluster
    client's; ``None``: one server, any name will do), or ``None`` when there is none."""
    name = f"{record_key}:gone:{nonce()}"
    if keyslot is None:
        return name
    slot = keyslot(record_key)
    for candidate in (name, "{" + record_key + "}" + name[len(record_key) :]):
        if keyslot(candidate) == slot:
            return candidate
    return None


def staging_name(record_key: str, value: memoryview) -> str:
    """The key a save stages its record under: named after the new record's signature,
    so unique to this write."""
    return f"{record_key}:next:{bytes(value[-16:]).decode('ascii')}"


def key_template(key: Callable[[str], str]) -> tuple[str, str] | None:
    """``(prefix, suffix)`` with ``key(k) == prefix + k + suffix`` for every store key,
    when the cache's key function puts the key in verbatim (Django's default does); a
    login's script then finds a member's record by name. ``None`` otherwise."""
    probes = ["a" * 64, "b" * 64, "0123456789abcdef" * 4]
    first = key(probes[0])
    at = first.rfind(probes[0])
    if at < 0:
        return None
    prefix, suffix = first[:at], first[at + 64 :]
    if any(key(probe) != prefix + probe + suffix for probe in probes):
        return None
    return prefix, suffix
