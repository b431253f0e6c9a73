#!/usr/bin/env python
"""A small HTTP load generator for the end-to-end benchmark (loopback only).

    python bench/loadgen.py --port PORT --path /bench/write/ --seconds 3 --connections 4

Each client is a thread with its own ``http.client`` connection (kept alive where the
server allows it; gunicorn's sync workers close every connection after its response,
so then each request connects anew) and its own session: it first requests
``--session-path`` to get a session cookie, then, after all clients are ready, sends
``--path`` with its cookies until ``--seconds`` have passed (at most ``--max-requests``
requests per client). Prints one JSON object: requests, errors, seconds, requests/s,
p50/p99/max latency in ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from http.cookies import SimpleCookie

HOST = "127.0.0.1"  # never anything but the loopback interface


def _cookies(response: http.client.HTTPResponse, jar: dict[str, str]) -> None:
    for header in response.msg.get_all("Set-Cookie") or ():
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            if morsel["max-age"] == "0" or not morsel.value:
                jar.pop(name, None)
            else:
                jar[name] = morsel.value


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--session-path", default="/bench/write/")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    state: dict[str, float] = {}
    latencies: list[list[float]] = [[] for _ in range(args.connections)]
    errors: list[str] = []
    statuses: dict[int, int] = {}
    ends: list[float] = []
    lock = threading.Lock()

    def release() -> None:
        state["start"] = time.perf_counter()
        state["deadline"] = state["start"] + args.seconds

    barrier = threading.Barrier(args.connections, action=release)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        jar: dict[str, str] = {}
        mine = latencies[index]
        try:
            conn.request("GET", args.session_path)
            response = conn.getresponse()
            response.read()
            _cookies(response, jar)
            if response.status != 200 or not jar:
                raise RuntimeError(f"no session from {args.session_path}: {response.status}")
            barrier.wait(timeout=args.timeout)
            deadline = state["deadline"]
            clock = time.perf_counter
            for _ in range(args.max_requests):
                headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
                t0 = clock()
                conn.request("GET", args.path, headers=headers)
                response = conn.getresponse()
                response.read()
                t1 = clock()
                mine.append(t1 - t0)
                _cookies(response, jar)
                if response.status != 200:
                    with lock:
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                if t1 >= deadline:
                    break
            with lock:
                ends.append(t1)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:
            with lock:
                errors.append(f"{exc.__class__.__name__}: {exc}")
            barrier.abort()
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.seconds + 2 * args.timeout)
    elapsed = (max(ends) - state["start"]) if ends else 0.0
    ordered = sorted(v for x in latencies for v in x)
    result = {
        "requests": len(ordered),
        "errors": errors,
        "non_200": statuses,
        "seconds": elapsed,
        "requests_per_s": len(ordered) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(ordered, 50) * 1000,
        "p99_ms": _percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else float("nan"),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 1 if errors or statuses or not ordered else 0


if __name__ == "__main__":
    sys.exit(main())
