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

        from . import (
            checks,  # noqa: F401  (registers the system checks)
            device,  # noqa: F401  (registers E020, the user-agent parser)
        )
        from .revoke import password_changed

        if apps.is_installed("django.contrib.auth"):
            from django.contrib.auth.signals import user_logged_in

            from .reauth import record_login

            post_save.connect(
                password_changed,
                sender=settings.AUTH_USER_MODEL,
                dispatch_uid="hardened_sessions.password_changed",
            )
            # A login is a proof of identity: "sudo mode" counts from it (reauth.py).
            user_logged_in.connect(record_login, dispatch_uid="hardened_sessions.record_login")
            # A login from a device the user's other live sessions do not have (device.py).
            user_logged_in.connect(
                device.notify_new_device, dispatch_uid="hardened_sessions.notify_new_device"
            )

        # Sessions follow the account: deactivation and deletion end them (account.py).
        from .account import install as install_account_lifecycle

        install_account_lifecycle()
