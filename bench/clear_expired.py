#!/usr/bin/env python
"""``clearexpiredsessions`` on a large table while live sessions are being served.

    python bench/clear_expired.py [--rows 1000000] [--live 10000] [--threads 4] [--out DIR]

(also the ``clear_expired`` section of ``bench/run.py``). On a scratch PostgreSQL
database (``--pg-database``, default ``hs_bench``, dropped at the end):

1. ``--rows`` expired rows are inserted with one ``INSERT … SELECT generate_series``
   (dummy records: the command only looks at ``expire_date``), then ``--live`` live
   sessions are created through the hardened db engine;
2. ``--threads`` threads load random live sessions, and save half of them changed,
   for ``--baseline-seconds`` (the latency without the sweep);
3. ``manage.py clearexpiredsessions`` runs (``call_command``, in a separate process
   as a cron job would, or in this one with ``--in-process``) while the load goes on;
4. printed: the rows deleted and the time, the load's p50/p99/max latency before and
   during the sweep, and whether the p99 during it stayed under ``--target-p99-ms``
   (50 ms); every live session must still be there, no expired one may be left.

A JSON file with these figures goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# An installed hardened_sessions comes first; a checkout that is not installed is served
# from the repository (the JSON output records which one ran).
sys.path.append(str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

TABLE = "hardened_sessions_session"
LIVE_PAYLOAD = 1024


def insert_expired(rows: int) -> float:
    from django.db import connections

    started = time.perf_counter()
    with connections["postgresql"].cursor() as cur:
        cur.execute(f"TRUNCATE {TABLE}")
        cur.execute(
            f"""
            INSERT INTO {TABLE} (key_hash, data, expire_date, created, last_activity,
                                 user_id, ip_address, user_agent, size, version)
            SELECT encode(sha256(convert_to('expired-' || g, 'UTF8')), 'hex'),
                   '\\x6873313a'::bytea,
                   now() - interval '1 hour' - g * interval '1 second',
                   now() - interval '30 days',
                   now() - interval '30 days',
                   NULL, NULL, '', 4, 1
            FROM generate_series(1, %s) AS g
            """,
            [rows],
        )
        cur.execute(f"ANALYZE {TABLE}")
    return time.perf_counter() - started


def create_live(count: int, threads: int) -> list[str]:
    from django.db import connections

    from hardened_sessions.backends.db import SessionStore
    from micro import Payload

    payload = Payload.make(LIVE_PAYLOAD)
    keys: list[str] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(share: int, offset: int) -> None:
        mine = []
        try:
            for i in range(share):
                s = SessionStore()
                s.update(payload.data(offset + i))
                s.save()
                mine.append(s.session_key)
        except BaseException as exc:  # re-raised below, in the main thread
            failures.append(exc)
        finally:
            connections.close_all()
            with lock:
                keys.extend(mine)

    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    offsets = [sum(shares[:i]) for i in range(threads)]
    pool = [threading.Thread(target=work, args=(shares[i], offsets[i])) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise failures[0]
    return keys


class Load:
    """``threads`` threads reading random live sessions and saving half of them changed."""

    def __init__(self, keys: list[str], threads: int) -> None:
        from micro import Payload

        self.keys = keys
        self.threads = threads
        self.blobs = Payload.make(LIVE_PAYLOAD).blobs
        self.samples: list[tuple[float, float]] = []  # (start, duration)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(threads)
        ]

    def _work(self, index: int) -> None:
        from django.db import connections

        from hardened_sessions.backends.db import SessionStore

        rng = random.Random(index)
        mine: list[tuple[float, float]] = []
        clock = time.perf_counter
        try:
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                t0 = clock()
                s = SessionStore(key)
                n = s.get("n", 0)
                if rng.random() < 0.5:
                    s["n"] = n + 1
                    s["blob"] = self.blobs[n % len(self.blobs)]
                    s.save()
                mine.append((t0, clock() - t0))
        except Exception as exc:
            with self._lock:
                self.errors.append(f"{exc.__class__.__name__}: {exc}")
        finally:
            connections.close_all()
            with self._lock:
                self.samples.extend(mine)

    def start(self) -> None:
        for t in self._pool:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._pool:
            t.join(timeout=120)

    def between(self, start: float, end: float) -> list[float]:
        return [d for t0, d in self.samples if start <= t0 < end]


def run_command(batch_size: int, in_process: bool) -> dict[str, Any]:
    """``clearexpiredsessions`` through ``call_command``; its own timing and output."""
    if in_process:
        return _call_command(batch_size)
    env = dict(os.environ)
    env["HS_BENCH_ACTIVE_ALIAS"] = "postgresql"
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--run-command",
            "--batch-size",
            str(batch_size),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"clearexpiredsessions failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _call_command(batch_size: int) -> dict[str, Any]:
    import io

    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command("clearexpiredsessions", batch_size=batch_size, no_progress=True, stdout=out)
    return {"seconds": time.perf_counter() - started, "output": out.getvalue().strip()}


def count_rows() -> tuple[int, int]:
    """(expired, live) rows in the table."""
    from django.db import connections

    with connections["postgresql"].cursor() as cur:
        cur.execute(
            f"SELECT count(*) FILTER (WHERE expire_date < now()), "
            f"count(*) FILTER (WHERE expire_date >= now()) FROM {TABLE}"
        )
        expired, live = cur.fetchone()
    return int(expired), int(live)


def measure(
    *,
    rows: int,
    live: int,
    threads: int,
    baseline_seconds: float,
    batch_size: int,
    in_process: bool,
    target_p99_ms: float,
) -> dict[str, Any]:
    import bench_settings

    bench_settings.ActiveAliasRouter.alias = "postgresql"
    insert_seconds = insert_expired(rows)
    started = time.perf_counter()
    keys = create_live(live, threads)
    live_seconds = time.perf_counter() - started
    expired_before, live_before = count_rows()
    load = Load(keys, threads)
    load.start()
    time.sleep(baseline_seconds)
    clear_start = time.perf_counter()
    command = run_command(batch_size, in_process)
    clear_end = time.perf_counter()
    time.sleep(min(0.5, baseline_seconds))
    load.stop()
    expired_after, live_after = count_rows()
    baseline = common.latency_summary(load.between(0.0, clear_start))
    during = common.latency_summary(load.between(clear_start, clear_end))
    return {
        "rows": rows,
        "live": live,
        "threads": threads,
        "batch_size": batch_size,
        "command_process": "in-process" if in_process else "separate process",
        "insert_expired_s": insert_seconds,
        "create_live_s": live_seconds,
        "expired_before": expired_before,
        "expired_after": expired_after,
        "live_before": live_before,
        "live_after": live_after,
        "clear_wall_s": clear_end - clear_start,
        "clear_command_s": command["seconds"],
        "command_output": command["output"],
        "load_baseline": baseline,
        "load_during_clear": during,
        "load_errors": load.errors,
        "target_p99_ms": target_p99_ms,
        "target_met": during["p99_ms"] < target_p99_ms,
        "complete": expired_after == 0 and live_after == live_before == live,
    }


def report(result: dict[str, Any]) -> str:
    b, d = result["load_baseline"], result["load_during_clear"]
    verdict = "met" if result["target_met"] else "MISSED"
    lines = [
        f"expired rows: {result['expired_before']:,} inserted in {result['insert_expired_s']:.1f} s; "
        f"live sessions: {result['live']:,} (created in {result['create_live_s']:.1f} s)",
        f"clearexpiredsessions ({result['command_process']}, batch {result['batch_size']}): "
        f"{result['clear_command_s']:.2f} s "
        f"({result['expired_before'] / max(result['clear_command_s'], 1e-9):,.0f} rows/s); "
        f"left: {result['expired_after']} expired, {result['live_after']:,} live",
        f"load, {result['threads']} threads, before: {b['count']:,} ops, p50 {b['p50_ms']:.2f} ms, "
        f"p99 {b['p99_ms']:.2f} ms, max {b['max_ms']:.1f} ms",
        f"load, during the sweep: {d['count']:,} ops, p50 {d['p50_ms']:.2f} ms, "
        f"p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.1f} ms "
        f"(target p99 < {result['target_p99_ms']:g} ms: {verdict})",
    ]
    if result["load_errors"]:
        lines.append(f"load errors: {result['load_errors'][:3]}")
    if not result["complete"]:
        lines.append("INCOMPLETE: expired rows left or live sessions lost")
    return "\n".join(lines)


def section(run: Any, env: Any) -> None:
    """The ``clear_expired`` section of ``bench/run.py``."""
    if not run.selected("clear_expired"):
        return
    if not env.has("postgresql"):
        run.skip("clear_expired", f"postgresql: {env.missing['postgresql']}")
        return
    args = run.args
    print(
        f"\n=== clear_expired: {args.rows:,} expired rows, {args.live:,} live sessions, "
        "4 threads of load ===",
        flush=True,
    )
    result = measure(
        rows=args.rows,
        live=args.live,
        threads=4,
        baseline_seconds=0.3 if args.quick else 3.0,
        batch_size=1000,
        in_process=False,
        target_p99_ms=50.0,
    )
    run.results["sections"]["clear_expired"] = result
    print(report(result))
    if not result["complete"] or result["load_errors"]:
        run.results["failed"]["clear_expired"] = "expired rows left, live sessions lost or errors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--live", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--baseline-seconds", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--target-p99-ms", type=float, default=50.0)
    p.add_argument("--in-process", action="store_true", help="run the command in this process")
    p.add_argument("--pg-database", default="hs_bench")
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results")
    p.add_argument("--run-command", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_command:
        # The separate process of step 3: settings and servers come from the parent.
        common.setup_django()
        print(json.dumps(_call_command(args.batch_size)))
        return 0
    with common.environment(redis=False, memcached=False, pg_database=args.pg_database) as env:
        if not env.has("postgresql"):
            print(f"PostgreSQL is needed: {env.missing['postgresql']}", file=sys.stderr)
            return 2
        common.setup_django()
        common.migrate(["postgresql"])
        result = measure(
            rows=args.rows,
            live=args.live,
            threads=args.threads,
            baseline_seconds=args.baseline_seconds,
            batch_size=args.batch_size,
            in_process=args.in_process,
            target_p99_ms=args.target_p99_ms,
        )
    print(report(result))
    path = args.out / f"clear_expired-{time.strftime('%Y%m%d-%H%M%S')}.json"
    common.write_json(
        path,
        {
            "command": [sys.executable, *sys.argv],
            "machine": common.machine_info(),
            "caveat": common.busy_warning(),
            "result": result,
        },
    )
    print(f"results: {path}")
    return 0 if result["complete"] and not result["load_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
