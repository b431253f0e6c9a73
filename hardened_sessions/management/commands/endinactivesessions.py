"""``manage.py endinactivesessions``: end the sessions of users with ``is_active=False``.

A ``save()`` that deactivates a user ends their sessions at once; a bulk
``QuerySet.update(is_active=False)`` sends no signal, and a revocation that failed after
a deactivation (the store was down) is logged but not retried. This command catches
both up: it calls :func:`hardened_sessions.end_sessions_of_inactive_users`. Running it
again is harmless (it ends only what is still there). It exits non-zero where the store
cannot list a user's sessions (memcached, Redis Cluster) or fails.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...account import end_sessions_of_inactive_users
from ...exceptions import SessionStoreUnavailable


class Command(BaseCommand):
    help = "End every session of users whose is_active is False (e.g. after a bulk update)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            help="Users read per query (default 500).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be a positive integer.")
        try:
            ended = end_sessions_of_inactive_users(batch_size=batch_size)
        except NotImplementedError as exc:
            raise CommandError(str(exc)) from exc
        except SessionStoreUnavailable as exc:
            raise CommandError(str(exc)) from exc
        noun = "session" if ended == 1 else "sessions"
        self.stdout.write(f"Ended {ended} {noun} of inactive users.")
