"""The benchmarks' smoke run, so that ``bench/`` cannot rot unnoticed.

Runs ``python bench/run.py --quick --strict`` in a subprocess, as a developer would:
every section (micro, concurrency, end to end under gunicorn, profile, clear_expired)
with tiny counts; ``--strict`` turns any skipped or failed case into a non-zero exit.
Its figures mean nothing and are not checked; only that every case ran and the output
(JSON, chart, profiles) was written.

Needs what the benchmarks need: the ``redis-server`` and ``memcached`` programs (the run
starts its own servers on free ports), PostgreSQL named by ``HS_TEST_POSTGRES_URL`` (the
run creates and drops a scratch database of its own there), and the ``[bench]`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_server

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

BENCH_MODULES = {
    "gunicorn": "gunicorn",
    "matplotlib": "matplotlib",
    "redis_sessions": "django-redis-sessions",
    "django_redis": "django-redis",
    "pymemcache": "pymemcache",
    "psycopg": "psycopg",
}


def _have_program(name: str) -> bool:
    return bool(shutil.which(name) or Path(f"/usr/bin/{name}").exists())


def test_bench_quick_run(tmp_path: Path) -> None:
    for program in ("redis-server", "memcached"):
        if not _have_program(program):
            require_server(
                program, f"the benchmarks start their own {program}; it is not installed"
            )
    postgres_url = os.environ.get("HS_TEST_POSTGRES_URL")
    if not postgres_url:
        require_server("postgresql", "the benchmarks need PostgreSQL: set HS_TEST_POSTGRES_URL")
    for module, package in BENCH_MODULES.items():
        if importlib.util.find_spec(module) is None:
            require_server(package, f"{package} is missing: install the [bench] extra")

    env = dict(os.environ)
    env["HS_BENCH_POSTGRES_URL"] = postgres_url or ""
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--quick",
        "--strict",
        "--out",
        str(tmp_path),
        "--pg-database",
        f"hs_bench_smoke_{os.getpid()}",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=270)
    output = f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert done.returncode == 0, output

    [json_path] = tmp_path.glob("bench-*.json")
    results = json.loads(json_path.read_text())
    assert results["failed"] == {}, output
    assert results["skipped"] == {}, output
    sections = results["sections"]
    assert set(sections) == {"micro", "concurrency", "e2e", "profile", "clear_expired"}
    # 7 stores x 3 operations x 3 payloads, each with hardened, stock and floor sides.
    assert len(sections["micro"]) == 63
    assert {c["group"] for c in sections["micro"]} >= {"cache-redis", "cache-redis-django"}
    assert all(len(case["sides"]) >= 3 for case in sections["micro"])
    assert any(s["role"] == "peer" for c in sections["micro"] for s in c["sides"])
    assert {c["threads"] for c in sections["concurrency"]} == {1, 4, 16}
    assert len(sections["e2e"]["cases"]) == 4
    assert all(
        side["median_requests_per_s"] > 0
        for case in sections["e2e"]["cases"]
        for side in case["sides"].values()
    )
    clear = sections["clear_expired"]
    assert clear["complete"] and clear["expired_after"] == 0
    assert json_path.with_suffix(".png").stat().st_size > 0
    assert len(list(tmp_path.glob("profile-*.pstats"))) == 2
