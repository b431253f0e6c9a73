"""Serve the demo site for the browser tests: ``python -m tests.browser.demo_server PORT_FILE``.

Run by ``tests/browser/conftest.py`` in a process of its own (the demo has its own
settings, ``tests.browser.demo_settings``): runs the system checks, migrates the empty
SQLite database, creates the demo users (``manage.py demo_users``), binds a free
loopback port, writes it to ``PORT_FILE`` and serves until it is terminated. The server is the one behind
``manage.py runserver`` (threaded), with the static files of the admin.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(port_file: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.browser.demo_settings")
    import django
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.management import call_command
    from django.core.servers.basehttp import run
    from django.core.wsgi import get_wsgi_application

    django.setup()
    call_command("check")  # as runserver does: a system-check error stops the start
    call_command("migrate", interactive=False, verbosity=0)
    call_command("demo_users")
    handler = StaticFilesHandler(get_wsgi_application())

    def announce(port: int) -> None:
        # Written then renamed: the waiting test never reads half a number.
        partial = port_file.with_suffix(".partial")
        partial.write_text(str(port))
        partial.replace(port_file)

    run("127.0.0.1", 0, handler, threading=True, on_bind=announce)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
