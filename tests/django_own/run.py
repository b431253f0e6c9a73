"""Run Django's own test modules with hardened_sessions in place of Django's sessions.

Usage::

    python tests/django_own/run.py [--modules SET|LABEL,...] [--engines db,cache,cached_db]
                                   [--parallel N] [--stock [--record]] [-- RUNTESTS_ARGS]

For the installed Django, this takes the ``tests/`` folder of its sdist (downloaded
once by ``tests/support/django_suite.py``) and runs Django's ``runtests.py`` (through
``hs_runtests.py``) once per session engine, each in its own process:

* by default with ``hardened_sessions`` installed, ``HardenedSessionMiddleware`` in
  place of Django's ``SessionMiddleware`` and ``SESSION_ENGINE`` on
  ``hardened_sessions.backends.<engine>`` (the cache engines on ``LocMemCache``);
* with ``--stock``, Django's own middleware and ``django.contrib.sessions.backends.<engine>``:
  the baseline, which shows that the same modules pass on stock Django here.

The tests listed in ``deviations.toml`` are expected to fail (see ``hs_deviations.py``).
The stock baseline is not part of every CI run: it is run when the list changes
(``tox -m django-baseline``), and ``--record`` writes the list's SHA-256 into
``baseline.txt`` for this Django feature version. A hardened run first checks that
record and refuses to start when the list changed since its baseline ran.

Prints the wall time of each engine's run. Exit status 0 when every run passed.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import django

HERE = Path(__file__).resolve().parent
RECORD_FILE = HERE / "baseline.txt"
ENGINES = ("db", "cache", "cached_db")
# The modules closest to sessions: run on every Django version.
SESSION_MODULES = [
    "sessions_tests",
    "messages_tests",
    "test_client",
    "test_client_regress",
    "middleware",
    "csrf_tests",
]
MODULE_SETS = {
    "sessions": SESSION_MODULES,
    # Everything that logs in, keeps state across requests or renders the admin.
    "full": [
        *SESSION_MODULES,
        "auth_tests",
        "view_tests",
        "flatpages_tests",
        "redirects_tests",
        "admin_views",
    ],
}


def _load(name: str, path: Path) -> ModuleType:
    """Import a helper by path: the repository itself stays off sys.path, so the
    installed hardened_sessions (tox installs the wheel) is the one tested."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


django_suite = _load("hs_django_suite", HERE.parent / "support" / "django_suite.py")
hs_deviations = _load("hs_deviations", HERE / "hs_deviations.py")


def feature_version() -> str:
    return ".".join(str(part) for part in django.VERSION[:2])


def read_record() -> dict[str, dict[str, str]]:
    """baseline.txt: one line per Django feature version, ``VERSION key=value ...``."""
    records: dict[str, dict[str, str]] = {}
    if RECORD_FILE.exists():
        for line in RECORD_FILE.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                version, *fields = line.split()
                records[version] = dict(field.split("=", 1) for field in fields)
    return records


def write_record(modules: str, engines: list[str]) -> None:
    # The three baselines may run side by side (tox p): one writer at a time.
    with RECORD_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write_record(modules, engines)


def _write_record(modules: str, engines: list[str]) -> None:
    records = read_record()
    records[feature_version()] = {
        "deviations-sha256": hs_deviations.digest(),
        "django": django.get_version(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "modules": modules,
        "engines": ",".join(engines),
        "date": datetime.date.today().isoformat(),
    }
    lines = [
        "# The stock baselines run against deviations.toml, one line per Django feature",
        "# version. Written by `tox -m django-baseline` (run.py --stock --record); do not",
        "# edit by hand. The hardened runs check that deviations-sha256 matches the list.",
    ]
    for version in sorted(records, key=lambda v: tuple(int(p) for p in v.split("."))):
        fields = " ".join(f"{key}={value}" for key, value in records[version].items())
        lines.append(f"{version} {fields}")
    RECORD_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_record(labels: list[str]) -> str | None:
    """Why the hardened run of ``labels`` must not start, or None when a stock baseline
    of these modules ran against the current list."""
    recorded = read_record().get(feature_version(), {})
    covered = MODULE_SETS.get(recorded.get("modules", ""), [])
    if recorded.get("deviations-sha256") == hs_deviations.digest() and set(labels) <= set(covered):
        return None
    return (
        f"{RECORD_FILE} has no stock baseline of Django "
        f"{feature_version()} for these modules and the current deviations.toml (it "
        "changed since the baseline ran?). Run `tox -m django-baseline` (the same modules on stock Django, "
        "where only the entries' stock engines may fail them) and commit "
        "baseline.txt with the list."
    )


def run_engine(
    tests_dir: Path, mode: str, engine: str, labels: list[str], parallel: int, extra: list[str]
) -> tuple[int, float]:
    command = [
        sys.executable,
        str(HERE / "hs_runtests.py"),
        str(tests_dir),
        "--settings=hs_settings",
        f"--parallel={parallel}",
        "--noinput",
        *extra,
        *labels,
    ]
    env = dict(os.environ, HS_DJANGO_OWN_MODE=mode, HS_DJANGO_OWN_ENGINE=engine)
    # hs_settings and hs_deviations are found next to hs_runtests.py (sys.path[0]).
    print(f"\n==== Django {django.get_version()}, {mode} {engine}: {' '.join(labels)}", flush=True)
    started = time.monotonic()
    status = subprocess.run(command, cwd=tests_dir, env=env, check=False).returncode
    return status, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--modules",
        default="full",
        help=f"a set ({', '.join(MODULE_SETS)}) or comma-separated labels (default: full)",
    )
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--stock", action="store_true", help="the stock baseline")
    parser.add_argument(
        "--record", action="store_true", help="with --stock: record a passing baseline"
    )
    parser.add_argument(
        "--skip-baseline-check",
        action="store_true",
        help="run even though the list changed since its baseline (while editing it)",
    )
    parser.add_argument("runtests_args", nargs="*", help="after --: passed to runtests.py")
    args = parser.parse_args(argv)

    labels = MODULE_SETS.get(args.modules) or args.modules.split(",")
    engines = args.engines.split(",")
    if not set(engines) <= set(ENGINES):
        parser.error(f"--engines: choose from {', '.join(ENGINES)}")
    if args.record and not (args.stock and args.modules in MODULE_SETS and not args.runtests_args):
        parser.error("--record needs --stock, a module set and no runtests arguments")
    hs_deviations.load()  # a malformed list fails before anything runs
    mode = "stock" if args.stock else "hardened"
    if not (args.stock or args.skip_baseline_check) and (problem := check_record(labels)):
        print(f"ERROR: {problem}", file=sys.stderr)
        return 2

    tests_dir = django_suite.tests_dir()
    results = []
    for engine in engines:
        status, seconds = run_engine(
            tests_dir, mode, engine, labels, args.parallel, args.runtests_args
        )
        results.append((engine, status, seconds))

    print(f"\n==== Django {django.get_version()} ({mode}), modules: {' '.join(labels)}")
    for engine, status, seconds in results:
        print(f"{engine:<10} {seconds:8.1f} s  {'passed' if status == 0 else 'FAILED'}")
    print(f"{'total':<10} {sum(s for _, _, s in results):8.1f} s")
    failed = any(status for _, status, _ in results)
    if args.record:
        if failed or engines != list(ENGINES):
            print("Baseline not recorded: it must pass on every engine.", file=sys.stderr)
        else:
            write_record(args.modules, engines)
            print(f"Recorded in {RECORD_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
