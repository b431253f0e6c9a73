"""Creates the benchmark's sessions through the configured engine's own API.

    DJANGO_SETTINGS_MODULE=asgi_project.settings HS_BENCH_ASGI_VARIANT=hardened \\
        python -m asgi_project.prepare --count 256 --sizes 256,4096 --out DIR

For each size, ``--count`` sessions are created with ``SessionStore().create()`` and
``save()`` holding ``data`` (a random text of that many characters) and a counter ``n``;
``DIR/cookies-<size>.txt`` gets one ``Cookie`` header value per line
(``sessionid=<key>``), which ``sessions.lua`` sends. Every session is then loaded
again through a fresh ``SessionStore`` to make sure the engine accepts its key.

With ``--tally``, creates nothing: loads the sessions of the ``cookies-<size>.txt``
files in ``--out`` and prints the sum of their counters (the saves of ``/rmw/`` that
reached the store) and how many of them still load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--sizes", required=True, help="comma-separated bytes of session data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tally", action="store_true", help="sum the counters instead")
    args = p.parse_args(argv)
    if not args.tally and args.count < 1:
        p.error("--count must be at least 1")

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asgi_project.settings")
    import django

    django.setup()
    from django.conf import settings

    store_class = importlib.import_module(settings.SESSION_ENGINE).SessionStore
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.tally:
        tally: dict[str, dict[str, int]] = {}
        for size in sizes:
            prefix = f"{settings.SESSION_COOKIE_NAME}="
            keys = (args.out / f"cookies-{size}.txt").read_text().split()
            loaded = [store_class(k.removeprefix(prefix)) for k in keys]
            tally[str(size)] = {
                "sessions": len(keys),
                "loading": sum(1 for x in loaded if x.get("data") is not None),
                "counter_total": sum(int(x.get("n", 0)) for x in loaded),
            }
        json.dump({"tally": tally}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for size in sizes:
        lines = []
        for _ in range(args.count):
            session = store_class()
            session["data"] = secrets.token_urlsafe(size)[:size]
            session["n"] = 0
            session.create()
            session.save()
            key = session.session_key
            check = store_class(key)
            if len(check.get("data", "")) != size:
                raise RuntimeError(f"session {key!r} of {size} B does not load back")
            lines.append(f"{settings.SESSION_COOKIE_NAME}={key}")
        if len(set(lines)) != args.count:
            raise RuntimeError("the engine handed out the same key twice")
        path = args.out / f"cookies-{size}.txt"
        path.write_text("\n".join(lines) + "\n")
        files[str(size)] = str(path)
    json.dump({"engine": settings.SESSION_ENGINE, "files": files}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
