"""Profile of the hardened engines' hot path: read-modify-write of a 4 KiB session.

Cases ``profile/db-sqlite-wal`` (the db engine on SQLite with the recommended options)
and ``profile/cache-redis`` (the cache engine on django-redis). Each warms up, then
runs ``--profile-ops`` operations under cProfile. Written to ``--out``:
``profile-<case>-<time>.pstats`` (for ``python -m pstats`` or snakeviz) and ``.txt``
(the top entries by own time and by cumulative time); the top own-time entries are
printed and kept in the JSON.

``profile/cache-redis-think-time`` (:func:`think_time_case`) sets the hardened
read-modify-write on Redis beside the raw floor and beside the floor slowed by the
hardened engine's extra client time, to show what the distance to the floor is made of.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from importlib import import_module
from typing import Any

from common import median
from micro import EngineSide, Payload

CASES = {
    "db-sqlite-wal": ("default", None, "hardened_sessions.backends.db"),
    "cache-redis": (None, "redis", "hardened_sessions.backends.cache"),
}
NEEDS = {"cache-redis": "redis"}
PAYLOAD = 4096
TOP = 25


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/hardened_sessions/" in path:
        return "hardened_sessions/" + path.split("/hardened_sessions/", 1)[1]
    return path


# Where the time goes, by the file (or built-in) a function's own time is spent in.
AREAS = (
    ("hardened_sessions/", "hardened_sessions (own code)"),
    ("django/db/", "Django ORM and DB layer"),
    ("django/", "Django, other"),
    ("redis/", "redis-py (Python part)"),
    ("psycopg", "database driver"),
    ("sqlite3", "database driver"),
    ("SQLiteCursorWrapper", "database driver"),
    ("Cursor", "database driver"),
    ("socket", "socket I/O (incl. waiting)"),
    ("select", "socket I/O (incl. waiting)"),
    ("json/", "json"),
    ("_json", "json"),
    ("hmac", "HMAC / hashing"),
    ("hashlib", "HMAC / hashing"),
    ("_hashlib", "HMAC / hashing"),
    ("sha256", "HMAC / hashing"),
    ("base64", "base64"),
    ("binascii", "base64"),
    ("micro.py", "benchmark loop"),
)


def areas(stats: pstats.Stats) -> dict[str, float]:
    """Share (percent) of the total own time spent in each area."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt or 1.0  # type: ignore[attr-defined]
    shares: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        where = f"{filename} {func}"
        area = next((name for marker, name in AREAS if marker in where), "other")
        shares[area] = shares.get(area, 0.0) + 100 * tt / total
    return dict(sorted(shares.items(), key=lambda item: item[1], reverse=True))


def top_entries(stats: pstats.Stats, key: str, limit: int) -> list[dict[str, Any]]:
    entries = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        entries.append(
            {
                "function": f"{_short(filename)}:{line}({func})",
                "ncalls": nc,
                "tottime_s": tt,
                "cumtime_s": ct,
                "tottime_pct": 100 * tt / total if total else 0.0,
                "cumtime_pct": 100 * ct / total if total else 0.0,
            }
        )
    field = "tottime_s" if key == "tottime" else "cumtime_s"
    entries.sort(key=lambda e: e[field], reverse=True)
    return entries[:limit]


def profile_case(name: str, ops: int, out_stem: Any) -> dict[str, Any]:
    from django.conf import settings

    import bench_settings

    alias, cache, engine = CASES[name]
    if alias:
        bench_settings.ActiveAliasRouter.alias = alias
    if cache:
        settings.SESSION_CACHE_ALIAS = cache
    side = EngineSide(import_module(engine).SessionStore, Payload.make(PAYLOAD))
    side.prepare()
    side.rmw(max(20, ops // 10))  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    side.rmw(ops)
    profiler.disable()
    pstats_path = out_stem.with_suffix(".pstats")
    profiler.dump_stats(str(pstats_path))
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs()
    text.write(f"hardened read-modify-write, {name}, {PAYLOAD} B, {ops} operations\n")
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumulative").print_stats(TOP)
    txt_path = out_stem.with_suffix(".txt")
    txt_path.write_text(text.getvalue())
    full = pstats.Stats(str(pstats_path))
    total = full.total_tt  # type: ignore[attr-defined]
    return {
        "id": f"profile/{name}",
        "ops": ops,
        "payload": PAYLOAD,
        "total_s": total,
        "us_per_op_profiled": 1e6 * total / ops,
        "areas_pct": areas(full),
        "top_tottime": top_entries(full, "tottime", TOP),
        "top_cumtime": top_entries(full, "cumulative", TOP),
        "pstats": str(pstats_path),
        "text": str(txt_path),
    }


def think_time_case(redis_url: str, ops: int, rounds: int) -> dict[str, Any]:
    """How much of the hardened engine's distance to the raw floor is its client time.

    Three sides in alternating rounds: the hardened read-modify-write (cache engine,
    django-redis), the floor (redis-py GET + SET of bytes of the record's size), and
    the floor with as much busy time between its two commands as the hardened engine
    spends in the client beyond the floor (measured: process CPU time per operation).
    If the third side lands near the hardened one, the distance to the floor is the
    engine's Python work, not its I/O (which is the same two round trips).
    """
    from django.conf import settings

    from micro import TTL, RedisFloor, record_size

    settings.SESSION_CACHE_ALIAS = "redis"
    store_cls = import_module("hardened_sessions.backends.cache").SessionStore
    payload = Payload.make(PAYLOAD)
    hardened = EngineSide(store_cls, payload)
    hardened.prepare()
    floor = RedisFloor(redis_url, record_size(store_cls, payload))
    floor.prepare()

    def timed(run: Any, n: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        run(n)
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

    hardened.rmw(max(20, ops // 5))  # warm-up
    floor.rmw(max(20, ops // 5))
    cpu_hardened = median([timed(hardened.rmw, ops)[1] for _ in range(3)])
    cpu_floor = median([timed(floor.rmw, ops)[1] for _ in range(3)])
    think = max(0.0, cpu_hardened - cpu_floor)

    def floor_with_think(n: int) -> None:
        r, key, values = floor.r, floor.key, floor.values
        clock = time.perf_counter
        for i in range(n):
            r.get(key)
            until = clock() + think
            while clock() < until:
                pass
            r.set(key, values[i % len(values)], ex=TTL)

    sides = {"hardened": hardened.rmw, "floor": floor.rmw, "floor_with_think": floor_with_think}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            walls[name].append(timed(run, ops)[0])
    rates = {name: 1 / median(values) for name, values in walls.items()}
    return {
        "id": "profile/cache-redis-think-time",
        "payload": PAYLOAD,
        "ops_per_round": ops,
        "rounds": rounds,
        "client_cpu_us_per_op": {"hardened": 1e6 * cpu_hardened, "floor": 1e6 * cpu_floor},
        "think_us": 1e6 * think,
        "ops_per_s": rates,
        "floor_with_think_over_floor": rates["floor_with_think"] / rates["floor"],
        "hardened_over_floor": rates["hardened"] / rates["floor"],
        "hardened_over_floor_with_think": rates["hardened"] / rates["floor_with_think"],
    }


def section(run: Any, env: Any) -> None:
    results = []
    think_id = "profile/cache-redis-think-time"
    if run.selected(think_id):
        if env.has("redis"):
            ops = max(50, run.args.profile_ops // 3)
            think = think_time_case(env.redis_url, ops, 3 if run.args.quick else 7)
            results.append(think)
            rates = think["ops_per_s"]
            print(
                f"\n{think_id}: client CPU per {PAYLOAD} B read-modify-write: hardened "
                f"{think['client_cpu_us_per_op']['hardened']:.0f} µs, floor "
                f"{think['client_cpu_us_per_op']['floor']:.0f} µs. Ops/s: hardened "
                f"{rates['hardened']:,.0f}, floor {rates['floor']:,.0f}, floor with "
                f"{think['think_us']:.0f} µs of busy time between its commands "
                f"{rates['floor_with_think']:,.0f} ({think['floor_with_think_over_floor']:.2f}× "
                f"the floor; hardened ÷ it: {think['hardened_over_floor_with_think']:.2f})",
                flush=True,
            )
        else:
            run.skip(think_id, f"redis: {env.missing['redis']}")
    for name in CASES:
        case_id = f"profile/{name}"
        if not run.selected(case_id):
            continue
        need = NEEDS.get(name)
        if need and not env.has(need):
            run.skip(case_id, f"{need}: {env.missing[need]}")
            continue
        if not results:
            print(
                f"\n=== profile: hardened read-modify-write, {PAYLOAD} B, "
                f"{run.args.profile_ops} ops under cProfile ===",
                flush=True,
            )
        stem = run.args.out / f"profile-{name}-{run.started}"
        result = profile_case(name, run.args.profile_ops, stem)
        results.append(result)
        print(
            f"{case_id}: {result['us_per_op_profiled']:.0f} µs per operation under the "
            f"profiler; top by own time ({result['text']}):"
        )
        print(
            "  by area: "
            + ", ".join(
                f"{name} {pct:.0f}%" for name, pct in result["areas_pct"].items() if pct >= 1
            )
        )
        for e in result["top_tottime"][:12]:
            print(
                f"  {e['tottime_pct']:5.1f}%  {e['ncalls']:>7}  {e['tottime_s'] * 1e6 / result['ops']:8.1f} µs/op"
                f"  {e['function']}"
            )
    if results:
        run.results["sections"]["profile"] = results
