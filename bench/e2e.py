"""End to end: requests/s through the testproject's whole middleware stack under gunicorn.

For each store (``sqlite``: the db engines on an SQLite file with the recommended
options; ``redis``: the cache engines on django-redis), two gunicorn servers run side by
side, each with 2 sync workers on its own free port of 127.0.0.1: the testproject with
hardened_sessions, and the same project switched to django.contrib.sessions
(``e2e_settings.py``). Each has its own freshly migrated SQLite file.

A load generator in another process (``loadgen.py``) drives one server at a time for a
fixed time; the servers alternate in each round. Endpoints: ``read`` (loads the session
and the user; writes nothing) and ``write`` (changes the session on every request).
Each client of the load generator has its own session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import common

ENDPOINTS = {"read": "/bench/read/", "write": "/bench/write/"}
STORES = {"sqlite": None, "redis": "redis"}
VARIANTS = ("hardened", "stock")
WORKERS = 2


def _pythonpath() -> str:
    paths = [str(common.REPO_DIR / "testproject"), str(common.BENCH_DIR)]
    import hardened_sessions

    # Run from a checkout without installing the package: serve the checkout's copy.
    origin = Path(hardened_sessions.__file__).resolve().parent.parent
    if origin == common.REPO_DIR:
        paths.append(str(common.REPO_DIR))
    return os.pathsep.join(paths)


def _env(variant: str, store: str, sqlite_file: Path, env: Any, payload: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HS_DEMO_")}
    base.update(
        {
            "DJANGO_SETTINGS_MODULE": "e2e_settings",
            "HS_BENCH_E2E_VARIANT": variant,
            "HS_BENCH_E2E_STORE": store,
            "HS_BENCH_E2E_SQLITE": str(sqlite_file),
            "HS_BENCH_E2E_PAYLOAD": str(payload),
            "HS_DEMO_DEBUG": "0",
            "PYTHONPATH": _pythonpath(),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if env.redis_url:
        base["HS_BENCH_REDIS_URL"] = env.redis_url
    return base


def start_server(
    variant: str, store: str, env: Any, workdir: Path, payload: int
) -> tuple[common.Process, int]:
    sqlite_file = workdir / f"e2e-{store}-{variant}.sqlite3"
    variables = _env(variant, store, sqlite_file, env, payload)
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=variables,
        cwd=common.REPO_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate ({variant}, {store}) failed:\n{migrate.stderr[-3000:]}")
    port = common.free_port()
    command = [
        sys.executable, "-m", "gunicorn",
        "--workers", str(WORKERS),
        "--worker-class", "sync",
        "--bind", f"{common.LOOPBACK}:{port}",
        "--log-level", "warning",
        "--graceful-timeout", "5",
        "--timeout", "60",
        "testproject.wsgi:application",
    ]  # fmt: skip
    log = workdir / f"gunicorn-{store}-{variant}.log"
    server = common.Process(
        f"gunicorn ({variant}, {store})",
        command,
        port,
        log=log,
        env=variables,
        cwd=common.REPO_DIR,
        timeout=60,
    )
    return server, port


def drive(port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(common.BENCH_DIR / "loadgen.py"),
        "--port", str(port),
        "--path", path,
        "--seconds", str(seconds),
        "--connections", str(connections),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 180, cwd=common.REPO_DIR
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"loadgen gave no result: {done.stderr[-2000:]}") from None
    if done.returncode != 0:
        raise RuntimeError(
            f"loadgen failed: errors {result['errors'][:3]}, non-200 {result['non_200']}"
        )
    return result


def section(run: Any, env: Any) -> None:
    args = run.args
    plan: dict[str, list[str]] = {}
    for store, needs in STORES.items():
        for endpoint in ENDPOINTS:
            case_id = f"e2e/{store}/{endpoint}"
            if not run.selected(case_id):
                continue
            if needs and not env.has(needs):
                run.skip(case_id, f"{needs}: {env.missing[needs]}")
                continue
            plan.setdefault(store, []).append(endpoint)
    if not plan:
        return
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        for store, endpoints in plan.items():
            for endpoint in endpoints:
                run.skip(f"e2e/{store}/{endpoint}", "gunicorn is not installed (extra [bench])")
        return
    print(
        f"\n=== e2e: gunicorn, {WORKERS} sync workers per side, {args.e2e_connections} clients, "
        f"{args.e2e_rounds} rounds of {args.e2e_seconds:g} s per side and endpoint ===",
        flush=True,
    )
    results = []
    for store, endpoints in plan.items():
        servers: dict[str, tuple[common.Process, int]] = {}
        try:
            for variant in VARIANTS:
                servers[variant] = start_server(variant, store, env, env.workdir, args.e2e_payload)
            rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for r in range(args.e2e_rounds):
                order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
                for endpoint in endpoints:
                    for variant in order:
                        rounds.setdefault((endpoint, variant), []).append(
                            drive(
                                servers[variant][1],
                                ENDPOINTS[endpoint],
                                args.e2e_seconds,
                                args.e2e_connections,
                            )
                        )
        except Exception as exc:
            for endpoint in endpoints:
                run.results["failed"][f"e2e/{store}/{endpoint}"] = (
                    f"{exc.__class__.__name__}: {exc}"
                )
            print(f"  FAILED e2e/{store}: {exc}")
            continue
        finally:
            for server, _ in servers.values():
                server.stop()
        for endpoint in endpoints:
            entry: dict[str, Any] = {
                "id": f"e2e/{store}/{endpoint}",
                "store": store,
                "endpoint": ENDPOINTS[endpoint],
                "sides": {},
            }
            for variant in VARIANTS:
                per_round = rounds[(endpoint, variant)]
                entry["sides"][variant] = {
                    "rounds": per_round,
                    "median_requests_per_s": common.median(
                        [x["requests_per_s"] for x in per_round]
                    ),
                    "median_p50_ms": common.median([x["p50_ms"] for x in per_round]),
                    "median_p99_ms": common.median([x["p99_ms"] for x in per_round]),
                }
            h, d = entry["sides"]["hardened"], entry["sides"]["stock"]
            entry["ratio_hardened/stock"] = h["median_requests_per_s"] / d["median_requests_per_s"]
            results.append(entry)
    run.results["sections"]["e2e"] = {
        "workers": WORKERS,
        "worker_class": "sync",
        "connections": args.e2e_connections,
        "payload": args.e2e_payload,
        "cases": results,
    }
    rows = []
    for e in results:
        h, d = e["sides"]["hardened"], e["sides"]["stock"]
        rows.append(
            [
                e["store"],
                e["endpoint"],
                common.human_rate(h["median_requests_per_s"]),
                f"{h['median_p50_ms']:.1f}",
                f"{h['median_p99_ms']:.1f}",
                common.human_rate(d["median_requests_per_s"]),
                f"{d['median_p50_ms']:.1f}",
                f"{d['median_p99_ms']:.1f}",
                f"{e['ratio_hardened/stock']:.2f}",
            ]
        )
    header = [
        "store",
        "endpoint",
        "hardened/s",
        "p50 ms",
        "p99 ms",
        "django/s",
        "p50 ms",
        "p99 ms",
        "h/django",
    ]
    print(common.table(rows, header, right=set(range(2, 9))))
    print(
        "  requests/s through the whole middleware stack; sync workers close each connection "
        "after its response, so every request connects anew (loopback). The hardened side "
        "runs with the testproject's HARDENED_SESSIONS (idle and absolute timeouts, "
        "TOUCH_INTERVAL): a read records no activity within the interval."
    )
