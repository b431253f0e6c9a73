#!/usr/bin/env python
"""Two code trees of hardened_sessions, timed against each other in the same run.

    git worktree add /tmp/hs-prev <commit>        # the other revision, beside this one
    python bench/compare_revisions.py --a . --b /tmp/hs-prev [--rounds 7] [--only e2e]
    git worktree remove /tmp/hs-prev

Both trees run on this interpreter and its installed packages (Django, redis-py,
django-redis, gunicorn): only the package's code differs. Each side puts its tree first
on ``PYTHONPATH``, ahead of an installed (or editable) hardened_sessions. Redis is
started here on a free loopback port; each tree gets a database number of its own.

``micro/<cache>/<op>``
    4 KiB sessions through ``hardened_sessions.backends.cache.SessionStore`` on
    django-redis (``django-redis``) and Django's ``RedisCache`` (``django``), ops ``read``
    (a load) and ``rmw`` (load, change two keys, save: ``micro.py``'s operations). One
    worker process per tree (this script with ``--worker``) does the operations it is
    asked for; each round asks both, the order alternating from round to round.
``e2e/<store>/<endpoint>``
    requests/s through the whole middleware stack, as ``e2e.py`` measures it: one
    gunicorn server per tree (2 sync workers, variant ``hardened`` of
    ``bench/e2e_settings.py``), stores ``redis`` (the cache engine on django-redis) and
    ``sqlite``, endpoints ``read`` and ``write``; ``loadgen.py`` drives one server at a
    time, the order alternating from round to round. Each server runs its tree's own
    ``testproject`` and e2e settings, or with ``--project TREE`` both run that tree's
    (then only the package differs; the project's middleware and settings change
    between revisions too).

Printed per case: the median of each side's rounds and the ratio of medians A / B
(above 1: tree A faster), the median CPU time per operation (micro: the worker's own;
e2e: gunicorn's master and workers, per request, from /proc) and its ratio A / B (below
1: tree A cheaper), and the load average during the rounds. On a machine that runs other
work too, the ratios are what to read: both sides meet the same load, round after
round; the CPU time per operation moves less with the load than the rate does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

CACHES = {
    "django-redis": "django_redis.cache.RedisCache",
    "django": "django.core.cache.backends.redis.RedisCache",
}
OPS = ("read", "rmw")
E2E_STORES = ("redis", "sqlite")
E2E_ENDPOINTS = {"read": "/bench/read/", "write": "/bench/write/"}


# --- the worker: one tree's SessionStore, driven over stdin/stdout ------------------------


def worker(redis_url: str, size: int) -> None:
    """Answers ``{"cache", "op", "n"}`` lines with ``{"seconds", "cpu", "origin"}``."""
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="compare-revisions-" + "x" * 40,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "hardened_sessions",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            **{
                name: {"BACKEND": backend, "LOCATION": redis_url, "KEY_PREFIX": f"cmp-{name}"}
                for name, backend in CACHES.items()
            },
        },
        SESSION_ENGINE="hardened_sessions.backends.cache",
        SESSION_CACHE_ALIAS="django-redis",
        HARDENED_SESSIONS={},
        USE_TZ=True,
    )
    django.setup()
    import gc

    import hardened_sessions
    from hardened_sessions.backends.cache import SessionStore
    from micro import EngineSide, Payload

    payload = Payload.make(size)
    sides: dict[tuple[str, str], EngineSide] = {}
    origin = str(Path(hardened_sessions.__file__).resolve().parent.parent)
    print(json.dumps({"ready": True, "origin": origin}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        settings.SESSION_CACHE_ALIAS = request["cache"]
        key = (request["cache"], request["op"])
        side = sides.get(key)
        if side is None:
            side = sides[key] = EngineSide(SessionStore, payload)
            side.prepare()
        run: Callable[[int], None] = getattr(side, request["op"])
        gc.collect()
        cpu, start = time.process_time(), time.perf_counter()
        run(request["n"])
        seconds = time.perf_counter() - start
        print(
            json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "origin": origin}),
            flush=True,
        )


class Worker:
    def __init__(self, tree: Path, redis_url: str, size: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(BENCH)])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("DJANGO_SETTINGS_MODULE", None)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", redis_url]
        command += ["--size", str(size)]
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(tree),
            text=True,
        )
        hello = self._read()
        self.origin = hello["origin"]
        if Path(self.origin).resolve() != tree.resolve():
            raise RuntimeError(
                f"the worker for {tree} imported hardened_sessions from {self.origin}"
            )

    def _read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with status {self.popen.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, cache: str, op: str, n: int) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps({"cache": cache, "op": op, "n": n}) + "\n")
        self.popen.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


# --- the run ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def micro_section(
    args: argparse.Namespace,
    trees: dict[str, Path],
    redis_url: str,
    selected: Callable[[str], bool],
) -> list[dict[str, Any]]:
    cases = [(c, o) for c in CACHES for o in OPS if selected(f"micro/{c}/{o}")]
    if not cases:
        return []
    base = redis_url.rsplit("/", 1)[0]
    workers = {
        name: Worker(tree, f"{base}/{i + 1}", args.size)
        for i, (name, tree) in enumerate(trees.items())
    }
    results = []
    try:
        for cache, op in cases:
            counts = {}
            for name, w in workers.items():
                w.run(cache, op, 50)  # warm-up; then an operation count for ~round_seconds
                probe = w.run(cache, op, 200)
                counts[name] = max(20, int(200 * args.round_seconds / probe["seconds"]))
            n = min(counts.values())
            rates: dict[str, list[float]] = {name: [] for name in workers}
            cpu: dict[str, list[float]] = {name: [] for name in workers}
            loads = []
            for r in range(args.rounds):
                order = list(workers) if r % 2 == 0 else list(workers)[::-1]
                for name in order:
                    result = workers[name].run(cache, op, n)
                    rates[name].append(n / result["seconds"])
                    cpu[name].append(result["cpu"] / n * 1e6)
                loads.append(os.getloadavg()[0])
            entry = {
                "id": f"micro/{cache}/{op}",
                "ops_per_round": n,
                "ops_per_s": rates,
                "cpu_us_per_op": cpu,
                "median_ops_per_s": {k: median(v) for k, v in rates.items()},
                "median_cpu_us_per_op": {k: median(v) for k, v in cpu.items()},
                "loadavg_1min_per_round": loads,
            }
            entry["ratio_a/b"] = entry["median_ops_per_s"]["A"] / entry["median_ops_per_s"]["B"]
            c = entry["median_cpu_us_per_op"]
            entry["cpu_ratio_a/b"] = c["A"] / c["B"]
            results.append(entry)
            print(
                f"  {entry['id']:28s} A {entry['median_ops_per_s']['A']:8.0f}/s "
                f"({entry['median_cpu_us_per_op']['A']:6.1f} us CPU)  "
                f"B {entry['median_ops_per_s']['B']:8.0f}/s "
                f"({entry['median_cpu_us_per_op']['B']:6.1f} us CPU)  "
                f"A/B {entry['ratio_a/b']:.3f}, CPU A/B {entry['cpu_ratio_a/b']:.3f}  "
                f"load {min(loads):.2f}-{max(loads):.2f}",
                flush=True,
            )
    finally:
        for w in workers.values():
            w.stop()
    return results


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children (gunicorn's
    workers), read from /proc; 0.0 where there is no /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, ..., utime (14th field) and stime (15th).
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def start_e2e_server(
    name: str,
    tree: Path,
    store: str,
    redis_url: str,
    workdir: Path,
    payload: int,
    project: Path | None = None,
) -> Any:
    """gunicorn serving ``tree``'s package with ``project``'s testproject and e2e
    settings (default: ``tree``'s own)."""
    import common

    project = project or tree

    sqlite_file = workdir / f"e2e-{name}-{store}.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HS_DEMO_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "e2e_settings",
            "HS_BENCH_E2E_VARIANT": "hardened",
            "HS_BENCH_E2E_STORE": store,
            "HS_BENCH_E2E_SQLITE": str(sqlite_file),
            "HS_BENCH_E2E_PAYLOAD": str(payload),
            "HS_BENCH_REDIS_URL": redis_url,
            "HS_DEMO_DEBUG": "0",
            # The tree's own project, settings and package, ahead of an installed one.
            "PYTHONPATH": os.pathsep.join(
                [str(tree), str(project / "testproject"), str(project / "bench")]
            ),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=env,
        cwd=project / "testproject",
        capture_output=True,
        text=True,
        timeout=300,
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate ({name}, {store}) failed:\n{migrate.stderr[-3000:]}")
    check = subprocess.run(
        [sys.executable, "-c", "import hardened_sessions; print(hardened_sessions.__file__)"],
        env=env,
        cwd=project / "testproject",
        capture_output=True,
        text=True,
        timeout=60,
    )
    origin = Path(check.stdout.strip()).resolve().parent.parent
    if origin != tree.resolve():
        raise RuntimeError(f"the server for {tree} would import hardened_sessions from {origin}")
    port = common.free_port()
    command = [
        sys.executable, "-m", "gunicorn",
        "--workers", "2",
        "--worker-class", "sync",
        "--bind", f"{common.LOOPBACK}:{port}",
        "--log-level", "warning",
        "--graceful-timeout", "5",
        "--timeout", "60",
        "testproject.wsgi:application",
    ]  # fmt: skip
    log = workdir / f"gunicorn-{name}-{store}.log"
    server = common.Process(
        f"gunicorn ({name}, {store})",
        command,
        port,
        log=log,
        env=env,
        cwd=project / "testproject",
        timeout=60,
    )
    return server


def e2e_section(
    args: argparse.Namespace,
    trees: dict[str, Path],
    redis_url: str,
    workdir: Path,
    selected: Callable[[str], bool],
) -> list[dict[str, Any]]:
    import e2e

    base = redis_url.rsplit("/", 1)[0]
    results = []
    for store in E2E_STORES:
        endpoints = [e for e in E2E_ENDPOINTS if selected(f"e2e/{store}/{e}")]
        if not endpoints:
            continue
        servers: dict[str, Any] = {}
        try:
            for i, (name, tree) in enumerate(trees.items()):
                servers[name] = start_e2e_server(
                    name, tree, store, f"{base}/{i + 3}", workdir, args.e2e_payload, args.project
                )
            for endpoint in endpoints:
                rates: dict[str, list[float]] = {name: [] for name in trees}
                p50: dict[str, list[float]] = {name: [] for name in trees}
                cpu: dict[str, list[float]] = {name: [] for name in trees}
                loads = []
                for r in range(args.rounds):
                    order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                    for name in order:
                        cpu_before = server_cpu_seconds(servers[name].popen.pid)
                        result = e2e.drive(
                            servers[name].port,
                            E2E_ENDPOINTS[endpoint],
                            args.e2e_seconds,
                            args.e2e_connections,
                        )
                        spent = server_cpu_seconds(servers[name].popen.pid) - cpu_before
                        rates[name].append(result["requests_per_s"])
                        p50[name].append(result["p50_ms"])
                        cpu[name].append(spent / max(1, result["requests"]) * 1e3)
                    loads.append(os.getloadavg()[0])
                entry = {
                    "id": f"e2e/{store}/{endpoint}",
                    "requests_per_s": rates,
                    "p50_ms": p50,
                    "median_requests_per_s": {k: median(v) for k, v in rates.items()},
                    "median_p50_ms": {k: median(v) for k, v in p50.items()},
                    "server_cpu_ms_per_request": cpu,
                    "median_server_cpu_ms_per_request": {k: median(v) for k, v in cpu.items()},
                    "loadavg_1min_per_round": loads,
                }
                m = entry["median_requests_per_s"]
                entry["ratio_a/b"] = m["A"] / m["B"]
                c = entry["median_server_cpu_ms_per_request"]
                entry["cpu_ratio_a/b"] = c["A"] / c["B"]
                results.append(entry)
                print(
                    f"  {entry['id']:28s} A {m['A']:8.1f}/s ({c['A']:.2f} ms CPU)"
                    f"  B {m['B']:8.1f}/s ({c['B']:.2f} ms CPU)"
                    f"  A/B {entry['ratio_a/b']:.3f}, CPU A/B {entry['cpu_ratio_a/b']:.3f}"
                    f"  load {min(loads):.2f}-{max(loads):.2f}",
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    head, _, rest = (__doc__ or "").partition("\n\n")
    p = argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--a", type=Path, default=BENCH.parent, help="tree A (default: this one)")
    p.add_argument("--b", type=Path, help="tree B (e.g. a git worktree of another commit)")
    p.add_argument("--only", action="append", default=[], metavar="REGEX", help="case ids to run")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds per case")
    p.add_argument("--round-seconds", type=float, default=0.5, help="micro: seconds per side")
    p.add_argument("--size", type=int, default=4096, help="micro: session data in bytes")
    p.add_argument("--e2e-seconds", type=float, default=3.0, help="e2e: seconds per side")
    p.add_argument("--e2e-connections", type=int, default=4, help="e2e: concurrent clients")
    p.add_argument("--e2e-payload", type=int, default=4096, help="e2e: bytes the write view stores")
    p.add_argument(
        "--project",
        type=Path,
        help="e2e: run both servers with this tree's testproject and e2e settings "
        "(default: each tree its own)",
    )
    p.add_argument("--json", type=Path, help="also write every round to this file")
    p.add_argument("--worker", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.size)
        return 0
    if args.b is None:
        p.error("--b is required")
    import re

    import common

    patterns = [re.compile(x) for x in args.only]

    def selected(case_id: str) -> bool:
        return not patterns or any(x.search(case_id) for x in patterns)

    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for name, tree in trees.items():
        if not (tree / "hardened_sessions" / "__init__.py").exists():
            p.error(f"{tree} holds no hardened_sessions package")
        rev = common._git("-C", str(tree), "rev-parse", "--short", "HEAD")
        dirty = common._git("-C", str(tree), "status", "--porcelain", "--", "hardened_sessions")
        print(f"{name}: {tree} ({rev}{', changed files' if dirty else ''})")
    started = loadavg()
    print(f"load average at start: {started} ({os.cpu_count()} cores)", flush=True)
    with common.environment(memcached=False, postgres=False, pg_database="unused") as env:
        if env.redis_url is None:
            print(f"redis: {env.missing.get('redis')}", file=sys.stderr)
            return 1
        out: dict[str, Any] = {
            "trees": {k: str(v) for k, v in trees.items()},
            "command": [sys.executable, *sys.argv],
            "loadavg_start": started,
        }
        print("micro (4 KiB unless --size):", flush=True)
        out["micro"] = micro_section(args, trees, env.redis_url, selected)
        print("e2e (gunicorn, 2 sync workers per tree):", flush=True)
        out["e2e"] = e2e_section(args, trees, env.redis_url, env.workdir, selected)
    out["loadavg_end"] = loadavg()
    print(f"load average at end: {out['loadavg_end']}")
    if args.json:
        common.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
