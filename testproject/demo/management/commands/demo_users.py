"""Create the demo site's users, idempotently: running it twice changes nothing."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

# username, password, superuser (and staff)
DEMO_USERS = (
    ("demo", "demo-password", False),
    ("admin", "admin-password", True),
)


class Command(BaseCommand):
    help = "Create the demo users demo / demo-password and admin / admin-password (superuser)."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        for username, password, superuser in DEMO_USERS:
            user, created = user_model.objects.get_or_create(username=username)
            changed = False
            if not user.check_password(password):
                user.set_password(password)
                changed = True
            for field, value in (
                ("is_active", True),
                ("is_staff", superuser),
                ("is_superuser", superuser),
            ):
                if getattr(user, field) != value:
                    setattr(user, field, value)
                    changed = True
            if changed or created:
                user.save()
            state = "created" if created else ("updated" if changed else "unchanged")
            role = "superuser" if superuser else "user"
            self.stdout.write(f"{role} {username!r}: {state}")
