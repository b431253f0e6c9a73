"""Smoke runs of ``bench/compare_revisions.py`` and ``bench/pool_checkout.py``.

``compare_revisions.py`` is run with this tree on both sides (tiny counts): every
selected case must produce both sides' rounds and a ratio, each side must have
imported the package from its own tree, and a folder without the package is refused.
``pool_checkout.py`` must print its table for both pool classes. Figures are not
checked. Needs ``redis-server`` (both start their own) and, for the end-to-end case,
gunicorn and django-redis (the ``[bench]`` extra).
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
BENCH = REPO / "bench"

pytestmark = pytest.mark.slow


def _require() -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        require_server("redis-server", "the benchmarks start their own redis-server")
    for module, package in {"gunicorn": "gunicorn", "django_redis": "django-redis"}.items():
        if importlib.util.find_spec(module) is None:
            require_server(package, f"{package} is missing: install the [bench] extra")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def test_compare_revisions_runs_both_trees(tmp_path: Path) -> None:
    _require()
    out = tmp_path / "compare.json"
    command = [
        sys.executable,
        str(BENCH / "compare_revisions.py"),
        "--b", str(REPO),
        "--rounds", "2",
        "--round-seconds", "0.02",
        "--e2e-seconds", "0.3",
        "--e2e-connections", "2",
        "--only", "micro/django-redis/read",
        "--only", "micro/django/rmw",
        "--only", "e2e/redis/write",
        "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    results = json.loads(out.read_text())
    assert results["trees"] == {"A": str(REPO), "B": str(REPO)}
    assert [c["id"] for c in results["micro"]] == ["micro/django-redis/read", "micro/django/rmw"]
    assert [c["id"] for c in results["e2e"]] == ["e2e/redis/write"]
    for case in results["micro"]:
        assert all(len(case["ops_per_s"][side]) == 2 for side in "AB"), case
        assert case["ratio_a/b"] > 0 and case["cpu_ratio_a/b"] > 0
    for case in results["e2e"]:
        assert all(len(case["requests_per_s"][side]) == 2 for side in "AB"), case
        assert case["ratio_a/b"] > 0
    assert "A/B" in done.stdout and "load average at end" in done.stdout


def test_compare_revisions_refuses_a_folder_without_the_package(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "compare_revisions.py"), "--b", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "holds no hardened_sessions package" in done.stderr


def test_pool_checkout_prints_both_pools() -> None:
    _require()
    command = [sys.executable, str(BENCH / "pool_checkout.py"), "--ops", "20", "--rounds", "1"]
    done = subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("ConnectionPool: µs", "BlockingConnectionPool: µs", "checkout+GET+release"):
        assert line in done.stdout, done.stdout
