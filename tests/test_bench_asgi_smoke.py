"""The ASGI benchmark's smoke run (``bench/asgi_run.py --quick``), so that it cannot rot.

Runs the harness in a subprocess as a developer would: it starts its own Redis, one
uvicorn per engine and store, pre-creates the sessions and drives each case with
``wrk`` for about a second. The figures mean nothing and are not compared; the test
checks that every case ran, served requests, and answered nothing but 2xx (the views
answer 410 when the session cookie opened no session, so a cookie the engine does not
accept shows up here too), and that the JSON and Markdown outputs were written.

Needs ``redis-server`` and ``wrk`` (Debian packages) and the ``[bench]`` extra (uvicorn).
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

STORES = {"django-redis", "django-rediscache", "pymemcache"}
VARIANTS = {"hardened", "stock"}


def _have_program(name: str) -> bool:
    return bool(shutil.which(name) or Path(f"/usr/bin/{name}").exists())


def test_bench_asgi_quick_run(tmp_path: Path) -> None:
    for program in ("redis-server", "memcached", "wrk"):
        if not _have_program(program):
            require_server(program, f"the ASGI benchmark needs {program}; it is not installed")
    for module, package in {"uvicorn": "uvicorn", "django_redis": "django-redis"}.items():
        if importlib.util.find_spec(module) is None:
            require_server(package, f"{package} is missing: install the [bench] extra")

    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, str(REPO / "bench" / "asgi_run.py"), "--quick"]
    command += ["--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert done.returncode == 0, output

    [json_path] = tmp_path.glob("asgi-*.json")
    results = json.loads(json_path.read_text())
    assert results["failed"] == {}, output
    assert results["settings"]["connections"] == [64]
    assert results["settings"]["sizes"] == [4096]
    cases = results["cases"]
    # Per store: read and rmw (hardened and stock sides) and the ceiling (stock).
    seen = {(c["store"], c["op"]) for c in cases}
    assert seen == {(s, op) for s in STORES for op in ("read", "rmw", "ceiling")}, output
    for case in cases:
        expected = {"stock"} if case["op"] == "ceiling" else VARIANTS
        assert set(case["sides"]) == expected, case["id"]
        for side in case["sides"].values():
            assert len(side["rounds"]) == 1, case["id"]
            for r in side["rounds"]:
                assert r["requests"] > 0, (case["id"], r)
                assert r["requests_per_s"] > 0, (case["id"], r)
                assert r["non_2xx"] == 0, (case["id"], r)
                assert r["socket_errors"] == 0, (case["id"], r)
            assert side["median_requests_per_s"] > 0
            assert side["median_p99_ms"] >= side["median_p50_ms"] > 0
        if case["op"] != "ceiling":
            assert case["ratio_hardened/stock"] > 0
            assert case["ratio_hardened/ceiling"] > 0
    # Each store's sessions were distinct and many, spread over the connections.
    assert len(results["sessions_per_case"]) == len(STORES) * len(VARIANTS)
    assert all(n >= 200 for n in results["sessions_per_case"].values())
    # The read-modify-writes reached Redis, and every session still loads afterwards.
    assert set(results["rmw_tally"]) == {f"{s}/{v}" for s in STORES for v in VARIANTS}
    for tally in results["rmw_tally"].values():
        assert tally["4096"]["loading"] == tally["4096"]["sessions"] >= 200
        assert tally["4096"]["counter_total"] > 0
    markdown = json_path.with_suffix(".md").read_text()
    assert "| store |" in markdown and "hardened/stock" in markdown
    assert json_path.with_suffix(".png").stat().st_size > 0
