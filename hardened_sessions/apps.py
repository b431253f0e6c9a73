from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class HardenedSessionsConfig(AppConfig):
    name = "hardened_sessions"
    verbose_name = _("Hardened sessions")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.apps import apps
        from django.conf import settings
        from django.db.models.signals import post_save

        from . import checks  # noqa: F401  (registers the system checks)
        from .revoke import password_changed

        if apps.is_installed("django.contrib.auth"):
            post_save.connect(
                password_changed,
                sender=settings.AUTH_USER_MODEL,
                dispatch_uid="hardened_sessions.password_changed",
            )
