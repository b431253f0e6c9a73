#!/usr/bin/env python
"""What ``HARDENED_SESSIONS["METRICS"] = True`` costs: a 4 KiB read-modify-write.

    python bench/metrics_overhead.py [--rounds 15] [--round-seconds 1.0] [--size 4096]

On the db engine (SQLite, the recommended options) and the cache engine (Redis, a
server started for the run), each round times the same read-modify-write (load,
change two keys, save: ``bench/micro.py``'s ``rmw``) with the setting off and on, the
order alternating from round to round. Printed per engine: the median ops/s of each
side and the ratio of medians (on / off; 1.0 is no cost, 0.97 is 3% slower), and the
median CPU time of this process per operation (which waiting on a busy machine does
not inflate, as it does the wall-clock rate). Last, the metrics' own cost per
operation, timed around a no-op store access (best of 5 x 100,000), and the ratio it
implies at the measured rate: on a busy machine the wall-clock ratio of two sides
that differ by microseconds is mostly noise; this one is not. Needs
``prometheus_client`` (``pip install -e .[metrics]``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from micro import EngineSide, Payload  # noqa: E402

ENGINES = {
    "db (SQLite)": "hardened_sessions.backends.db",
    "cache (Redis)": "hardened_sessions.backends.cache",
}


def timed_round(side: EngineSide, n: int, metrics: bool) -> tuple[float, float]:
    """Ops/s of ``n`` read-modify-writes with the setting as given, and the CPU time
    this process spent per operation (microseconds)."""
    from django.test import override_settings

    with override_settings(HARDENED_SESSIONS={"METRICS": metrics}):
        gc.collect()
        cpu = time.process_time()
        start = time.perf_counter()
        side.rmw(n)
        wall = time.perf_counter() - start
        return n / wall, (time.process_time() - cpu) / n * 1e6


def access_overhead_us(store_cls: Any, calls: int = 100_000) -> float:
    """Microseconds ``metrics.timed`` adds to one store access (a no-op stands in for
    the store, so the figure is the metrics' own cost, free of the store's noise)."""
    from hardened_sessions import metrics

    engine = store_cls()

    def _read(key: str) -> None:
        return None

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            _read("k")
        direct = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(calls):
            metrics.timed(engine, _read, ("k",))
        best = min(best, (time.perf_counter() - start - direct) / calls * 1e6)
    return best


def run_engine(path: str, payload: Payload, rounds: int, round_seconds: float) -> dict[str, Any]:
    from importlib import import_module

    side = EngineSide(import_module(path).SessionStore, payload)
    side.prepare()
    warm = max(50, int(round_seconds * timed_round(side, 200, False)[0]))
    timed_round(side, warm // 4, True)  # registers the metrics and warms their labels
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for metrics in order:
            rate, cpu_us = timed_round(side, warm, metrics)
            rates[metrics].append(rate)
            cpu[metrics].append(cpu_us)
    off, on = common.median(rates[False]), common.median(rates[True])
    cpu_off, cpu_on = common.median(cpu[False]), common.median(cpu[True])
    # A read-modify-write makes two store accesses (read, write_update).
    per_op = 2 * access_overhead_us(side.cls)
    return {
        "added_us": per_op,
        "estimated_ratio": 1 / (1 + per_op / (1e6 / off)),
        "ops_per_round": warm,
        "off": off,
        "on": on,
        "ratio": on / off,
        "cpu_off": cpu_off,
        "cpu_on": cpu_on,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--round-seconds", type=float, default=1.0)
    p.add_argument("--size", type=int, default=4096)
    args = p.parse_args(argv)
    with common.environment(memcached=False, postgres=False, pg_database="unused") as env:
        if not env.has("redis"):
            print(f"redis unavailable: {env.missing['redis']}; the cache engine is skipped")
        common.setup_django()
        common.migrate(["default"])
        from django.conf import settings

        settings.SESSION_CACHE_ALIAS = "redis"
        payload = Payload.make(args.size)
        warning = common.busy_warning()
        if warning:
            print(warning)
        rows = []
        for name, path in ENGINES.items():
            if "Redis" in name and not env.has("redis"):
                continue
            result = run_engine(path, payload, args.rounds, args.round_seconds)
            rows.append(
                [
                    name,
                    common.human_rate(result["off"]),
                    common.human_rate(result["on"]),
                    f"{result['ratio']:.3f}",
                    f"{result['cpu_off']:.0f}",
                    f"{result['cpu_on']:.0f}",
                    f"{result['cpu_on'] - result['cpu_off']:+.1f}",
                    f"{result['added_us']:.1f}",
                    f"{result['estimated_ratio']:.3f}",
                ]
            )
        print(
            f"{args.size}-byte read-modify-write, {args.rounds} alternating rounds, "
            "median ops/s; ratio = on / off; CPU µs per operation of this process"
        )
        header = ["engine", "METRICS off", "METRICS on", "ratio", "CPU off", "CPU on", "CPU +"]
        header += ["µs added", "est. ratio"]
        print(common.table(rows, header, set(range(1, 9))))
        print(
            "µs added: what the metrics add to one operation (two store accesses), timed "
            "around a no-op; est. ratio: the METRICS-off rate slowed by exactly that."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
