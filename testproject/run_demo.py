#!/usr/bin/env python
"""Run the demo site: ``python testproject/run_demo.py`` (what ``tox -e demo`` runs).

Prints the address first, then migrates the database, creates the demo users and
serves in this very process (Django's development server without its autoreloader,
so there is no child process to leave behind): Ctrl-C or SIGTERM stops everything.

``HS_DEMO_ADDRESS`` (default ``127.0.0.1:8000``) is where it listens; the other
``HS_DEMO_*`` variables are the settings' (``testproject/testproject/settings.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    address = os.environ.get("HS_DEMO_ADDRESS", "127.0.0.1:8000")
    print(
        f"hardened_sessions demo: http://{address}/\n"
        "  log in as demo / demo-password (admin / admin-password for the admin);\n"
        "  Ctrl-C stops the server.",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _stop)
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    call_command("demo_users")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a quiet stop
        call_command("runserver", address, use_reloader=False)


if __name__ == "__main__":
    main()
