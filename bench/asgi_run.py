#!/usr/bin/env python
"""ASGI benchmark: async views on the cache engines under uvicorn, hardened vs stock.

    python bench/asgi_run.py [--quick] [--rounds N] [--duration S] [--connections 64,256]
                             [--sizes 256,4096,40960]
                             [--stores django-redis,django-rediscache,pymemcache]
                             [--out bench/results]

(or ``tox -e bench-asgi -- [options]``). For each store (the cache both engines store
in: ``django-redis``, django-redis's ``RedisCache``; ``django-rediscache``, Django's own
``RedisCache``; ``pymemcache``, Django's ``PyMemcacheCache``) two uvicorn processes run
side by side, one worker each, on free ports of 127.0.0.1: the small project of
``bench/asgi_project`` with ``hardened_sessions.backends.cache`` and its middleware
(``hardened``), and the same project on ``django.contrib.sessions.backends.cache``
(``stock``). Both use the one Redis (or memcached) server this run starts on a free
port, each side under a key prefix of its own and of this run. On memcached the
hardened engine's async path sends each command through its bounded thread pool
(``hardened_sessions.stores.threaded``); stock Django's, through ``sync_to_async``.

Before the rounds, each side creates ``--sessions`` sessions (default 256) per data size
through its engine's own API (``asgi_project/prepare.py``). ``wrk`` (the C load
generator, Debian package ``wrk``) then drives one endpoint of one side at a time for
``--duration`` seconds with ``--connections`` keep-alive connections; its Lua script
(``asgi_project/sessions.lua``) sends a session cookie picked at random from that list
with every request. Endpoints (async views):

``read``
    ``await request.session.aget(...)``, nothing written;
``rmw``
    ``aget`` + ``aset`` and the middleware's save of the whole record;
``ceiling``
    a view that does not touch the session, on the stock side: the most the process
    serves with the session middleware in place.

After a warm-up (``--warmup`` seconds on every endpoint), the order of the sides
alternates from case to case and from round to round (A, B, then B, A); the ceiling is
measured in every round beside them. Reported: requests/s and wrk's p50/p99 latency
(median of the rounds), and the ratios of the medians hardened/stock and
side/ceiling. Any answer that is not 2xx (the views answer 410 when the cookie opened
no session) or any socket error makes the run exit with status 1.

Output: tables on stdout, ``<out>/asgi-<time>.json`` (machine, versions, command line,
every round), ``asgi-<time>.md`` (the Markdown table) and ``asgi-<time>.png`` (chart).
``--quick``: one round of 1 s per case at 4 KiB and 64 connections (the smoke run the
test suite uses); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

STORES = ("django-redis", "django-rediscache", "pymemcache")
STORE_LABELS = {
    "django-redis": "Redis (django-redis)",
    "django-rediscache": "Redis (Django's RedisCache)",
    "pymemcache": "memcached (PyMemcacheCache)",
}
VARIANTS = ("hardened", "stock")
OPS = ("read", "rmw")
PATHS = {"read": "/read/", "rmw": "/rmw/", "ceiling": "/ceiling/"}
PROJECT_DIR = common.BENCH_DIR / "asgi_project"
LUA_SCRIPT = PROJECT_DIR / "sessions.lua"
RESULT_MARK = "HS_WRK_RESULT "
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def _int_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*(kib|k)?", part, re.IGNORECASE)
        if match is None:
            raise argparse.ArgumentTypeError(f"not a number of bytes: {part!r}")
        out.append(int(match.group(1)) * (1024 if match.group(2) else 1))
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def _store_list(text: str) -> list[str]:
    stores = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(stores) - set(STORES))
    if unknown or not stores:
        raise argparse.ArgumentTypeError(f"stores are {', '.join(STORES)}; not {unknown}")
    return stores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="one round of 1 s per case, 4 KiB, 64 connections"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, help="seconds of wrk per side and case (default 5)")
    p.add_argument(
        "--connections", type=_int_list, help="wrk connections, comma-separated (default 64,256)"
    )
    p.add_argument(
        "--sizes", type=_int_list, help="session data in bytes (default 256,4096,40960; 4KiB ok)"
    )
    p.add_argument(
        "--stores", type=_store_list, help=f"comma-separated (default {','.join(STORES)})"
    )
    p.add_argument(
        "--sessions", type=int, default=256, help="sessions per side and size (default 256)"
    )
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--warmup", type=int, help="seconds of load on each endpoint before the rounds (default 1)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=common.BENCH_DIR / "results",
        help="output folder (default bench/results)",
    )
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    args = p.parse_args(argv)
    defaults: dict[str, tuple[Any, Any]] = {
        "rounds": (1, 3),
        "duration": (1, 5),
        "connections": ([64], [64, 256]),
        "sizes": ([4096], [256, 4096, 40960]),
        "stores": (list(STORES), list(STORES)),
        "warmup": (0, 1),
    }
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    if args.sessions < 1 or args.rounds < 1 or args.duration < 1:
        p.error("--sessions, --rounds and --duration must be at least 1")
    if any(c < args.threads for c in args.connections):
        p.error("wrk needs at least as many connections as threads")
    return args


# --- processes ------------------------------------------------------------------------


def _pythonpath() -> str:
    paths = [str(common.BENCH_DIR)]
    import hardened_sessions

    # Run from a checkout without installing the package: serve the checkout's copy.
    if Path(hardened_sessions.__file__).resolve().parent.parent == common.REPO_DIR:
        paths.append(str(common.REPO_DIR))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(paths)


def side_env(variant: str, store: str, servers: dict[str, str], prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "asgi_project.settings",
            "HS_BENCH_ASGI_VARIANT": variant,
            "HS_BENCH_ASGI_CACHE": store,
            "HS_BENCH_ASGI_PREFIX": prefix,
            **servers,
            "PYTHONPATH": _pythonpath(),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def start_uvicorn(name: str, env: dict[str, str], workdir: Path) -> common.Process:
    port = common.free_port()
    command = [
        sys.executable, "-m", "uvicorn", "asgi_project.asgi:application",
        "--host", common.LOOPBACK,
        "--port", str(port),
        "--workers", "1",
        "--lifespan", "off",
        "--no-access-log",
        "--log-level", "warning",
        # wrk keeps its connections open for the whole run; uvicorn's default (5 s)
        # would only matter between runs.
        "--timeout-keep-alive", "60",
    ]  # fmt: skip
    return common.Process(
        f"uvicorn ({name})",
        command,
        port,
        log=workdir / f"uvicorn-{name}.log",
        env=env,
        cwd=common.BENCH_DIR,
        timeout=60,
    )


def _prepare(env: dict[str, str], sizes: list[int], out: Path, *extra: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "asgi_project.prepare", *extra]
    command += ["--sizes", ",".join(map(str, sizes)), "--out", str(out)]
    done = subprocess.run(
        command, env=env, cwd=common.BENCH_DIR, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"asgi_project.prepare {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def prepare_sessions(
    env: dict[str, str], count: int, sizes: list[int], out: Path
) -> dict[int, Path]:
    """Creates the sessions through the side's engine; the cookie file of each size."""
    files = _prepare(env, sizes, out, "--count", str(count))["files"]
    return {int(size): Path(path) for size, path in files.items()}


def tally_sessions(env: dict[str, str], sizes: list[int], out: Path) -> dict[str, Any]:
    """Per size: sessions, how many still load, and the sum of their ``/rmw/`` counters."""
    tally: dict[str, Any] = _prepare(env, sizes, out, "--tally")["tally"]
    return tally


def wrk_binary() -> str:
    path = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if path is None:
        raise common.Unavailable("wrk is not installed (Debian: apt-get install wrk)")
    return path


def wrk_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr).splitlines()[0]
    return first.split(" Copyright")[0].strip()


def drive(
    wrk: str,
    port: int,
    path: str,
    cookies: Path,
    *,
    seconds: int,
    connections: int,
    threads: int,
    seed: int,
) -> dict[str, Any]:
    """One wrk run; its figures, errors and the count of answers that were not 2xx."""
    command = [
        wrk,
        "--threads", str(threads),
        "--connections", str(connections),
        "--duration", f"{seconds}s",
        "--timeout", "30s",
        "--latency",
        "--script", str(LUA_SCRIPT),
        f"http://{common.LOOPBACK}:{port}{path}",
        "--", str(cookies), str(seed),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90)
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk failed (status {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    raw = json.loads(lines[-1][len(RESULT_MARK) :])
    errors = raw["errors"]
    printed = NON_2XX.search(done.stdout)
    non_2xx = max(errors["status"], int(printed.group(1)) if printed else 0)
    seconds_measured = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "seconds": seconds_measured,
        "requests_per_s": raw["requests"] / seconds_measured if seconds_measured > 0 else 0.0,
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "max_ms": latency["max"] / 1000,
        "mean_ms": latency["mean"] / 1000,
        "non_2xx": non_2xx,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "errors": errors,
        "bytes": raw["bytes"],
        "loadavg_1m": os.getloadavg()[0],
    }


# --- one store --------------------------------------------------------------------------


class Collector:
    """Rounds per (store, op, size, connections, side), in the order they ran."""

    def __init__(self) -> None:
        self.rounds: dict[tuple[str, str, int | None, int, str], list[dict[str, Any]]] = {}
        self.problems: list[str] = []

    def add(
        self, key: tuple[str, str, int | None, int, str], result: dict[str, Any], label: str
    ) -> None:
        self.rounds.setdefault(key, []).append(result)
        if result["non_2xx"] or result["socket_errors"] or not result["requests"]:
            self.problems.append(
                f"{label}: {result['requests']} requests, {result['non_2xx']} not 2xx, "
                f"{result['socket_errors']} socket errors"
            )


def run_store(
    store: str,
    args: argparse.Namespace,
    servers_env: dict[str, str],
    prefix: str,
    workdir: Path,
    wrk: str,
    collector: Collector,
    sessions_made: dict[str, int],
    tallies: dict[str, Any],
) -> None:
    servers: dict[str, common.Process] = {}
    envs = {v: side_env(v, store, servers_env, prefix) for v in VARIANTS}
    try:
        cookies: dict[str, dict[int, Path]] = {}
        for variant in VARIANTS:
            env = envs[variant]
            cookies[variant] = prepare_sessions(
                env, args.sessions, args.sizes, workdir / f"{store}-{variant}"
            )
            for size, path in cookies[variant].items():
                sessions_made[f"{store}/{variant}/{size}"] = len(path.read_text().splitlines())
            servers[variant] = start_uvicorn(f"{store}-{variant}", env, workdir)

        def once(variant: str, op: str, size: int, connections: int, seconds: int) -> Any:
            server = servers[variant]
            result = drive(
                wrk,
                server.port,
                PATHS[op],
                cookies[variant][size],
                seconds=seconds,
                connections=connections,
                threads=args.threads,
                seed=next(seeds),
            )
            if server.popen.poll() is not None:
                raise RuntimeError(f"{server.name} exited with status {server.popen.returncode}")
            return result

        first = args.sizes[0]
        seeds = itertools.count(1)  # a different random sequence of cookies for every run
        if args.warmup:
            for variant in VARIANTS:
                for op in OPS:
                    for size in args.sizes:
                        once(variant, op, size, min(args.connections), args.warmup)
            once("stock", "ceiling", first, min(args.connections), args.warmup)
        from tqdm import tqdm

        steps = args.rounds * len(args.connections) * (1 + 2 * len(OPS) * len(args.sizes))
        bar = tqdm(total=steps, desc=f"asgi {store}", unit="run", disable=None, leave=False)
        for r in range(args.rounds):
            for connections in args.connections:
                label = f"round {r + 1} {store} ceiling c{connections}"
                result = once("stock", "ceiling", first, connections, args.duration)
                collector.add((store, "ceiling", None, connections, "stock"), result, label)
                bar.update()
                index = 0
                for size in args.sizes:
                    for op in OPS:
                        order = VARIANTS if (r + index) % 2 == 0 else VARIANTS[::-1]
                        index += 1
                        for variant in order:
                            result = once(variant, op, size, connections, args.duration)
                            label = f"round {r + 1} {store} {op} {size} B c{connections} {variant}"
                            collector.add((store, op, size, connections, variant), result, label)
                            bar.update()
        bar.close()
    finally:
        for server in servers.values():
            server.stop()
    # The read-modify-writes reached the store, and every session still loads.
    for variant in VARIANTS:
        tally = tally_sessions(envs[variant], args.sizes, workdir / f"{store}-{variant}")
        tallies[f"{store}/{variant}"] = tally
        for size_text, t in tally.items():
            if t["loading"] != t["sessions"] or t["counter_total"] < 1:
                collector.problems.append(
                    f"{store} {variant} {size_text} B after the rounds: {t['loading']} of "
                    f"{t['sessions']} sessions load, counters sum to {t['counter_total']}"
                )


# --- results ----------------------------------------------------------------------------


def _side(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rounds": rounds,
        "median_requests_per_s": common.median([x["requests_per_s"] for x in rounds]),
        "median_p50_ms": common.median([x["p50_ms"] for x in rounds]),
        "median_p99_ms": common.median([x["p99_ms"] for x in rounds]),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def build_cases(collector: Collector, args: argparse.Namespace) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for store in args.stores:
        for connections in args.connections:
            ceiling_rounds = collector.rounds.get((store, "ceiling", None, connections, "stock"))
            if not ceiling_rounds:
                continue
            ceiling = _side(ceiling_rounds)
            cases.append(
                {
                    "id": f"asgi/{store}/ceiling/c{connections}",
                    "store": store,
                    "op": "ceiling",
                    "size": None,
                    "connections": connections,
                    "sides": {"stock": ceiling},
                }
            )
            top = ceiling["median_requests_per_s"]
            for size in args.sizes:
                for op in OPS:
                    sides = {
                        v: _side(collector.rounds[(store, op, size, connections, v)])
                        for v in VARIANTS
                        if (store, op, size, connections, v) in collector.rounds
                    }
                    if len(sides) != len(VARIANTS):
                        continue
                    h = sides["hardened"]["median_requests_per_s"]
                    s = sides["stock"]["median_requests_per_s"]
                    cases.append(
                        {
                            "id": f"asgi/{store}/{op}/{size}/c{connections}",
                            "store": store,
                            "op": op,
                            "size": size,
                            "connections": connections,
                            "sides": sides,
                            "ratio_hardened/stock": _ratio(h, s),
                            "ratio_hardened/ceiling": _ratio(h, top),
                            "ratio_stock/ceiling": _ratio(s, top),
                        }
                    )
    return cases


def _size_label(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def table_rows(cases: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "store",
        "op",
        "data",
        "conns",
        "hardened/s",
        "p50 ms",
        "p99 ms",
        "stock/s",
        "p50 ms",
        "p99 ms",
        "hardened/stock",
        "hardened/ceiling",
        "stock/ceiling",
    ]
    rows = []
    for c in cases:
        h = c["sides"].get("hardened")
        s = c["sides"]["stock"]

        def cells(side: dict[str, Any] | None) -> list[str]:
            if side is None:
                return ["-", "-", "-"]
            return [
                common.human_rate(side["median_requests_per_s"]),
                f"{side['median_p50_ms']:.1f}",
                f"{side['median_p99_ms']:.1f}",
            ]

        ratios = [
            f"{c[k]:.2f}" if k in c else "-"
            for k in ("ratio_hardened/stock", "ratio_hardened/ceiling", "ratio_stock/ceiling")
        ]
        rows.append(
            [
                c["store"],
                c["op"],
                _size_label(c["size"]),
                str(c["connections"]),
                *cells(h),
                *cells(s),
                *ratios,
            ]
        )
    return header, rows


def markdown(results: dict[str, Any]) -> str:
    header, rows = table_rows(results["cases"])
    machine = results["machine"]
    s = results["settings"]
    lines = [
        f"# ASGI benchmark, {results['started']}",
        "",
        f"uvicorn {machine['packages'].get('uvicorn')} (1 worker, {results['uvicorn']['http']}, "
        f"{results['uvicorn']['loop']}), {results['wrk']}, {s['threads']} wrk thread(s); "
        f"Python {machine['python'].split()[0]}, Django {machine['packages'].get('Django')}; "
        f"{machine.get('cpu')} ({machine.get('cpu_count')} cores); load average "
        f"{' '.join(f'{x:.2f}' for x in machine['loadavg'])} at the start, "
        f"{' '.join(f'{x:.2f}' for x in results.get('loadavg_end', []))} at the end.",
        "",
        f"{s['rounds']} interleaved rounds of {s['duration']} s per side and case, "
        f"{s['sessions']} sessions per side and size. Requests/s and wrk's p50/p99 latency: "
        "median of the rounds; ratios of the medians (>1: the first is faster). The ceiling "
        "is a view without session access on the stock side.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    for caveat in results.get("caveats", []):
        lines += ["", f"Caveat: {caveat}"]
    return "\n".join(lines) + "\n"


def draw_chart(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chart import ROLE_COLOURS, ROLE_LABELS

    groups = sorted({(c["store"], c["connections"]) for c in results["cases"]})
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, 4 * len(groups)), squeeze=False)
    width = 0.38
    for ax, (store, connections) in zip(axes[:, 0], groups, strict=True):
        cases = [
            c
            for c in results["cases"]
            if c["store"] == store and c["connections"] == connections and c["op"] != "ceiling"
        ]
        ceiling = [
            c
            for c in results["cases"]
            if c["store"] == store and c["connections"] == connections and c["op"] == "ceiling"
        ]
        for i, case in enumerate(cases):
            for j, variant in enumerate(VARIANTS):
                ax.bar(
                    i + (j - 0.5) * width,
                    case["sides"][variant]["median_requests_per_s"],
                    width,
                    color=ROLE_COLOURS[variant],
                    label=ROLE_LABELS[variant] if i == 0 else None,
                )
        if ceiling:
            ax.axhline(
                ceiling[0]["sides"]["stock"]["median_requests_per_s"],
                color=ROLE_COLOURS["floor"],
                linestyle="--",
                label="ceiling (no session access)",
            )
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{c['op']}\n{_size_label(c['size'])}" for c in cases], fontsize=8)
        ax.set_ylabel("requests/s (median)")
        ax.set_title(f"ASGI, uvicorn 1 worker: {STORE_LABELS[store]}, {connections} connections")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    machine = results["machine"]
    notes = textwrap.fill(" ".join(results.get("caveats") or []), width=150)
    fig.suptitle(
        f"hardened_sessions ASGI benchmark — {results['started']} — {machine.get('cpu')} "
        f"({machine.get('cpu_count')} cores)\n{notes}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def caveats(args: argparse.Namespace) -> list[str]:
    out = []
    if args.quick:
        out.append("--quick: one short round per case, a smoke run; the figures mean nothing.")
    busy = common.busy_warning()
    if busy:
        out.append(busy)
    return out


def uvicorn_flavour() -> dict[str, str]:
    """What uvicorn's ``auto`` choices resolve to in this environment."""
    import importlib.util

    return {
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        wrk = wrk_binary()
        import uvicorn  # noqa: F401
    except (common.Unavailable, ImportError) as exc:
        print(f"cannot run: {exc} (uvicorn: the [bench] extra)", file=sys.stderr)
        return 1
    machine = common.machine_info()
    from importlib import metadata

    machine["packages"]["uvicorn"] = metadata.version("uvicorn")
    results: dict[str, Any] = {
        "command": [sys.executable, *sys.argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quick", "no_chart")},
        "machine": machine,
        "wrk": wrk_version(wrk),
        "uvicorn": {"workers": 1, **uvicorn_flavour()},
        "caveats": caveats(args),
        "sessions_per_case": {},
        "rmw_tally": {},
        "cases": [],
        "failed": {},
        "problems": [],
    }
    for text in results["caveats"]:
        print(f"caveat: {text}")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"asgi-{started}.json"
    prefix = f"hsbench-asgi-{started}-{os.getpid()}"
    collector = Collector()
    clock = time.monotonic()
    print(
        f"\n=== asgi: uvicorn (1 worker) per side, wrk {args.threads} thread(s); stores "
        f"{', '.join(args.stores)}; {args.rounds} round(s) of {args.duration} s; connections "
        f"{', '.join(map(str, args.connections))}; sizes "
        f"{', '.join(map(_size_label, args.sizes))} ===",
        flush=True,
    )
    memcached = "pymemcache" in args.stores
    with common.environment(memcached=memcached, postgres=False, pg_database="") as env:
        results["servers"] = {
            "redis": env.redis_url,
            "memcached": env.memcached_address,
            "missing": env.missing,
        }
        if env.missing:
            results["failed"].update(env.missing)
        elif env.redis_url is not None:
            import redis

            client = redis.Redis.from_url(env.redis_url)
            results["servers"]["redis_version"] = client.info("server")["redis_version"]
            client.close()
            workdir = Path(tempfile.mkdtemp(prefix="asgi-", dir=env.workdir))
            for store in args.stores:
                try:
                    run_store(
                        store,
                        args,
                        env.variables(),
                        prefix,
                        workdir,
                        wrk,
                        collector,
                        results["sessions_per_case"],
                        results["rmw_tally"],
                    )
                except Exception:
                    results["failed"][store] = traceback.format_exc()
                    print(f"FAILED asgi/{store}:\n{traceback.format_exc()}", file=sys.stderr)
    results["cases"] = build_cases(collector, args)
    results["problems"] = collector.problems
    results["elapsed_s"] = time.monotonic() - clock
    results["loadavg_end"] = list(os.getloadavg())
    results["caveats_at_end"] = caveats(args)
    common.write_json(json_path, results)
    header, rows = table_rows(results["cases"])
    print(common.table(rows, header, right=set(range(3, len(header)))))
    print(
        "  requests/s and p50/p99 (ms): median of the rounds; ratios of the medians. ceiling = "
        "a view without session access (stock side)."
    )
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(results))
    if not args.no_chart and results["cases"]:
        try:
            print(f"chart: {draw_chart(results, json_path.with_suffix('.png'))}")
        except ImportError as exc:
            print(f"no chart: {exc}")
    print(f"results: {json_path}, {md_path.name}  ({results['elapsed_s']:.1f} s)")
    for problem in collector.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if results["failed"] or collector.problems or not results["cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
