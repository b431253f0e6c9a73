"""What every benchmark script shares: servers, the scratch database, statistics, output.

* Redis and memcached: always started here, on free loopback ports, in a temporary
  directory, and stopped at the end (by the process ids started here). A Redis or
  memcached that already runs on the machine is never used, flushed or touched.
* PostgreSQL: a scratch database (``hs_bench`` by default) created at the start and
  dropped at the end. It carries a marker comment; a database of that name *without*
  the marker belongs to someone else and is never dropped (the run stops instead).
* SQLite: files in the run's temporary directory.

The Django settings of the in-process benchmarks (``bench_settings.py``) read the
addresses of these servers from ``HS_BENCH_*`` environment variables set here.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LOOPBACK = "127.0.0.1"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
SCRATCH_MARKER = "hardened_sessions bench scratch database (dropped by bench/run.py)"


class Unavailable(Exception):
    """A server or package a benchmark needs is missing; the message says which and why."""


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise Unavailable(f"the process on port {port} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise Unavailable(f"nothing answered on {LOOPBACK}:{port} after {timeout:.0f} s")


class Process:
    """One server process started here, in its own process group, stopped by its id."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.name = name
        self.port = port
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 (closed in stop())
        self.popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            wait_for_port(port, timeout, self.popen)
        except Unavailable as exc:
            self.stop()
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise Unavailable(f"{name} did not start: {exc}\n{tail}") from None

    def stop(self, timeout: float = 10.0) -> None:
        popen = self.popen
        if popen.poll() is None:
            # The group is this process's own (start_new_session): gunicorn's workers too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        self._log_file.close()


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise Unavailable(f"{name} is not installed (Debian: apt-get install {name})")
    return path


def start_redis(workdir: Path) -> Process:
    port = free_port()
    directory = workdir / f"redis-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        _binary("redis-server"),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    return Process("redis-server", command, port, log=directory / "redis.log")


def start_memcached(workdir: Path) -> Process:
    port = free_port()
    # 1 GiB: the create benchmarks write thousands of 40 KiB records between cleanups.
    command = [_binary("memcached"), "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "1024"]
    command += ["-t", "2", "-I", "2m"]
    if os.geteuid() == 0:
        import pwd

        # memcached refuses to run as root without being told which user to run as.
        command += ["-u", pwd.getpwuid(0).pw_name]
    return Process("memcached", command, port, log=workdir / f"memcached-{port}.log")


# --- PostgreSQL scratch database ----------------------------------------------------------


def postgres_url() -> str:
    """The server to create the scratch database on (``HS_BENCH_POSTGRES_URL``, else the
    test suite's ``HS_TEST_POSTGRES_URL``, else postgres@127.0.0.1:5432)."""
    return (
        os.environ.get("HS_BENCH_POSTGRES_URL")
        or os.environ.get("HS_TEST_POSTGRES_URL")
        or DEFAULT_POSTGRES_URL
    )


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class ScratchPostgres:
    """``CREATE DATABASE name`` with a marker comment; ``drop()`` removes it again."""

    def __init__(self, name: str) -> None:
        try:
            import psycopg
            from psycopg import sql
        except ImportError as exc:
            raise Unavailable("psycopg is not installed (extra [postgresql])") from exc
        self.name = name
        self.server_url = _with_database(postgres_url(), "postgres")
        self.url = _with_database(postgres_url(), name)
        self._psycopg = psycopg
        self._sql = sql
        try:
            admin = psycopg.connect(self.server_url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise Unavailable(f"PostgreSQL is not reachable at {self.server_url}: {exc}") from None
        with admin:
            row = admin.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                [name],
            ).fetchone()
            if row is not None:
                if row[0] != SCRATCH_MARKER:
                    raise Unavailable(
                        f"a database named {name!r} exists and was not made by the benchmarks; "
                        "it is left alone: choose another name with --pg-database"
                    )
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            admin.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(SCRATCH_MARKER)
                )
            )
            self.server_version = admin.execute("SHOW server_version").fetchone()[0]

    def drop(self) -> None:
        sql = self._sql
        with self._psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


# --- the environment of one run -------------------------------------------------------------


@dataclass
class Environment:
    """The servers of one run and the ``HS_BENCH_*`` variables that name them."""

    workdir: Path
    redis: Process | None = None
    memcached: Process | None = None
    postgres: ScratchPostgres | None = None
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def redis_url(self) -> str | None:
        return f"redis://{LOOPBACK}:{self.redis.port}/0" if self.redis else None

    @property
    def memcached_address(self) -> str | None:
        return f"{LOOPBACK}:{self.memcached.port}" if self.memcached else None

    def variables(self) -> dict[str, str]:
        env = {"HS_BENCH_SQLITE_DIR": str(self.workdir)}
        if self.redis_url:
            env["HS_BENCH_REDIS_URL"] = self.redis_url
        if self.memcached_address:
            env["HS_BENCH_MEMCACHED"] = self.memcached_address
        if self.postgres is not None:
            env["HS_BENCH_PG_URL"] = self.postgres.url
        return env

    def has(self, kind: str) -> bool:
        return kind not in self.missing


@contextlib.contextmanager
def environment(
    *, redis: bool = True, memcached: bool = True, postgres: bool = True, pg_database: str
) -> Iterator[Environment]:
    """Start what is asked for; a server that cannot be had is recorded in ``missing``
    (with the reason) and the benchmarks that need it are skipped."""
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-"))
    env = Environment(workdir)
    try:
        if redis:
            try:
                env.redis = start_redis(workdir)
            except Unavailable as exc:
                env.missing["redis"] = str(exc)
        if memcached:
            try:
                env.memcached = start_memcached(workdir)
            except Unavailable as exc:
                env.missing["memcached"] = str(exc)
        if postgres:
            try:
                env.postgres = ScratchPostgres(pg_database)
            except Unavailable as exc:
                env.missing["postgresql"] = str(exc)
        os.environ.update(env.variables())
        yield env
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if env.postgres is not None:
            try:
                env.postgres.drop()
            except Exception as exc:  # reported, never hidden: a leftover database
                print(f"warning: could not drop {env.postgres.name}: {exc}", file=sys.stderr)
        for process in (env.memcached, env.redis):
            if process is not None:
                process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def setup_django() -> None:
    """Configure Django from ``bench_settings`` (after :func:`environment` set the variables)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    import django

    django.setup()


def migrate(aliases: Sequence[str]) -> None:
    from django.core.management import call_command

    for alias in aliases:
        call_command("migrate", database=alias, verbosity=0, interactive=False)


# --- statistics ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else float("nan"),
    }


# --- machine and versions ----------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    import sqlite3

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    packages = [
        "Django",
        "django-hardened-sessions",
        "orjson",
        "django-redis",
        "redis",
        "pymemcache",
        "psycopg",
        "django-redis-sessions",
        "gunicorn",
        "matplotlib",
    ]
    try:
        import hardened_sessions

        package_path: str | None = str(Path(hardened_sessions.__file__).resolve().parent)
    except ImportError:
        package_path = None
    return {
        "hardened_sessions": package_path,
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(load) if load else None,
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: _package_version(name) for name in packages},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def busy_warning() -> str | None:
    """A caveat when the machine is visibly busy (the numbers are noise then)."""
    if not hasattr(os, "getloadavg"):
        return None
    load1 = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load1 > 0.5 * cores:
        return (
            f"load average {load1:.2f} on {cores} cores: other work is running, so these "
            "figures are noisy; take final figures on a quiet machine."
        )
    return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def human_rate(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    """A plain-text table; columns in ``right`` are right-aligned."""
    right = right or set()
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])
