"""Concurrency: N threads doing read-modify-write, each on its own session.

Stores: ``redis`` (the cache engines on django-redis) and ``postgresql`` (the db
engines). Thread counts: 1, 4 and 16 by default. Each round starts the threads, lets
each create its session (4 KiB of data) and warm up, releases them together, and lets
them loop for a fixed time; then the other side. The sides alternate from round to
round. Per round: operations per second over all threads, and the p50/p99 latency of
single operations; a side's figure is the median over its rounds.

Threads share one process (and its GIL), like the threads of one gunicorn gthread
worker: the figures show how the engine's own work and its locks scale there, not
what several processes would reach.
"""

from __future__ import annotations

import threading
import time
from importlib import import_module
from typing import Any

import common
from micro import Payload

STORES = {
    "redis": {
        "needs": "redis",
        "label": "cache, Redis (django-redis)",
        "alias": None,
        "cache": "redis",
        "hardened": "hardened_sessions.backends.cache",
        "stock": "django.contrib.sessions.backends.cache",
    },
    "postgresql": {
        "needs": "postgresql",
        "label": "db, PostgreSQL",
        "alias": "postgresql",
        "cache": None,
        "hardened": "hardened_sessions.backends.db",
        "stock": "django.contrib.sessions.backends.db",
    },
}
PAYLOAD = 4096


def _activate(spec: dict[str, Any]) -> None:
    from django.conf import settings

    import bench_settings

    if spec["alias"]:
        bench_settings.ActiveAliasRouter.alias = spec["alias"]
    if spec["cache"]:
        settings.SESSION_CACHE_ALIAS = spec["cache"]


def run_threads(store_cls: Any, threads: int, seconds: float, payload: Payload) -> dict[str, Any]:
    """One round: ``threads`` threads, each on its own session, for ``seconds``."""
    from django.db import connections

    state: dict[str, float] = {}
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    finished: list[float] = []
    lock = threading.Lock()

    def release() -> None:
        state["start"] = time.perf_counter()
        state["deadline"] = state["start"] + seconds

    barrier = threading.Barrier(threads, action=release)

    def worker(index: int) -> None:
        mine = latencies[index]
        key = None
        try:
            s = store_cls()
            s.update(payload.data(index))
            s.save()
            key = s.session_key
            blobs = payload.blobs
            for i in range(3):  # warm-up: connections, caches
                s = store_cls(key)
                s["n"] = s.get("n", 0) + 1
                s["blob"] = blobs[i % len(blobs)]
                s.save()
            barrier.wait()
            deadline = state["deadline"]
            i = 0
            clock = time.perf_counter
            while True:
                i += 1
                t0 = clock()
                s = store_cls(key)
                s["n"] = s.get("n", 0) + 1
                s["blob"] = blobs[i % len(blobs)]
                s.save()
                t1 = clock()
                mine.append(t1 - t0)
                if t1 >= deadline:
                    break
            with lock:
                finished.append(t1)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:
            with lock:
                errors.append(f"{exc.__class__.__name__}: {exc}")
            barrier.abort()
        finally:
            try:
                if key is not None:
                    store_cls(key).delete(key)
            finally:
                connections.close_all()  # this thread's connections only

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=seconds + 120)
    if errors or not finished:
        raise RuntimeError(f"{len(errors)} thread(s) failed: {errors[:3]}")
    ops = sum(len(x) for x in latencies)
    elapsed = max(finished) - state["start"]
    summary = common.latency_summary([v for x in latencies for v in x])
    return {"ops": ops, "seconds": elapsed, "ops_per_s": ops / elapsed, **summary}


def section(run: Any, env: Any) -> None:
    args = run.args
    payload = Payload.make(PAYLOAD)
    cases = []
    for store, spec in STORES.items():
        for threads in args.thread_counts:
            case_id = f"concurrency/{store}/{threads}"
            if not run.selected(case_id):
                continue
            if not env.has(spec["needs"]):
                run.skip(case_id, f"{spec['needs']}: {env.missing[spec['needs']]}")
                continue
            cases.append((case_id, spec, threads))
    if not cases:
        return
    print(
        f"\n=== concurrency: {len(cases)} cases, {args.concurrency_rounds} rounds of "
        f"{args.concurrency_seconds:g} s per side, read-modify-write of {PAYLOAD} B ===",
        flush=True,
    )
    results = []
    for case_id, spec, threads in cases:
        _activate(spec)
        sides = {
            "hardened": import_module(spec["hardened"]).SessionStore,
            "django": import_module(spec["stock"]).SessionStore,
        }
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        names = list(sides)
        try:
            for r in range(args.concurrency_rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    rounds[name].append(
                        run_threads(sides[name], threads, args.concurrency_seconds, payload)
                    )
        except Exception as exc:
            run.results["failed"][case_id] = f"{exc.__class__.__name__}: {exc}"
            print(f"  FAILED {case_id}: {exc}")
            continue
        entry: dict[str, Any] = {
            "id": case_id,
            "store": spec["label"],
            "threads": threads,
            "payload": PAYLOAD,
            "sides": {},
        }
        for name, per_round in rounds.items():
            entry["sides"][name] = {
                "rounds": per_round,
                "median_ops_per_s": common.median([x["ops_per_s"] for x in per_round]),
                "median_p50_ms": common.median([x["p50_ms"] for x in per_round]),
                "median_p99_ms": common.median([x["p99_ms"] for x in per_round]),
            }
        h, d = entry["sides"]["hardened"], entry["sides"]["django"]
        entry["ratio_ops_hardened/stock"] = h["median_ops_per_s"] / d["median_ops_per_s"]
        results.append(entry)
    run.results["sections"]["concurrency"] = results
    rows = []
    for e in results:
        h, d = e["sides"]["hardened"], e["sides"]["django"]
        rows.append(
            [
                e["store"],
                str(e["threads"]),
                common.human_rate(h["median_ops_per_s"]),
                f"{h['median_p50_ms']:.2f}",
                f"{h['median_p99_ms']:.2f}",
                common.human_rate(d["median_ops_per_s"]),
                f"{d['median_p50_ms']:.2f}",
                f"{d['median_p99_ms']:.2f}",
                f"{e['ratio_ops_hardened/stock']:.2f}",
            ]
        )
    header = [
        "store",
        "threads",
        "hardened/s",
        "p50 ms",
        "p99 ms",
        "django/s",
        "p50 ms",
        "p99 ms",
        "h/django",
    ]
    print(common.table(rows, header, right=set(range(1, 9))))
    print("  one process, threads on distinct sessions; medians over the rounds.")
