from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
    verbose_name = "hardened_sessions demo"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from demo.views import restart_session_clock

        user_logged_in.connect(restart_session_clock, dispatch_uid="demo.restart_session_clock")
