from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
    verbose_name = "hardened_sessions demo"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from demo.views import notice_new_device, restart_session_clock
        from hardened_sessions.signals import session_new_device

        user_logged_in.connect(restart_session_clock, dispatch_uid="demo.restart_session_clock")
        session_new_device.connect(notice_new_device, dispatch_uid="demo.notice_new_device")
