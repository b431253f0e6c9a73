#!/usr/bin/env python
"""Benchmarks of hardened_sessions against stock Django, a peer and the raw clients.

One command runs them all::

    python bench/run.py [--quick] [--only REGEX ...] [--out bench/results] [--strict]

(or ``tox -e bench -- [options]``). Sections, in this order, with the ids ``--only``
matches against (a regular expression, searched; repeat it to select more):

``micro/<store>/<op>/<payload>``
    one process, sides timed in alternating rounds: hardened vs Django's engine, the
    peer (django-redis-sessions, on Redis) and the floor (the raw client doing the same
    I/O with bytes of the same size); ops ``rmw``, ``create``, ``read``; payloads 256B,
    4KiB, 40KiB; stores ``db-sqlite-default``, ``db-sqlite-wal``, ``db-postgresql``,
    ``cache-redis`` (django-redis), ``cache-redis-django`` (Django's ``RedisCache``),
    ``cache-memcached``, ``cached_db-redis-postgresql``;
``concurrency/<store>/<threads>``
    1, 4 and 16 threads doing read-modify-write on distinct sessions (``redis``,
    ``postgresql``): ops/s and p50/p99 latency, hardened vs stock;
``e2e/<store>/<endpoint>``
    requests/s through the whole middleware stack of the testproject under gunicorn
    (2 sync workers on 127.0.0.1), hardened vs the same project on
    django.contrib.sessions, driven by a load generator in another process;
``profile/<store>``
    cProfile of the hardened read-modify-write at 4 KiB (``db-sqlite-wal``, ``cache-redis``);
    and ``profile/cache-redis-think-time``: the raw floor given as much busy time between
    its commands as the hardened engine spends in the client, next to both;
``clear_expired``
    ``clearexpiredsessions`` over 1,000,000 expired rows on PostgreSQL while 4 threads
    read and write live sessions (see ``bench/clear_expired.py``).

Redis and memcached are started here on free loopback ports, PostgreSQL gets a scratch
database (``--pg-database``, default ``hs_bench``) that is dropped at the end. Output:
tables on stdout, ``<out>/bench-<time>.json`` (machine, versions, command line, every
round), ``<out>/bench-<time>.png`` (chart), profiles in ``<out>/profile-*``.

``--quick`` runs everything with tiny counts (the smoke run the test suite uses): its
figures mean nothing. Timing on a busy machine is noise too: take final figures on a
quiet one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# An installed hardened_sessions comes first; a checkout that is not installed is served
# from the repository (the JSON output records which one ran).
sys.path.append(str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

SECTIONS = ("micro", "concurrency", "e2e", "profile", "clear_expired")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in seconds")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="REGEX",
        help="run only the cases whose id matches (e.g. 'micro/cache-redis', 'e2e', "
        "'clear_expired'); repeatable",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=common.BENCH_DIR / "results",
        help="output folder (default bench/results)",
    )
    p.add_argument("--rounds", type=int, help="micro: alternating rounds per case (default 7)")
    p.add_argument(
        "--round-seconds", type=float, help="micro: seconds per side per round (default 0.25)"
    )
    p.add_argument(
        "--threads", default="1,4,16", help="concurrency: thread counts (default 1,4,16)"
    )
    p.add_argument(
        "--concurrency-seconds", type=float, help="concurrency: seconds per round (default 1)"
    )
    p.add_argument("--concurrency-rounds", type=int, help="concurrency: rounds (default 3)")
    p.add_argument("--e2e-seconds", type=float, help="e2e: seconds per side per round (default 3)")
    p.add_argument("--e2e-rounds", type=int, help="e2e: rounds (default 3)")
    p.add_argument("--e2e-connections", type=int, help="e2e: concurrent clients (default 4)")
    p.add_argument("--e2e-payload", type=int, default=4096, help="e2e: bytes the write view stores")
    p.add_argument("--profile-ops", type=int, help="profile: operations profiled (default 3000)")
    p.add_argument("--rows", type=int, help="clear_expired: expired rows (default 1,000,000)")
    p.add_argument("--live", type=int, help="clear_expired: live sessions (default 10,000)")
    p.add_argument("--pg-database", default="hs_bench", help="scratch PostgreSQL database name")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a case was skipped or failed (the smoke test uses it)",
    )
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": (2, 7),
        "round_seconds": (0.01, 0.25),
        "concurrency_seconds": (0.1, 1.0),
        "concurrency_rounds": (1, 3),
        "e2e_seconds": (0.3, 3.0),
        "e2e_rounds": (1, 3),
        "e2e_connections": (2, 4),
        "profile_ops": (20, 3000),
        "rows": (2000, 1_000_000),
        "live": (100, 10_000),
    }
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    return args


class Run:
    """What one invocation collects: results per section, skips, failures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.patterns = [re.compile(p) for p in args.only]
        self.started = time.strftime("%Y%m%d-%H%M%S")
        self.results: dict[str, Any] = {
            "command": [sys.executable, *sys.argv],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "only")},
            "only": args.only,
            "machine": common.machine_info(),
            "caveats": [],
            "sections": {},
            "skipped": {},
            "failed": {},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        self.json_path = args.out / f"bench-{self.started}.json"

    def selected(self, case_id: str) -> bool:
        return not self.patterns or any(p.search(case_id) for p in self.patterns)

    def skip(self, case_id: str, reason: str) -> None:
        self.results["skipped"][case_id] = reason
        print(f"  skipped {case_id}: {reason}")

    def caveats(self) -> list[str]:
        out = []
        if self.args.quick:
            out.append("--quick: tiny counts, a smoke run; the figures mean nothing.")
        busy = common.busy_warning()
        if busy:
            out.append(busy)
        return out

    def save(self) -> None:
        self.results["machine"]["loadavg_end"] = list(os.getloadavg())
        self.results["caveats_at_end"] = self.caveats()
        common.write_json(self.json_path, self.results)


def server_version(kind: str, env: common.Environment) -> str | None:
    try:
        if kind == "redis" and env.redis_url:
            import redis

            client = redis.Redis.from_url(env.redis_url)
            try:
                return str(client.info("server")["redis_version"])
            finally:
                client.close()
        if kind == "memcached" and env.memcached_address:
            from pymemcache.client.base import Client

            host, _, port = env.memcached_address.rpartition(":")
            mc = Client((host, int(port)), no_delay=True)
            try:
                return str(mc.version().decode())
            finally:
                mc.close()
    except Exception as exc:  # a version we cannot read is recorded as such, not fatal
        return f"unknown ({exc.__class__.__name__})"
    return None


def heading(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def section_micro(run: Run, env: common.Environment) -> None:
    import micro

    args = run.args
    cases, skipped = micro.build_cases(env, run.selected)
    for case_id, reason in skipped.items():
        run.skip(case_id, reason)
    if not cases:
        return
    heading(
        f"micro: {len(cases)} cases, {args.rounds} rounds of ~{args.round_seconds:g} s per side"
    )
    from tqdm import tqdm

    done = []
    for case in tqdm(cases, desc="micro", unit="case", disable=None, leave=False):
        try:
            micro.run_case(
                case,
                rounds=args.rounds,
                round_seconds=args.round_seconds,
                min_ops=20,
                max_ops=200_000,
                fixed_ops=2 if args.quick else None,
            )
        except Exception:
            run.results["failed"][case.id] = traceback.format_exc()
            print(f"  FAILED {case.id}:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        for side, reason in case.skipped.items():
            run.results["skipped"].setdefault(f"{case.id}#{side}", reason)
        done.append(case)
    run.results["sections"]["micro"] = [c.as_json() for c in done]
    print(micro_table(done))
    notes = sorted({n for c in done for n in c.notes})
    side_skips = sorted({f"{s}: {r}" for c in done for s, r in c.skipped.items()})
    for note in notes:
        print(f"  note: {note}")
    for skip in side_skips:
        print(f"  left out: {skip}")
    kinds = sorted({"db" if c.group.startswith("db-") else c.group for c in done})
    for kind in kinds:
        names = micro.FLOOR_NAMES[kind]
        print(
            f"  floor, {kind}: rmw {names['rmw']}; create {names['create']}; read {names['read']} "
            "(bytes of the hardened record's size)"
        )


def micro_table(cases: list[Any]) -> str:
    rows = []
    for case in cases:
        by_role = {s.role: s for s in case.sides}
        ratios = case.ratios()

        def cell(role: str, by_role: dict[str, Any] = by_role) -> str:
            side = by_role.get(role)
            return common.human_rate(side.median) if side and side.rounds else "-"

        def ratio(role: str, ratios: dict[str, float] = ratios) -> str:
            value = ratios.get(f"hardened/{role}")
            return f"{value:.2f}" if value is not None else "-"

        rows.append(
            [
                case.label,
                case.op,
                case.size,
                cell("hardened"),
                cell("stock"),
                cell("peer"),
                cell("floor"),
                ratio("stock"),
                ratio("peer"),
                ratio("floor"),
            ]
        )
    header = [
        "store",
        "op",
        "data",
        "hardened/s",
        "django/s",
        "peer/s",
        "floor/s",
        "h/django",
        "h/peer",
        "h/floor",
    ]
    text = common.table(rows, header, right=set(range(3, 10)))
    return (
        text + "\n  ops/s: median of the rounds; ratios: hardened median / other median "
        "(>1: hardened faster). peer = django-redis-sessions; floor = the raw client, same I/O."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    run.results["caveats"] = run.caveats()
    for text in run.results["caveats"]:
        print(f"caveat: {text}")
    import clear_expired
    import concurrency
    import e2e
    import profile_hot_path

    sections: dict[str, Callable[[Run, common.Environment], None]] = {
        "micro": section_micro,
        "concurrency": concurrency.section,
        "e2e": e2e.section,
        "profile": profile_hot_path.section,
        "clear_expired": clear_expired.section,
    }
    started = time.monotonic()
    with common.environment(pg_database=args.pg_database) as env:
        for kind, reason in env.missing.items():
            print(f"unavailable: {kind}: {reason}")
        common.setup_django()
        aliases = ["default", "sqlite_plain"] + (["postgresql"] if env.has("postgresql") else [])
        common.migrate(aliases)
        run.results["servers"] = {
            "redis": env.redis_url,
            "redis_version": server_version("redis", env),
            "memcached": env.memcached_address,
            "memcached_version": server_version("memcached", env),
            "postgresql_version": env.postgres.server_version if env.postgres else None,
            "missing": env.missing,
        }
        for name in SECTIONS:
            if name not in sections:
                continue
            try:
                sections[name](run, env)
            except Exception:
                run.results["failed"][name] = traceback.format_exc()
                print(f"FAILED section {name}:\n{traceback.format_exc()}", file=sys.stderr)
            run.save()
    if not run.results["sections"] and not run.results["skipped"] and not run.results["failed"]:
        print(f"no case matched --only {' '.join(args.only)}", file=sys.stderr)
    run.results["elapsed_s"] = time.monotonic() - started
    run.save()
    if not args.no_chart and run.results["sections"]:
        try:
            import chart

            png = chart.draw(run.results, run.json_path.with_suffix(".png"))
            print(f"\nchart: {png}")
        except ImportError as exc:
            print(f"\nno chart: {exc}")
    print(f"results: {run.json_path}  ({run.results['elapsed_s']:.1f} s)")
    for text in run.caveats():
        print(f"caveat: {text}")
    problems = len(run.results["failed"]) + (len(run.results["skipped"]) if args.strict else 0)
    if run.results["failed"]:
        print(f"{len(run.results['failed'])} case(s) failed", file=sys.stderr)
    if args.strict and run.results["skipped"]:
        print(f"--strict: {len(run.results['skipped'])} case(s) skipped", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
