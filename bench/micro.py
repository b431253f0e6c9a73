"""Micro benchmarks: one operation on one session, in one process, sides in alternating rounds.

Operations (what a request does to its session, through ``SessionStore`` as the
middleware uses it):

``rmw``
    load + modify + save of an existing session (``s = Store(key); s["n"] = s.get("n", 0) + 1;
    s["blob"] = ...; s.save()``);
``create``
    a new session with data, saved (``s = Store(); s.update(data); s.save()``): the created
    sessions are deleted after each round, untimed;
``read``
    a read-only load (``Store(key).get("n")``).

Payloads: session data of 256 B, 4 KiB and 40 KiB as JSON. Every write stores a value
that differs from the one before (a pool of distinct blobs, taken in turn, and a
counter): SQLite does not write a page whose bytes did not change.

Each case times its sides (hardened, stock Django, the peer where there is one, and the
floor: the raw client doing the same I/O with bytes of the same size) in ``rounds``
rounds, the order of the sides rotating from round to round; a round runs each side
for about ``round_seconds`` (the number of operations comes from a warm-up run). The
figure of a side is the median of its rounds' ops/s; ratios are ratios of medians.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import median

SIZES = {"256B": 256, "4KiB": 4096, "40KiB": 40960}
OPERATIONS = ("rmw", "create", "read")
TTL = 14 * 24 * 3600
_BLOB_POOL = 8

# What a logged-in session typically holds, besides the bulk ("blob").
_AUTH = {
    "_auth_user_id": "1234",
    "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
    "_auth_user_hash": "0" * 64,
}


@dataclass
class Payload:
    """Session data of about ``size`` bytes of JSON, with distinct variants of the bulk."""

    size: int
    blobs: list[str]

    @classmethod
    def make(cls, size: int) -> Payload:
        import json

        base = len(json.dumps({**_AUTH, "n": 0, "blob": ""}, separators=(",", ":")))
        length = max(1, size - base)
        blobs = [secrets.token_urlsafe(length)[:length] for _ in range(_BLOB_POOL)]
        return cls(size, blobs)

    def data(self, i: int) -> dict[str, Any]:
        return {**_AUTH, "n": i, "blob": self.blobs[i % len(self.blobs)]}


@dataclass
class Side:
    """One contestant of a case. ``run(n)`` is timed; ``after_round()`` is not."""

    name: str
    role: str  # hardened | stock | peer | floor
    run: Callable[[int], None]
    prepare: Callable[[], None] = lambda: None
    after_round: Callable[[], None] = lambda: None
    rounds: list[float] = field(default_factory=list)
    ops_per_round: int = 0

    @property
    def median(self) -> float:
        return median(self.rounds)


@dataclass
class Case:
    id: str
    group: str
    label: str
    op: str
    size: str
    sides: list[Side]
    activate: Callable[[], None]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # side name -> reason
    record_bytes: int | None = None

    def ratios(self) -> dict[str, float]:
        hardened = next((s for s in self.sides if s.role == "hardened"), None)
        out: dict[str, float] = {}
        if hardened is None:
            return out
        for side in self.sides:
            if side.role != "hardened" and side.rounds:
                out[f"hardened/{side.role}"] = hardened.median / side.median
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "store": self.label,
            "op": self.op,
            "payload": self.size,
            "record_bytes": self.record_bytes,
            "sides": [
                {
                    "name": s.name,
                    "role": s.role,
                    "ops_per_round": s.ops_per_round,
                    "rounds_ops_per_s": s.rounds,
                    "median_ops_per_s": s.median,
                }
                for s in self.sides
            ],
            "ratios_of_medians": self.ratios(),
            "skipped_sides": self.skipped,
            "notes": self.notes,
        }


# --- sides over a SessionStore class ----------------------------------------------------


class EngineSide:
    """The three operations through a session engine, as the middleware drives it."""

    def __init__(self, store_cls: Any, payload: Payload) -> None:
        self.cls = store_cls
        self.payload = payload
        self.key: str | None = None
        self.i = 0
        self.created: list[str] = []

    def prepare(self) -> None:
        s = self.cls()
        s.update(self.payload.data(0))
        s.save()
        self.key = s.session_key

    def rmw(self, n: int) -> None:
        cls, key, blobs = self.cls, self.key, self.payload.blobs
        i = self.i
        for _ in range(n):
            i += 1
            s = cls(key)
            s["n"] = s.get("n", 0) + 1
            s["blob"] = blobs[i % len(blobs)]
            s.save()
        self.i = i

    def create(self, n: int) -> None:
        cls, data, created = self.cls, self.payload.data, self.created
        i = self.i
        for _ in range(n):
            i += 1
            s = cls()
            s.update(data(i))
            s.save()
            created.append(s.session_key)
        self.i = i

    def read(self, n: int) -> None:
        cls, key = self.cls, self.key
        for _ in range(n):
            cls(key).get("n")

    def delete_created(self) -> None:
        for key in self.created:
            self.cls(key).delete(key)
        self.created.clear()


def engine_side(name: str, role: str, store_cls: Any, payload: Payload, op: str) -> Side:
    e = EngineSide(store_cls, payload)
    after = e.delete_created if op == "create" else (lambda: None)
    prepare = e.prepare if op in ("rmw", "read") else (lambda: None)
    return Side(name, role, getattr(e, op), prepare=prepare, after_round=after)


def record_size(store_cls: Any, payload: Payload) -> int:
    """Bytes of the hardened record of this payload (what the floor writes)."""
    s = store_cls()
    s.update(payload.data(0))
    s.save()
    size = len(s.record.payload) + 48  # b"hs1:" + payload + b"." + 43-char signature
    s.delete()
    return size


def _values(size: int) -> list[bytes]:
    return [secrets.token_bytes(size) for _ in range(_BLOB_POOL)]


# --- floors: the raw clients ----------------------------------------------------------------


class RedisFloor:
    def __init__(self, url: str, size: int) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self.values = _values(size)
        self.key = f"hsbench-floor:{secrets.token_hex(16)}"
        self.i = 0
        self.created: list[str] = []

    def prepare(self) -> None:
        self.r.set(self.key, self.values[0], ex=TTL)

    def rmw(self, n: int) -> None:
        r, key, values, i = self.r, self.key, self.values, self.i
        for _ in range(n):
            i += 1
            r.get(key)
            r.set(key, values[i % len(values)], ex=TTL)
        self.i = i

    def create(self, n: int) -> None:
        r, values, created, i = self.r, self.values, self.created, self.i
        for _ in range(n):
            i += 1
            key = f"hsbench-floor:{secrets.token_hex(16)}"
            r.set(key, values[i % len(values)], ex=TTL, nx=True)
            created.append(key)
        self.i = i

    def read(self, n: int) -> None:
        r, key = self.r, self.key
        for _ in range(n):
            r.get(key)

    def delete_created(self) -> None:
        for start in range(0, len(self.created), 500):
            self.r.delete(*self.created[start : start + 500])
        self.created.clear()


class MemcachedFloor:
    def __init__(self, address: str, size: int) -> None:
        from pymemcache.client.base import Client

        host, _, port = address.rpartition(":")
        self.c = Client((host, int(port)), no_delay=True, default_noreply=False)
        self.values = _values(size)
        self.key = f"hsbench-floor:{secrets.token_hex(16)}"
        self.i = 0
        self.created: list[str] = []

    def prepare(self) -> None:
        self.c.set(self.key, self.values[0], expire=TTL)

    def rmw(self, n: int) -> None:
        c, key, values, i = self.c, self.key, self.values, self.i
        for _ in range(n):
            i += 1
            c.get(key)
            c.set(key, values[i % len(values)], expire=TTL)
        self.i = i

    def create(self, n: int) -> None:
        c, values, created, i = self.c, self.values, self.created, self.i
        for _ in range(n):
            i += 1
            key = f"hsbench-floor:{secrets.token_hex(16)}"
            c.add(key, values[i % len(values)], expire=TTL)
            created.append(key)
        self.i = i

    def read(self, n: int) -> None:
        c, key = self.c, self.key
        for _ in range(n):
            c.get(key)

    def delete_created(self) -> None:
        self.c.delete_many(self.created)
        self.created.clear()


_TABLE = "hardened_sessions_session"


class SQLFloor:
    """One SELECT and one UPDATE (or one INSERT) on the DB-API connection under Django's,
    in autocommit as Django leaves it, so the connection options are the engines'."""

    def __init__(self, alias: str, size: int, cache_url: str | None = None) -> None:
        from django.db import connections

        wrapper = connections[alias]
        wrapper.ensure_connection()
        self.vendor = wrapper.vendor
        self.conn = wrapper.connection
        self.values = _values(size)
        self.key = secrets.token_hex(32)
        self.i = 0
        self.created: list[str] = []
        mark = "?" if self.vendor == "sqlite" else "%s"
        if self.vendor == "sqlite":
            self.when: Any = "2099-01-01 00:00:00"
        else:
            from datetime import UTC, datetime

            self.when = datetime(2099, 1, 1, tzinfo=UTC)
        self.select = f"SELECT data, version FROM {_TABLE} WHERE key_hash = {mark}"
        self.update = (
            f"UPDATE {_TABLE} SET data = {mark}, expire_date = {mark}, version = version + 1 "
            f"WHERE key_hash = {mark}"
        )
        self.insert = (
            f"INSERT INTO {_TABLE} (key_hash, data, expire_date, created, last_activity, "
            f"user_id, user_agent, size, version) VALUES ({', '.join([mark] * 9)})"
        )
        self.delete = f"DELETE FROM {_TABLE} WHERE key_hash = {mark}"
        # The cached_db floor adds the cache's round trips (redis-py GET/SET).
        self.r: Any = None
        if cache_url:
            import redis

            self.r = redis.Redis.from_url(cache_url)

    def _row(self, key: str, value: bytes) -> list[Any]:
        return [key, value, self.when, self.when, self.when, "1234", "", len(value), 1]

    def _execute(self, sql: str, params: list[Any]) -> None:
        cur = self.conn.cursor()  # sqlite3's cursor is no context manager
        try:
            cur.execute(sql, params)
        finally:
            cur.close()

    def prepare(self) -> None:
        self._execute(self.insert, self._row(self.key, self.values[0]))
        if self.r is not None:
            self.r.set(self.key, self.values[0], ex=TTL)

    def rmw(self, n: int) -> None:
        select, update, key, values, when, r = (
            self.select,
            self.update,
            self.key,
            self.values,
            self.when,
            self.r,
        )
        i = self.i
        cur = self.conn.cursor()
        try:
            for _ in range(n):
                i += 1
                value = values[i % len(values)]
                if r is not None:
                    r.get(key)
                else:
                    cur.execute(select, [key])
                    cur.fetchone()
                cur.execute(update, [value, when, key])
                if r is not None:
                    r.set(key, value, ex=TTL)
        finally:
            cur.close()
        self.i = i

    def create(self, n: int) -> None:
        insert, values, created, r = self.insert, self.values, self.created, self.r
        i = self.i
        cur = self.conn.cursor()
        try:
            for _ in range(n):
                i += 1
                key = secrets.token_hex(32)
                value = values[i % len(values)]
                cur.execute(insert, self._row(key, value))
                if r is not None:
                    r.set(key, value, ex=TTL)
                created.append(key)
        finally:
            cur.close()
        self.i = i

    def read(self, n: int) -> None:
        select, key, r = self.select, self.key, self.r
        cur = self.conn.cursor()
        try:
            for _ in range(n):
                if r is not None:
                    r.get(key)
                else:
                    cur.execute(select, [key])
                    cur.fetchone()
        finally:
            cur.close()

    def delete_created(self) -> None:
        for key in self.created:
            self._execute(self.delete, [key])
        if self.r is not None and self.created:
            self.r.delete(*self.created)
        self.created.clear()


def floor_side(name: str, floor: Any, op: str) -> Side:
    after = floor.delete_created if op == "create" else (lambda: None)
    prepare = floor.prepare if op in ("rmw", "read") else (lambda: None)
    return Side(name, "floor", getattr(floor, op), prepare=prepare, after_round=after)


# --- the cases ------------------------------------------------------------------------------


def _activate(alias: str | None = None, cache: str | None = None) -> Callable[[], None]:
    def activate() -> None:
        from django.conf import settings

        import bench_settings

        if alias is not None:
            bench_settings.ActiveAliasRouter.alias = alias
        if cache is not None:
            settings.SESSION_CACHE_ALIAS = cache

    return activate


@dataclass
class Group:
    key: str
    label: str
    needs: tuple[str, ...]
    alias: str | None
    cache: str | None
    hardened: str
    stock: str
    notes: tuple[str, ...] = ()


GROUPS = [
    Group(
        "db-sqlite-default",
        "db, SQLite (default options)",
        (),
        "sqlite_plain",
        None,
        "hardened_sessions.backends.db",
        "django.contrib.sessions.backends.db",
        ("Both sides on an SQLite file with Django's default connection options.",),
    ),
    Group(
        "db-sqlite-wal",
        "db, SQLite (WAL options)",
        (),
        "default",
        None,
        "hardened_sessions.backends.db",
        "django.contrib.sessions.backends.db",
        (
            "Both sides on an SQLite file with the recommended OPTIONS: journal_mode=WAL, "
            "synchronous=NORMAL, transaction_mode=IMMEDIATE, timeout=20.",
        ),
    ),
    Group(
        "db-postgresql",
        "db, PostgreSQL",
        ("postgresql",),
        "postgresql",
        None,
        "hardened_sessions.backends.db",
        "django.contrib.sessions.backends.db",
    ),
    Group(
        "cache-redis",
        "cache, Redis (django-redis)",
        ("redis",),
        None,
        "redis",
        "hardened_sessions.backends.cache",
        "django.contrib.sessions.backends.cache",
    ),
    Group(
        "cache-redis-django",
        "cache, Redis (Django's RedisCache)",
        ("redis",),
        None,
        "redis_django",
        "hardened_sessions.backends.cache",
        "django.contrib.sessions.backends.cache",
    ),
    Group(
        "cache-memcached",
        "cache, memcached (PyMemcacheCache)",
        ("memcached",),
        None,
        "memcached",
        "hardened_sessions.backends.cache",
        "django.contrib.sessions.backends.cache",
        (
            "Django's PyMemcacheCache is given OPTIONS {'no_delay': True}, the setting the "
            "hardened engine's own client always has, so both sides connect alike.",
        ),
    ),
    Group(
        "cached_db-redis-postgresql",
        "cached_db, Redis + PostgreSQL",
        ("redis", "postgresql"),
        "postgresql",
        "redis",
        "hardened_sessions.backends.cached_db",
        "django.contrib.sessions.backends.cached_db",
    ),
]


# What the floor does, per kind of store and operation.
FLOOR_NAMES = {
    "db": {"rmw": "DB-API SELECT+UPDATE", "create": "DB-API INSERT", "read": "DB-API SELECT"},
    "cache-redis": {"rmw": "redis-py GET+SET", "create": "redis-py SET NX", "read": "redis-py GET"},
    "cache-redis-django": {
        "rmw": "redis-py GET+SET",
        "create": "redis-py SET NX",
        "read": "redis-py GET",
    },
    "cache-memcached": {
        "rmw": "pymemcache get+set (no_delay)",
        "create": "pymemcache add (no_delay)",
        "read": "pymemcache get (no_delay)",
    },
    "cached_db-redis-postgresql": {
        "rmw": "redis-py GET, UPDATE, redis-py SET",
        "create": "INSERT, redis-py SET",
        "read": "redis-py GET",
    },
}


def _peer_class() -> tuple[Any, str | None]:
    """django-redis-sessions' SessionStore, or None and why not."""
    try:
        from redis_sessions.session import SessionStore
    except Exception as exc:  # an import-time failure of the peer is a finding, not a crash
        return None, f"django-redis-sessions cannot be imported: {exc.__class__.__name__}: {exc}"
    try:
        s = SessionStore()
        s["probe"] = 1
        s.save()
        ok = SessionStore(s.session_key).get("probe") == 1
        s.delete()
    except Exception as exc:
        return None, f"django-redis-sessions does not work here: {exc.__class__.__name__}: {exc}"
    if not ok:
        return None, "django-redis-sessions did not read back what it saved"
    return SessionStore, None


def build_cases(env: Any, selected: Callable[[str], bool]) -> tuple[list[Case], dict[str, str]]:
    """The cases whose id ``selected`` accepts; and the skipped ones with their reason."""
    from importlib import import_module

    cases: list[Case] = []
    skipped: dict[str, str] = {}
    peer_cls: Any = None
    peer_reason: str | None = None
    peer_checked = False
    for group in GROUPS:
        ids = [f"micro/{group.key}/{op}/{size}" for op in OPERATIONS for size in SIZES]
        wanted = [case_id for case_id in ids if selected(case_id)]
        if not wanted:
            continue
        missing = [kind for kind in group.needs if not env.has(kind)]
        if missing:
            for case_id in wanted:
                skipped[case_id] = "; ".join(f"{k}: {env.missing[k]}" for k in missing)
            continue
        activate = _activate(group.alias, group.cache)
        activate()
        hardened_cls = import_module(group.hardened).SessionStore
        stock_cls = import_module(group.stock).SessionStore
        if group.key == "cache-redis" and not peer_checked:
            peer_cls, peer_reason = _peer_class()
            peer_checked = True
        for case_id in wanted:
            _, _, op, size_name = case_id.split("/")
            payload = Payload.make(SIZES[size_name])
            activate()
            rec_bytes = record_size(hardened_cls, payload)
            sides = [
                engine_side("hardened", "hardened", hardened_cls, payload, op),
                engine_side("django", "stock", stock_cls, payload, op),
            ]
            side_skips: dict[str, str] = {}
            if group.key == "cache-redis":
                if peer_cls is not None:
                    sides.append(
                        engine_side("django-redis-sessions", "peer", peer_cls, payload, op)
                    )
                else:
                    side_skips["django-redis-sessions"] = peer_reason or "unavailable"
            floor: Any
            if group.key.startswith("cache-redis"):
                floor = RedisFloor(env.redis_url, rec_bytes)
            elif group.key == "cache-memcached":
                floor = MemcachedFloor(env.memcached_address, rec_bytes)
            elif group.key.startswith("cached_db"):
                floor = SQLFloor(group.alias or "default", rec_bytes, cache_url=env.redis_url)
            else:
                floor = SQLFloor(group.alias or "default", rec_bytes)
            kind = "db" if group.key.startswith("db-") else group.key
            floor_name = FLOOR_NAMES[kind][op]
            sides.append(floor_side(floor_name, floor, op))
            cases.append(
                Case(
                    case_id,
                    group.key,
                    group.label,
                    op,
                    size_name,
                    sides,
                    activate,
                    notes=list(group.notes),
                    skipped=side_skips,
                    record_bytes=rec_bytes,
                )
            )
    return cases, skipped


# --- running ----------------------------------------------------------------------------------


def _timed(side: Side, n: int) -> float:
    start = time.perf_counter()
    side.run(n)
    elapsed = time.perf_counter() - start
    side.after_round()
    return elapsed


def calibrate(
    side: Side, round_seconds: float, min_ops: int, max_ops: int, fixed: int | None = None
) -> int:
    """Warm the side up and return how many operations fill about ``round_seconds``
    (or ``fixed`` operations, after one warm-up run of as many)."""
    if fixed is not None:
        _timed(side, fixed)
        return fixed
    goal = max(round_seconds / 4, 0.002)
    n = 1
    while True:
        elapsed = _timed(side, n)
        if elapsed >= goal or n >= max_ops:
            break
        n = min(max_ops, n * 4 if elapsed < goal / 8 else n * 2)
    rate = n / max(elapsed, 1e-9)
    return max(min_ops, min(max_ops, int(rate * round_seconds)))


def run_case(
    case: Case,
    *,
    rounds: int,
    round_seconds: float,
    min_ops: int,
    max_ops: int,
    fixed_ops: int | None = None,
) -> None:
    case.activate()
    # What exists now is never garbage in the rounds: keep the collector from walking it
    # (a full collection before each round would cost more than a quick case).
    gc.collect()
    gc.freeze()
    for side in case.sides:
        side.prepare()
        side.ops_per_round = calibrate(side, round_seconds, min_ops, max_ops, fixed_ops)
    for r in range(rounds):
        k = r % len(case.sides)
        for side in case.sides[k:] + case.sides[:k]:
            n = side.ops_per_round
            side.rounds.append(n / _timed(side, n))
