#!/usr/bin/env python
"""What a redis-py pool checkout costs, per release of redis-py and per public option.

    python bench/pool_checkout.py [--ops 3000] [--rounds 7] [--python PY ...]

Times, in microseconds (median of the rounds of per-round medians), one 4 KiB ``GET``
taken the ways the session store could take it through public APIs:

* ``checkout+release, no I/O``: ``pool.get_connection()`` then ``pool.release()``;
* the parts of ``get_connection()``, ``send_packed_command()``, ``read_response()``
  and ``release()`` around one pre-packed ``GET`` (what the store does per operation);
* ``GET on a held connection``: the same without the checkout (what a connection kept
  outside the pool would cost: the path the store no longer takes);
* ``can_read()`` alone: the health check that ``get_connection()`` runs on every
  checkout (a non-blocking ``recv``);
* ``get_connection("GET")``: the pre-5.3 form, which redis-py 5.3 and later accept with a
  ``DeprecationWarning`` (filtered by default, but issued on every call);
* ``Redis.execute_command`` and ``pipeline(transaction=False)``: redis-py's own command
  path over the same pool;

for ``ConnectionPool`` and ``BlockingConnectionPool``. With ``--python``, each given
interpreter (a virtualenv with another redis-py, e.g. ``python -m venv /tmp/rp5 &&
/tmp/rp5/bin/pip install 'redis<6'``) runs the same measurement, the interpreters
taking turns round after round, so that releases are compared under the same load.
Needs only redis-py and ``redis-server`` on ``PATH`` (started here on a free loopback
port and stopped at the end).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def measure(url: str, ops: int) -> dict[str, Any]:
    """One round in this interpreter: medians (µs) per pool class and way."""
    import inspect

    import redis

    ns = time.perf_counter_ns
    out: dict[str, Any] = {"redis-py": redis.__version__}
    for kind in (redis.ConnectionPool, redis.BlockingConnectionPool):
        pool = kind.from_url(url)
        client = redis.Redis(connection_pool=pool)
        client.set("hs-bench-checkout", b"x" * 4096)
        params = list(inspect.signature(pool.get_connection).parameters.values())
        without_name = not params or params[0].default is not inspect.Parameter.empty
        get: Callable[[], Any] = (
            pool.get_connection if without_name else functools.partial(pool.get_connection, "GET")
        )
        release = pool.release
        conn = get()
        packed = b"".join(conn.pack_commands([("GET", "hs-bench-checkout")]))
        release(conn)
        times: dict[str, list[int]] = {}

        def add(name: str, value: int, times: dict[str, list[int]] = times) -> None:
            times.setdefault(name, []).append(value)

        for _ in range(ops):
            t0 = ns()
            conn = get()
            release(conn)
            add("checkout+release, no I/O", ns() - t0)
        for _ in range(ops):
            t0 = ns()
            conn = get()
            t1 = ns()
            conn.send_packed_command([packed])
            t2 = ns()
            conn.read_response()
            t3 = ns()
            release(conn)
            t4 = ns()
            add("get_connection()", t1 - t0)
            add("send_packed_command()", t2 - t1)
            add("read_response()", t3 - t2)
            add("release()", t4 - t3)
            add("checkout+GET+release", t4 - t0)
        conn = get()
        for _ in range(ops):
            t0 = ns()
            conn.send_packed_command([packed])
            conn.read_response()
            add("GET on a held connection", ns() - t0)
        for _ in range(ops):
            t0 = ns()
            conn.can_read()
            add("can_read() of an idle connection", ns() - t0)
        release(conn)
        if without_name:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                for _ in range(ops):
                    t0 = ns()
                    conn = pool.get_connection("GET")
                    release(conn)
                    add('checkout+release as get_connection("GET")', ns() - t0)
        for _ in range(ops):
            t0 = ns()
            client.execute_command("GET", "hs-bench-checkout")
            add("Redis.execute_command GET", ns() - t0)
        for _ in range(ops):
            t0 = ns()
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("GET", "hs-bench-checkout")
            pipe.execute()
            add("pipeline(transaction=False) GET", ns() - t0)
        out[kind.__name__] = {k: statistics.median(v) / 1000 for k, v in times.items()}
        pool.disconnect()
    return out


def main(argv: list[str] | None = None) -> int:
    head, _, rest = (__doc__ or "").partition("\n\n")
    p = argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ops", type=int, default=3000, help="operations per way and round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PY",
        help="another interpreter to run the same measurement (repeatable)",
    )
    p.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.ops)))
        return 0
    sys.path.insert(0, str(BENCH))
    import common

    pythons = [sys.executable, *args.python]
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-checkout-"))
    server = common.start_redis(workdir)
    url = f"redis://{common.LOOPBACK}:{server.port}/0"
    results: dict[str, list[dict[str, Any]]] = {}
    loads = [os.getloadavg()[0]]
    try:
        for r in range(args.rounds):
            order = pythons[r % len(pythons) :] + pythons[: r % len(pythons)]
            for python in order:
                done = subprocess.run(
                    [python, __file__, "--worker", url, "--ops", str(args.ops)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=tempfile.gettempdir(),
                )
                result = json.loads(done.stdout)
                results.setdefault(result["redis-py"], []).append(result)
            loads.append(os.getloadavg()[0])
    finally:
        server.stop()
    versions = sorted(results, key=lambda v: [int(x) if x.isdigit() else x for x in v.split(".")])
    print(f"load average (1 min) per round: {' '.join(f'{x:.2f}' for x in loads)}")
    for kind in ("ConnectionPool", "BlockingConnectionPool"):
        print(
            f"\n{kind}: µs, median of {args.rounds} rounds of per-round medians "
            f"({args.ops} operations each)"
        )
        names: list[str] = []
        for v in versions:
            for name in results[v][0][kind]:
                if name not in names:
                    names.append(name)
        print(f"{'':42s}" + "".join(f"{v:>10s}" for v in versions))
        for name in names:
            cells = []
            for v in versions:
                values = [r[kind][name] for r in results[v] if name in r[kind]]
                cells.append(f"{statistics.median(values):10.2f}" if values else f"{'-':>10s}")
            print(f"{name:42s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
