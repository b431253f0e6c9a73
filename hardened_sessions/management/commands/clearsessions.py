"""``manage.py clearsessions``: Django's name for the expiry sweep, so that cron jobs
keep working without ``django.contrib.sessions``.

The same command as Django's (no options of its own, quiet on success): it calls
``SessionStore.clear_expired()`` of ``SESSION_ENGINE``, which on the db and cached_db
engines is the sweep of ``manage.py clearexpiredsessions`` (the deadline re-checked in
each ``DELETE``), and nothing on the cache engine. With ``django.contrib.sessions``
installed too, Django runs the command of the app listed first in ``INSTALLED_APPS``;
both call the engine's ``clear_expired()``, so either does the same work.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ...exceptions import SessionStoreUnavailable


class Command(BaseCommand):
    help = (
        "Delete expired sessions (the name django.contrib.sessions gives this job, for "
        "cron jobs); clearexpiredsessions offers batches, a dry run and a database choice."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        engine = import_module(settings.SESSION_ENGINE)
        try:
            engine.SessionStore.clear_expired()
        except NotImplementedError as exc:
            raise CommandError(
                f"Session engine {settings.SESSION_ENGINE!r} doesn't support clearing "
                "expired sessions."
            ) from exc
        except SessionStoreUnavailable as exc:
            raise CommandError(str(exc)) from exc
